# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Attention maps: where does the CLS token look?
#
# **What it teaches.** The paper's most striking figure: in a DINO-trained ViT, the last block's
# attention from the CLS token to the patches outlines the main object, although no label or mask
# was ever used. The paper makes this measurable: keep the smallest set of patches that holds
# **60% of the attention mass**, and compare that mask with the true object mask (Jaccard index,
# 1 = perfect). We score the DINO-trained network (the run of notebook 00), the same network with
# random weights, and a **centre prior** (a Gaussian bump in the middle: objects tend to be
# central) on the embedded dataset's test images, whose object masks are known; then an explorer
# lets you look at any image (also your own), block and head.
#
# **Run time** on a 2-core CPU: about 15 seconds when the run of notebook 00 exists (it is
# loaded); otherwise training it first adds about 1.5 minutes (160 steps).
#
# **Knobs:** `STEPS` (the run's length), `N_IMAGES` (test images scored), `SOURCE` (the
# explorer's network: this project's or the paper's published ViT-S/16).

# %%
import io
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import display

from dino_lite.attention import (attention_maps, centre_prior, mass_mask, object_mass,
                                 overlay_figure, published_dino, score_maps, shapes_attention_set)
from dino_lite.checkpoint import teacher_backbone_from_checkpoint
from dino_lite.data import eval_transform
from dino_lite.evaluate import random_init_backbone
from dino_lite.explorer import AttentionExplorer
from dino_lite.notebook import DEMO_STEPS, demo_run
from dino_lite.train import CHECKPOINT

torch.set_num_threads(2)
STEPS = DEMO_STEPS   # knob: training steps (160: about 1.5 minutes the first time); longer runs raise k-NN but sharpen the heads, which lowers the Jaccard (1000 steps: 0.30; docs/RESULTS.md)
N_IMAGES = 200       # knob: test images scored (the standard errors below shrink as 1/sqrt(N))
RUN = demo_run(STEPS)                                    # notebook 00's run, trained here if absent
backbone, cfg = teacher_backbone_from_checkpoint(RUN / CHECKPOINT)
random_backbone = random_init_backbone(cfg)
images, names, masks, _ = shapes_attention_set(cfg.image_size, N_IMAGES)
maps = attention_maps(backbone, images)                  # [N, heads, 8, 8], each map sums to 1
random_maps = attention_maps(random_backbone, images)

# %% [markdown]
# ## Per-head maps, the 60% mask, and random initialisation
# Each row is one test image. Columns: the image, the 60% mask of the head-averaged map
# (orange), the head-averaged map, each of the heads, and the head-averaged map of the same
# network with random weights. The cyan line is the true object outline. All maps share **one
# colour scale** (one colour bar): a map's values are the CLS token's attention over the 64
# patches, which sums to 1, so brighter means that head puts more of its attention there.
#
# What to look at: the trained mean map is bright on the object and dark around it; the heads
# differ (some sharp, on a few patches of the object, others mostly around it); the random-init
# map is almost uniform (about 1/64 = 0.016 per patch everywhere), so it looks flat. The scale is
# a square root, so that such weak maps stay visible beside a head that puts 0.7 on one patch.

# %%
fig = overlay_figure(images, maps, masks, names=names, max_images=4, random_maps=random_maps)
plt.show()

# %% [markdown]
# ## Which head looks where
# The share of each head's attention that lands on the object, averaged over the test images,
# against the share of the image the object covers (what a uniform map scores). Error bars: one
# standard error over images.

# %%
area = float(object_mass(torch.ones_like(maps[:, 0]), masks).mean())
n_heads = maps.shape[1]
on_object = torch.stack([object_mass(maps[:, h], masks) for h in range(n_heads)])   # [heads, N]
on_random = torch.stack([object_mass(random_maps[:, h], masks) for h in range(n_heads)])
se = lambda x: float(x.std() / len(x) ** 0.5)
for h in range(n_heads):
    where = "mostly on the object" if on_object[h].mean() > 0.5 else "mostly off the object"
    print(f"head {h}: {on_object[h].mean():.0%} of its attention on the object (+- {se(on_object[h]):.1%}), "
          f"random init {on_random[h].mean():.0%}; the object covers {area:.0%}: {where}")
