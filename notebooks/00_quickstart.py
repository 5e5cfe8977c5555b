# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Quickstart: DINO in a few minutes on a CPU
#
# **What this notebook teaches.** The whole story on one page. We train a small Vision
# Transformer with DINO on the embedded shapes dataset (ten shapes on cluttered backgrounds, no
# labels used for training), then ask the two questions the paper asks:
#
# 1. **Do the features know the classes?** A weighted k-NN classifier on frozen features,
#    against the same network with random weights.
# 2. **Does the last layer's attention find the object?** The share of each head's CLS attention
#    that lands on the object, and the head-mean map thresholded to keep 60% of its mass, scored
#    against the true object masks (Jaccard index).
#
# **Run time:** measured with `jupytext --execute` on a 2-core AVX2 CPU in fp32 while another job
# shared the cores: 11 minutes for a first run (9 of them training; the first section prints the
# training's minutes on your machine), 20 s for a second run, which reuses the checkpoint. The run is kept in `runs/notebooks/`:
# notebooks 04-09 reuse it (they train it first when it is missing).
# On a 2-core AVX-512 BF16 CPU in bf16 (idle; every notebook in order from a fresh clone,
# `pytest --nbval-lax`): 137 s (00's run trained there first).
# The same CPU limited to AVX2 kernels, so fp32 as on an AVX2-only CPU (`ATEN_CPU_CAPABILITY=avx2
# ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`; idle, the same procedure): 127 s (00's run trained there first, in fp32).
#
# **Knobs:** `STEPS` (training length; another value trains a new run beside this one) and
# `N_IMAGES` (test images scored for attention).
#
# Every number in the text below is printed from this run, so it holds for whatever this
# machine and precision produced; the fixed prose says only what holds for any run that passes
# the check at the end. The run is seed 0's; seeds 0-3 of this recipe were trained and none
# collapsed (docs/RESULTS.md, "Numbers in the notebooks"). To read every notebook against
# another seed, start Jupyter with `DINO_LITE_NOTEBOOK_SEED=1`: the notebooks then train and read
# a run of that seed in a folder of its own.

# %%
import math

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from dino_lite.ablate import collapse_verdict, teacher_information
from dino_lite.attention import (attention_maps, object_head, object_mass, overlay_figure, score_maps,
                                 shapes_attention_set)
from dino_lite.checkpoint import teacher_backbone_from_checkpoint
from dino_lite.collapse import COLLAPSE_NATS, WARN_MIN_STEPS
from dino_lite.evaluate import random_init_backbone
from dino_lite.notebook import DEMO_STEPS, demo_dir, demo_rows
from dino_lite.shapes import SPLIT_SIZES
from dino_lite.train import CHECKPOINT, read_log

torch.set_num_threads(2)
STEPS = DEMO_STEPS   # knob: 160 steps of 64 images. Longer runs raise k-NN but sharpen the heads,
                     # which can lower the Jaccard score below (docs/RESULTS.md, "DINO learns
                     # the shapes")
N_IMAGES = 200       # knob: test images scored for attention (and as many others to pick a head on)

# %% [markdown]
# ## Train
# `demo_rows` trains the `cpu-demo` preset for `STEPS` steps with 48 px global and 24 px local
# crops of the 64 px images and a gentle start (half the preset's learning rate, warmed up over
# 21 steps, and a teacher temperature of 0.035: without it a run this short collapses at some
# seeds), the notebooks' recipe `dino_lite.notebook.demo_config`, then
# scores the teacher by k-NN and by a linear probe, and the same network at random
# initialisation. A second call finds the finished run and only reloads it.
#
# The curves below are the paper's Fig. 7 quantities. The cross-entropy the student minimises is
#
# $$H(P_t, P_s) = h(P_t) + \mathrm{KL}(P_t \,\|\, P_s),$$
#
# the teacher's entropy h plus the KL divergence of the student from the teacher. The KL is never
# negative, so the loss can only fall as far as the teacher's own entropy h; a loss that stops
# falling is therefore not a failure. What matters is that the teacher keeps telling images apart
# and that the student still has something to learn (KL above 0). The third panel measures the
# first: the **teacher information**, the entropy of the batch-mean teacher distribution minus the
# mean per-image entropy h (the mutual information between "which image" and "which prototype").
# It is 0 when every image gets the same distribution; the dashed red line is the collapse line
# that training's warning and notebook 07 use (`dino_lite.collapse.COLLAPSE_NATS`).

