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
# # 07 · Ablations: DINO, and the switches that turn it into BYOL, MoCo v2 or SwAV
#
# The paper's ablation table changes one part of DINO at a time. Each change is a config
# switch in `dino_lite` (`dino_lite.ablate.ROWS`), so every row below is a real training run:
#
# | switch | DINO | the alternative | what it becomes |
# | --- | --- | --- | --- |
# | `teacher` | `momentum` (EMA of the student) | `student_copy`, `previous_iteration`, `previous_epoch` | no momentum: collapse; SwAV has none |
# | `centering` | `center` | `sinkhorn_knopp` (SwAV's equal split of the batch over prototypes) | SwAV |
# | `n_local` | 4 local crops | `0`: the 2 global crops only | BYOL and MoCo v2 use no multi-crop |
# | `loss` | `ce` (cross-entropy with the teacher) | `mse` on normalised outputs, `infonce` with in-batch negatives | BYOL, MoCo v2 |
# | `predictor` | no | an MLP on the student only | BYOL |
#
# Every row gets the same seed and the same number of steps. The **teacher information** is the
# entropy of the batch's mean teacher distribution minus the per-image entropy (over the last
# 10% of steps): how much the teacher's output tells the images of a batch apart. Uniform and
# one-hot collapse both bring it to 0; a row is called **collapsed** when it is below 10% of ln K.

# %%
import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from dino_lite.ablate import ROWS, markdown_table, run_ablation
from dino_lite.notebook import notebook_base, notebook_run_dir

torch.set_num_threads(2)
STEPS = 144            # knob: training steps (32 images each) per row, about 45 s each here; 1000+ for a longer run
RUN_ROWS = ["dino", "no_momentum", "mse"]   # knob: list(ROWS) runs all 13 rows (11 trainings)
base, REAL_DATA = notebook_base(STEPS)      # tinyimagenet-dev20 photos, or the shapes if absent
RUN = notebook_run_dir(base, STEPS)   # shared with notebook 04
print(f"{base.data}: {len(RUN_ROWS)} rows x {STEPS} steps")

# %% [markdown]
# ## The runs
# `run_ablation` trains each row into `RUN/<row>/`, measures the teacher's k-NN every
# `STEPS // 4` steps (on 1000 training images, for the curves) and scores the final teacher by
# k-NN and linear probe on the whole dataset. Rows already trained (by notebook 04, or an
# earlier run of this one) are reused.

# %%
summary = run_ablation(base, RUN_ROWS, RUN, eval_every=STEPS // 4, knn_max_train=1000, progress=False)
display(Markdown(markdown_table(summary)))

# %% [markdown]
# ## Teacher entropy and k-NN over training
# Solid: the mean per-image entropy of the teacher's distribution; dashed: the entropy of the
# batch's mean distribution (how many prototypes the batch uses). Both are divided by ln K.
# Where the two lines meet, the teacher no longer tells images apart.

# %%
fig, (ax_h, ax_k) = plt.subplots(1, 2, figsize=(13, 4))
for i, r in enumerate(summary["rows"]):
    colour = f"C{i}"
    steps = [h["step"] for h in r["history"]]
    ax_h.plot(steps, [h["teacher_entropy"] / r["max_entropy"] for h in r["history"]], c=colour,
              label=r["name"])
    ax_h.plot(steps, [h["teacher_batch_entropy"] / r["max_entropy"] for h in r["history"]], c=colour,
              ls="--")
    ax_k.plot(*zip(*[(s, 100 * a) for s, a in r["knn_curve"]]), "o-", c=colour, label=r["name"])
ax_k.axhline(100 * summary["random_init"]["knn_top1"], c="gray", ls=":", label="random init")
ax_h.set(xlabel="step", ylabel="entropy / ln K", title="teacher entropy: per image (solid), batch mean (dashed)")
ax_k.set(xlabel="step", ylabel="k-NN top-1 (%)", title="teacher k-NN (1000 training images)")
ax_h.legend()
ax_k.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Summary and exercises
#
# Each row of the paper's ablation table is a set of config switches trained with the same seed
# and budget; the table, the teacher's entropy curves and k-NN over training show which
# components matter at this size, and the check asserts only the claims that hold beyond the
# noise.
#
# **Exercises.**
# 1. Add the `sinkhorn_knopp` row: predict its teacher-entropy curve before you run it.
# 2. Double the number of steps for `dino` and `no_momentum` only: does the gap grow or shrink?
# 3. Which rows count as collapsed by the 10%-of-ln K rule? Recompute the rule by hand for one
#    row from its history.

# %% [markdown]
# ## Check: the claims that hold in miniature
# * the momentum teacher beats the student copy on k-NN, and the student copy's teacher tells
#   images apart less (lower teacher information);
# * the cross-entropy beats the MSE (BYOL's loss without its predictor) on k-NN.
#
# What this budget does **not** reproduce, said plainly:
# * *the student copy collapses*: its teacher information crosses our collapsed line (0.69
#   nats) after 144 steps here (0.43) but not after 500 steps of 64 images (0.75), so the
#   verdict is printed, not asserted. The paper's student
#   copy ends at 0.1% k-NN; ours, after 500 steps of 64 images (`docs/RESULTS.md`), falls to
#   12.4%, below random init (22.2%), with the teacher's entropy swinging up and down rather
#   than settling. The BatchNorm in our CPU head keeps outputs batch-dependent, which may be
#   why it never collapses completely.
# * absolute numbers: 144 steps of 32 small photos are not 300 ImageNet epochs.
# * the finer orderings. In the 500-step table of `docs/RESULTS.md`, Sinkhorn-Knopp is level with centering
#   (27.2 vs 27.9) and no multi-crop is below DINO (22.4), as in the paper, but MoCo v2 (33.9)
#   and the previous-epoch teacher (31.1) come out *above* DINO, and the predictor row collapses
#   (15.8) where the paper's loses one point.

# %%
rows = {r["name"]: r for r in summary["rows"]}
for name, r in rows.items():
    print(f"{name:>12}: k-NN {100 * r['knn_top1']:.1f}%, linear {100 * r['linear_top1']:.1f}%, "
          f"teacher information {r['information']:.2f} nats, collapsed: {r['collapsed']}")
if REAL_DATA:
    assert rows["dino"]["knn_top1"] > rows["no_momentum"]["knn_top1"], "momentum teacher should beat the student copy"
    assert rows["no_momentum"]["information"] < rows["dino"]["information"], \
        "the student copy's teacher should tell images apart less"
    assert not rows["dino"]["collapsed"], "DINO itself should not collapse"
    assert rows["dino"]["knn_top1"] > rows["mse"]["knn_top1"], "cross-entropy should beat MSE"
    print("claims hold: momentum > student copy (less teacher information), CE > MSE")
else:
    print("claims not checked: they are stated for real photos (tinyimagenet-dev20)")