x = torch.arange(n_heads)
plt.figure(figsize=(5.5, 3))
plt.bar(x - 0.2, on_object.mean(1), 0.4, yerr=[se(o) for o in on_object], label="trained")
plt.bar(x + 0.2, on_random.mean(1), 0.4, yerr=[se(o) for o in on_random], label="random init")
plt.axhline(area, ls="--", c="k", label="object area (a uniform map)")
plt.xticks(x, [f"head {h}" for h in range(n_heads)])
plt.ylabel("share of attention on the object")
plt.ylim(0, 1)
plt.legend(fontsize=8)
plt.title(f"last block, mean over {len(images)} test images")
plt.show()

# %% [markdown]
# **Two kinds of head.** In this run heads 0 and 1 put most of their attention on the object
# (72% and 67%, where the object covers 16% of the image), while head 2 puts more than nine
# tenths of its attention *off* the object (6% on it, less than a uniform map's 16%), often on
# a few patches around the outline or in a corner; head 3 sits in between (21%, a little above
# a uniform map). Other runs of this recipe show the same
# (docs/RESULTS.md: one head in four typically attends to the background or a corner); which
# head does it changes from run to run. Two plausible reasons, not tested here: attention must
# sum to 1, so a head whose query matches no patch well still spends its weight somewhere, and
# ViTs are known to park such weight on a few low-information background patches (Darcet et al.
# 2024, *Vision Transformers Need Registers*); and the background's texture is shared by both
# global crops of an image, a cheap cue for the student to match the teacher. The head-mean
# map, which the Jaccard below scores, is dominated by the three object heads.

# %% [markdown]
# ## The 60% rule, step by step
# Sort the patches by attention, keep adding them until their share of the total reaches 60%.
# A peaked map keeps few patches, a flat map many: compare the trained head mean with the
# random-init one on the same image.

# %%
plt.figure(figsize=(5.5, 3))
for label, m in (("trained", maps[0].mean(0)), ("random init", random_maps[0].mean(0))):
    order = m.flatten().sort(descending=True).values
    cum = order.cumsum(0) / order.sum()
    kept = int((cum < 0.6).sum()) + 1
    assert int(mass_mask(m).sum()) == kept
    line, = plt.plot(range(1, len(cum) + 1), cum.numpy(), marker=".", label=f"{label}, head mean")
    plt.axvline(kept, ls=":", c=line.get_color(), label=f"{label}: {kept} patches hold 60%")
plt.axhline(0.6, ls="--", c="k", label="60% of the mass")
plt.xlabel("patches kept (most attended first)")
plt.ylabel("share of attention mass")
plt.legend(fontsize=7)
plt.title(f"image {names[0]}: the 60% rule, {len(cum)} patches")
plt.show()

# %% [markdown]
# ## Trained vs random init vs centre prior
# Jaccard of the head-mean mask, and of the best head per image (the paper reports the best
# head), over the test images; error bars are one standard error over images. Differences
# between two maps are read from the paired per-image differences, whose standard error is
# smaller than either bar's (the same images are hard for both).

# %%
prior = centre_prior(maps.shape[-2:]).expand(len(images), 1, *maps.shape[-2:])
runs = {"DINO (trained)": maps, "random init": random_maps, "centre prior": prior}
scores = {name: score_maps(m, masks) for name, m in runs.items()}
for name, s in scores.items():
    print(f"{name:15s} Jaccard {s['jaccard']:.3f} (+- {se(torch.tensor(s['per_image'])):.3f})   "
          f"best head {s['jaccard_best_head']:.3f} (+- {se(torch.tensor(s['per_image_best_head'])):.3f})   "
          f"on object {s['object_mass']:.0%} (area {s['object_area']:.0%})")


def paired(a, b, key="per_image"):
    """Mean and standard error of the per-image difference a - b."""
    d = torch.tensor(scores[a][key]) - torch.tensor(scores[b][key])
    return float(d.mean()), se(d)