# %%
table = demo_rows(["dino"], STEPS)
dino, random_init = table["rows"][0], table["random_init"]
RUN = demo_dir(STEPS) / "dino"
log = read_log(RUN)
steps = [r["step"] for r in log]
ln_k = log[-1]["max_entropy"]
info = [r["teacher_batch_entropy"] - r["teacher_entropy"] for r in log]
fig, axes = plt.subplots(1, 4, figsize=(17, 3.4), layout="constrained")
axes[0].plot(steps, [r["loss"] for r in log])
axes[0].set(title="DINO loss H", xlabel="step", ylabel="cross-entropy (nats)")
axes[1].plot(steps, [r["teacher_entropy"] for r in log], label="h: per-image teacher entropy")
axes[1].plot(steps, [r["teacher_batch_entropy"] for r in log], label="entropy of the batch-mean teacher")
axes[1].axhline(ln_k, ls=":", c="gray", label=f"ln K = {ln_k:.2f} (uniform)")
axes[1].set(title="teacher entropy", xlabel="step", ylabel="entropy (nats)", ylim=(0, ln_k * 1.05))
axes[1].legend(fontsize=8, loc="lower left")
axes[2].plot(steps, info, label="batch-mean entropy - h")
axes[2].axhline(COLLAPSE_NATS, ls="--", c="r", label=f"collapse line ({COLLAPSE_NATS} nats)")
axes[2].set(title="teacher information", xlabel="step", ylabel="information (nats)", ylim=(0, None))
axes[2].legend(fontsize=8)
axes[3].plot(steps, [r["kl"] for r in log])
axes[3].set(title="KL(teacher || student)", xlabel="step", ylabel="KL (nats)", ylim=(0, None))
plt.show()

h0, h_end = log[0]["teacher_entropy"], log[-1]["teacher_entropy"]
tail = log[-max(1, len(log) // 10):]
kl_end = sum(r["kl"] for r in tail) / len(tail)
kl_min = min(log, key=lambda r: r["kl"])
information = teacher_information(log)
below = [r["step"] for r, i in zip(log, info) if i < COLLAPSE_NATS]
dip = (f"On the way it dipped below the collapse line, from step {below[0]} to step {below[-1]} "
       f"(training prints a collapse warning when the information averaged over its last "
       f"{WARN_MIN_STEPS} or more steps is below the line: on a first run it shows above the "
       f"figure), and came back; the end of the run is what counts. "
       if below and below[-1] < log[-1]["step"] else "")
display(Markdown(
    f"**This run** ({len(log)} steps, trained in {dino['train_minutes']:.1f} minutes in "
    f"{log[-1].get('precision', 'fp32')} on this machine when it was first run). The per-image teacher entropy h starts at {h0:.2f} nats ({h0 / ln_k:.0%} of "
    f"ln K = {ln_k:.2f}) and ends at {h_end:.2f}; the loss goes from {log[0]['loss']:.2f} to "
    f"{log[-1]['loss']:.2f} nats. The teacher information is {info[0]:.2f} nats at step 0 (a random "
    f"network already gives different images somewhat different outputs; that is not knowledge "
    f"of the classes, which the k-NN below measures) and {information:.2f} over the last 10% of "
    f"steps, {'above' if information > COLLAPSE_NATS else '**below**'} the {COLLAPSE_NATS}-nat "
    f"collapse line. {dip}The KL is lowest at step {kl_min['step']} ({kl_min['kl']:.3f} nats) and "
    f"averages {kl_end:.3f} over the last 10% of steps: "
    f"{'it never reaches 0' if kl_min['kl'] > 0.01 else 'it comes close to 0'}."))

# %% [markdown]
# ## k-NN and linear probe: trained teacher against random initialisation
# An accuracy p measured on n test images has a standard error of sqrt(p (1 - p) / n); the
# difference of two independent accuracies has the square root of the sum of their squares.

# %%
n_test = SPLIT_SIZES["test"]


def se_diff(p, q, n=n_test):
    """Standard error of the difference of two accuracies, each measured on n images."""
    return math.sqrt(p * (1 - p) / n + q * (1 - q) / n)


knn_gap, lin_gap = dino["knn_top1"] - random_init["knn_top1"], dino["linear_top1"] - random_init["linear_top1"]
knn_se, lin_se = se_diff(dino["knn_top1"], random_init["knn_top1"]), se_diff(dino["linear_top1"], random_init["linear_top1"])
print(f"k-NN top-1 on {n_test} test images: trained {dino['knn_top1']:.1%}   random init "
      f"{random_init['knn_top1']:.1%}   (10 classes: chance 10%)")
print(f"linear probe: trained {dino['linear_top1']:.1%}   random init {random_init['linear_top1']:.1%}")
print(f"trained - random init: k-NN {100 * knn_gap:+.1f} points ({knn_gap / knn_se:.1f} standard errors "
      f"of the difference), linear {100 * lin_gap:+.1f} points ({lin_gap / lin_se:.1f} SE)")

# %% [markdown]
# ## Attention maps of the last block
# Per test image: the image, the 60%-mass mask of the head-averaged CLS attention, the head
# mean, every head, and (last column) the head mean of the same network at random
# initialisation; the cyan line is the true object outline, and all maps share one colour bar.
# Look for heads whose maps trace the shape after training (which heads do changes from run to
# run), and for the random-init map beside them, which does not follow the object.

# %%
backbone, cfg = teacher_backbone_from_checkpoint(RUN / CHECKPOINT)
random_backbone = random_init_backbone(cfg)
images, names, masks, _ = shapes_attention_set(cfg.image_size, N_IMAGES)
grid_train, grid_here = cfg.global_size // cfg.patch_size, images.shape[-1] // cfg.patch_size
display(Markdown(
    f"The network trained on {cfg.global_size} px global crops ({grid_train} x {grid_train} "
    f"patches of {cfg.patch_size} px); here it sees whole {images.shape[-1]} px test images "
    f"({grid_here} x {grid_here} patches), its position embeddings interpolated to the larger grid "
    f"as notebook 01 shows. k-NN and the linear probe above also read {cfg.image_size} px images."))
maps_trained = attention_maps(backbone, images)
maps_random = attention_maps(random_backbone, images)
overlay_figure(images, maps_trained, masks, names=names, max_images=4, random_maps=maps_random)
plt.show()
scores_trained, scores_random = score_maps(maps_trained, masks), score_maps(maps_random, masks)
jac_trained, jac_random = scores_trained["jaccard"], scores_random["jaccard"]
print(f"head-mean Jaccard over {len(images)} test images: trained {jac_trained:.3f}   random init {jac_random:.3f}")

# %% [markdown]
# Each head looks somewhere else, and which head looks at the object changes from run to run.
# So each network's **object head** (`object_head`: the head whose attention lands most on the
# object) is picked on `N_IMAGES` *other* test images, then scored on these: picked and scored
# on the same images, the best of four noisy heads would look better than it is. Its score is
# the share of its attention on the object, against the object's share of the image (what a
# uniform map scores).

# %%
held_out, _, held_masks, _ = shapes_attention_set(cfg.image_size, N_IMAGES, start=N_IMAGES)
head_trained = object_head(attention_maps(backbone, held_out), held_masks)
head_random = object_head(attention_maps(random_backbone, held_out), held_masks)
on_trained = object_mass(maps_trained[:, head_trained], masks)      # per test image, 0 to 1
on_random = object_mass(maps_random[:, head_random], masks)
area = float(object_mass(torch.ones_like(maps_trained[:, 0]), masks).mean())
print(f"object head's share of attention on the object: trained (head {head_trained}) "
      f"{on_trained.mean():.0%}   random init (head {head_random}) {on_random.mean():.0%}   "
      f"object area {area:.0%}")

# %% [markdown]
# ## Reading the result

# %%
# the two claims' bars, defined once: the words below and the check at the end both read them
se = lambda x: float(x.std() / len(x) ** 0.5)             # standard error of a mean over images
head_gap = on_trained - on_random                          # paired: the same images
knows = knn_gap > 3 * knn_se
finds = (on_trained.mean() - 2 * area > 2 * se(on_trained)) and head_gap.mean() > 2 * se(head_gap)
jac_gap = torch.tensor(scores_trained["per_image"]) - torch.tensor(scores_random["per_image"])
jac_word = ("above" if jac_gap.mean() > 2 * se(jac_gap) else
            "below" if jac_gap.mean() < -2 * se(jac_gap) else "level with")
display(Markdown(
    f"* **The features {'know' if knows else 'do not clearly know'} the classes.** With no label, "
    f"k-NN on the trained teacher's CLS token {'beats' if knn_gap > 2 * knn_se else 'does not clearly beat'} "
    f"the same network with random weights: {100 * knn_gap:+.1f} points, {knn_gap / knn_se:.1f} "
    f"standard errors of the difference on {n_test} test images.\n"
    f"* **Attention {'finds' if finds else 'does not find'} the objects.** The trained "
    f"teacher's object head (head {head_trained}) puts {on_trained.mean():.0%} of its attention on "
    f"the object, which covers {area:.0%} of the image; the random network's object head puts "
    f"{on_random.mean():.0%} there ({100 * head_gap.mean():+.0f} +- {100 * se(head_gap):.0f} points, "
    f"paired over {len(images)} test images)" +
    ("." if finds else ": not more than twice the area, or not beyond two standard errors above "
     "random init, and the check below fails.") +
    f"\n* **The head mean** (the maps above) averages all {maps_trained.shape[1]} heads: its 60% "
    f"mask overlaps the object with a Jaccard index of {jac_trained:.3f} against {jac_random:.3f} "
    f"for the random network, **{jac_word}** it ({jac_gap.mean():+.3f} +- {se(jac_gap):.3f}, paired)."))

# %% [markdown]
# Why two scores: a head that stares at the object and three that look elsewhere average to a
# blurred map. How far the head mean is above random init changes from run to run of this
# recipe (seeds 0-3 in bf16: from +0.01 to +0.44 Jaccard, docs/RESULTS.md, "Numbers in the
# notebooks"), while every one of those runs had an object head far above random init's.
# Notebook 06 looks at every head.

# %% [markdown]
# The dataset is built so that only shape tells the classes apart: every object has the same
# brightness and a random hue. In an earlier version brightness was random too, and DINO learned
# "bright object on dark ground" instead of shape, because brightness survives the augmentations
# (they shift hue freely in this preset but keep the order of light and dark). `docs/RESULTS.md`
# (design decisions) tells that story with numbers; notebook 09 shows how much colour still
# guides retrieval.

# %% [markdown]
# ## Summary and exercises
#
# This notebook trained the notebooks' CPU recipe, followed the loss, the teacher's entropy and
# information and the KL over training, compared the teacher's k-NN accuracy with the same
# network at random initialisation, and drew the last block's attention over the test images.
# Every later notebook unpacks one piece of this run.
#
# **Exercises.**
# 1. Set `STEPS` to half its value and rerun: predict first whether k-NN or the attention maps
#    suffer more. The check cell may then fail, and that is its job: before the recipe's gentle
#    start, a 120-step run ended with 0.16 nats of teacher information, under the collapse line
#    (`docs/RESULTS.md`). Which assertion fails, and which sentence does it guard?
# 2. Evaluate the *student* instead of the teacher (the checkpoint's `student` weights): is the
#    teacher better, as the paper reports?
# 3. Train the `no_multicrop` row (`demo_rows(["no_multicrop"])`) and compare the k-NN gap.

# %% [markdown]
# ## Check
# The claims, asserted, each with the sentence it guards and what would make it fail:
# * "k-NN beats random initialisation": by more than 3 standard errors of the difference (about
#   6-7 points on 1000 test images; the weakest of seeds 0-3 in bf16, seed 1, cleared 4.9;
#   fails if training taught the features nothing about the classes);
# * "attention finds the objects": the trained teacher's object head (picked on other images)
#   puts more than twice the object's area share of its attention on the object, and more than
#   the random network's object head, each beyond two standard errors (fails if no head
#   concentrates on the objects, e.g. trained and random maps swapped);
# * "H = h + KL": the loss is the teacher entropy plus the KL at every logged step, to 1e-3 nats
#   (fails if the logged quantities are not the ones the loss is made of);
# * "the teacher keeps telling images apart": its information over the last 10% of steps is above
#   the collapse line (`dino_lite.ablate.collapse_verdict`, the rule notebook 07 uses; fails if
#   every image got the same distribution, as at seeds 1 and 2 before the gentle start);
# * "the student still has something to learn": KL above 0.05 nats over the last 10% of steps
#   (fails if the student had caught up with a teacher that no longer changes).

# %%
print(f"teacher information over the last 10% of steps: {information:.2f} nats; KL {kl_end:.3f}")
assert knows, (dino["knn_top1"], random_init["knn_top1"])      # knn_gap > 3 * knn_se
assert finds, (head_trained, float(on_trained.mean()), area, float(on_random.mean()))
assert all(abs(r["loss"] - r["teacher_entropy"] - r["kl"]) < 1e-3 for r in log)
assert not collapse_verdict(log) and information > COLLAPSE_NATS, information
assert kl_end > 0.05, kl_end
print("all checks passed")