gaps = {"trained - random (head mean)": paired("DINO (trained)", "random init"),
        "trained - prior (head mean)": paired("DINO (trained)", "centre prior"),
        "trained best head - prior": (
            float((torch.tensor(scores["DINO (trained)"]["per_image_best_head"])
                   - torch.tensor(scores["centre prior"]["per_image"])).mean()),
            se(torch.tensor(scores["DINO (trained)"]["per_image_best_head"])
               - torch.tensor(scores["centre prior"]["per_image"])))}
for name, (d, e) in gaps.items():
    verdict = "higher" if d > 2 * e else "lower" if d < -2 * e else "level (within 2 standard errors)"
    print(f"{name:30s} {d:+.3f} +- {e:.3f} ({d / e:+.1f} standard errors): {verdict}")
fig, ax = plt.subplots(figsize=(6, 3))
x = torch.arange(len(scores))
ax.bar(x - 0.2, [s["jaccard"] for s in scores.values()], 0.4, label="head mean",
       yerr=[se(torch.tensor(s["per_image"])) for s in scores.values()])
ax.bar(x + 0.2, [s["jaccard_best_head"] for s in scores.values()], 0.4, label="best head per image",
       yerr=[se(torch.tensor(s["per_image_best_head"])) for s in scores.values()])
ax.set_xticks(x, list(scores))
ax.set_ylabel("Jaccard of the 60% mask\nwith the object (0 to 1)")
ax.legend(fontsize=8)
ax.set_title(f"{len(images)} test images; bars: 1 standard error")
plt.show()

# %% [markdown]
# **Reading the numbers.** The trained maps beat random initialisation clearly: 0.437 against
# 0.115 Jaccard for the head mean (+0.322, 39 standard errors of the paired per-image
# difference); the random network's maps land on the object no more than a uniform map would
# (15% against the object's 16%). Against the centre prior the trained maps win too in this run:
# the head mean by 0.057 (0.437 against 0.380, 6.7 standard errors) and the best single head,
# the score the paper reports, by 0.083 (0.463 against 0.380, 7.5 standard errors). The prior is
# strong on this dataset all the same: the shapes are large and near the centre, and the 60%
# mask of a wide Gaussian is a central blob about the size of an object; in a 200-step run of
# the same recipe the best head was level with it (0.374). A single head is sharper than the
# head mean; when it keeps fewer patches than the object covers, the Jaccard punishes it.
#
# **Which noise the error bars show.** A standard error over images says how much a mean would
# move with other test images *for this network*; it does not cover retraining. Runs of the
# 64 px recipe from 280 to 1000 steps range from 0.25 to 0.48 (docs/RESULTS.md), one of them
# below the prior (0.324 at 280 steps), so the comparison with the centre prior depends on the
# run, and the check below does not assert it. Trained above random init held in every recorded
# run of up to about 650 steps; longer runs sharpen the heads until the Jaccard falls to random
# init's level (0.248 at 997 steps), which is why `STEPS` says "longer is not better" for this
# score.

# %% [markdown]
# ## Explorer
# Pick an image, a block, a head (or the mean), the mass threshold and the mask's opacity; the
# sliders update when you release them. **Upload your own image** (any size or format: PNG,
# JPEG, 16-bit, palette, transparent, phone photos with EXIF rotation); it is resized and
# centre-cropped to the 64 px the network was trained at and joins the list. Images from the
# dataset show their true outline (cyan); the right-hand map is the random-init network's, on
# the same colour scale. Attention is computed once per image, so moving the controls is quick.
# Set `SOURCE = "published"` to explore the paper's own ViT-S/16 weights on photos at 224 px
# (needs internet the first time; offline you get a message and the local checkpoint).

# %%
from PIL import Image
from skimage import data as skdata

SOURCE = "local"     # knob: "local" (this project's checkpoint) or "published" (DINO ViT-S/16)
explorer = AttentionExplorer(backbone, images[:16], names[:16], masks[:16], random_model=random_backbone)
if SOURCE == "published":
    try:
        photos = [skdata.astronaut(), skdata.chelsea(), skdata.coffee()]
        pics = torch.stack([eval_transform(224)(Image.fromarray(p)) for p in photos])
        explorer = AttentionExplorer(published_dino(), pics, ["astronaut", "chelsea", "coffee"])
    except RuntimeError as err:
        print(err)
display(explorer.widget)

# %% [markdown]
# What an upload does, scripted so that the stored notebook shows it: the cat photo that ships
# with scikit-image, sent through the same path as the upload button (PNG bytes), then head 0
# of the last block. The network never saw a photo, so read this map as "what a shapes-trained
# ViT does with a photo", not as a segmentation.

# %%
png = io.BytesIO()
Image.fromarray(skdata.chelsea()).save(png, "PNG")
explorer.upload_file(png.getvalue(), "chelsea.png")      # what the upload button does
explorer.head.value = "0"
display(explorer.fig)

# %% [markdown]
# ## Summary and exercises
#
# The CLS token's attention in the last block, kept to the smallest set of patches holding 60% of
# its mass, gives a mask that can be scored against the true object with the Jaccard index,
# beside random initialisation and a centre prior; the explorer shows any image, head and block,
# your own images included.
#
# **Exercises.**
# 1. Change the mass from 60% to 30% and 90% (`score_maps(maps, masks, mass=0.3)`): which
#    threshold favours the centre prior, and which the trained maps?
# 2. Upload a photo with one clear object on a plain background, then one with clutter: which
#    head follows the object, and which the background?
# 3. Score the best single head against the head mean: which one does the paper report, and which
#    is more stable here? Predict what happens to both at `STEPS = 1000`, then run it.

# %% [markdown]
# ## Check
# Each assertion, and what would make it fail:
#
# 1. Trained head-mean Jaccard above random init's by more than 2 standard errors of the paired
#    per-image difference: fails if training no longer makes the 60% masks overlap the objects
#    better than an untrained network does.
# 2. The trained head-mean map puts more than twice the object's area share of its attention on
#    the object, by more than 2 standard errors: fails if the trained attention is about as
#    spread as a uniform map.
# 3. At least one head puts more than half of its attention on the object (beyond 2 standard
#    errors), and at least one head puts more than half off it: fails if no head follows the object,
#    or if no head looks away from it (then the "two kinds of head" text above is wrong).
# 4. The 60% rule keeps the smallest set reaching 60%: the kept share is at least 60% and
#    dropping the weakest kept patch falls below it (fails if `mass_mask` keeps too many or too
#    few patches).
# 5. The explorer shows what `attention_maps` computes (last block of image 1, head mean and
#    head 0) and follows its controls: fails if its cache or its head / block selection is wrong.
#
# Not asserted: the comparison with the centre prior (see "Which noise the error bars show").

# %%
d, e = gaps["trained - random (head mean)"]
assert d > 2 * e, (d, e)
mass_on, e_on = scores["DINO (trained)"]["object_mass"], se(object_mass(maps.mean(1), masks))
assert mass_on - 2 * area > 2 * e_on, (mass_on, area, e_on)
share, share_se = on_object.mean(1), torch.tensor([se(o) for o in on_object])
assert (share - 2 * share_se > 0.5).any() and (share + 2 * share_se < 0.5).any(), share
for m in maps[:20].mean(1):
    keep = mass_mask(m)
    kept_share = (m * keep).sum() / m.sum()
    assert kept_share >= 0.6 - 1e-5
    assert kept_share - m[keep].min() / m.sum() < 0.6 + 1e-5      # dropping any kept patch falls below 60%
check = AttentionExplorer(backbone, images[:2], names[:2], masks[:2])
check.image.value = 1
assert torch.allclose(check.shown["map"], maps[1].mean(0), atol=1e-5)
check.head.value = "0"
assert torch.allclose(check.shown["map"], maps[1, 0], atol=1e-5)
check.layer.value = 0
assert not torch.allclose(check.shown["map"], maps[1, 0], atol=1e-5)   # block 0 differs from the last
print("all checks passed")
