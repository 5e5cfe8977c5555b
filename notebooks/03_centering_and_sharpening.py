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
# # 03 · The collapse lab: centering and sharpening
#
# Nothing in DINO's loss stops the trivial solution "every image gets the same output". Two
# operations on the teacher's output keep it away, and each one alone collapses in its own way:
#
# * **Centering** subtracts a running mean C of the teacher's logits: no prototype can dominate
#   for all images, but on its own it pushes the teacher towards the **uniform** distribution
#   (entropy -> ln K) and the student learns nothing (KL(teacher || student) -> 0).
# * **Sharpening** uses a low teacher temperature (0.04 against the student's 0.1): on its own it
#   lets one prototype win for every image, a **one-hot** collapse (entropy -> 0).
#
# Together they balance. The paper's Fig. 7 shows this with the teacher's entropy and the KL
# between teacher and student. We reproduce it with `dino_lite.collapse.collapse_run`: the same
# `DINOLoss`, head and EMA teacher as the real training, on toy data ("images" are random
# vectors, "views" noisy copies) so that a run takes seconds.

# %%
import matplotlib.pyplot as plt
import numpy as np

from dino_lite.collapse import collapse_run

STEPS = 300          # knob: longer runs make the curves smoother
settings = {"centering + sharpening": dict(centering=True, sharpening=True),
            "centering only": dict(centering=True, sharpening=False),
            "sharpening only": dict(centering=False, sharpening=True),
            "neither": dict(centering=False, sharpening=False)}
runs = {name: collapse_run(steps=STEPS, **kw) for name, kw in settings.items()}
max_entropy = runs["neither"]["max_entropy"]

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for name, r in runs.items():
    axes[0].plot(r["teacher_entropy"], label=name)
    axes[1].plot(r["kl"], label=name)
axes[0].axhline(max_entropy, ls=":", c="gray")
axes[0].text(0, max_entropy * 0.95, "ln K (uniform)", va="top", color="gray")
axes[0].set(title="teacher entropy", xlabel="step", ylabel="nats")
axes[1].set(title="KL(teacher || student)", xlabel="step", ylabel="nats")
axes[1].legend()
plt.show()

for name, r in runs.items():
    print(f"{name:24s} final entropy {r['teacher_entropy'][-20:].mean():5.2f} / ln K = {max_entropy:.2f}"
          f"   final KL {r['kl'][-20:].mean():5.3f}")

# %% [markdown]
# Reading the curves: with centering only, the entropy climbs to ln K and the KL falls to zero,
# the student and teacher agree on "nothing". With sharpening only, the entropy falls towards
# zero: one prototype for everything. With both, the teacher keeps a moderate entropy and the
# student keeps learning from it (KL stays away from zero).
#
# ## Try it: teacher temperature and center momentum
# The sliders re-run a short simulation. A center momentum of 1.0 means the center never moves
# from zero (no centering); a teacher temperature of 0.1 equals the student's (no sharpening).

# %%
import ipywidgets as widgets


def explore(teacher_temp=0.04, center_momentum=0.9, steps=150):
    r = collapse_run(steps=steps, teacher_temp=teacher_temp, center_momentum=center_momentum)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    axes[0].plot(r["teacher_entropy"])
    axes[0].axhline(r["max_entropy"], ls=":", c="gray")
    axes[0].set(title=f"teacher entropy (final {r['teacher_entropy'][-1]:.2f})", ylim=(0, r["max_entropy"] * 1.05))
    axes[1].plot(r["kl"])
    axes[1].set(title=f"KL(teacher || student) (final {r['kl'][-1]:.3f})")
    plt.show()


widgets.interact(explore,
                 teacher_temp=widgets.FloatSlider(value=0.04, min=0.01, max=0.2, step=0.01),
                 center_momentum=widgets.FloatSlider(value=0.9, min=0.0, max=1.0, step=0.05),
                 steps=widgets.IntSlider(value=150, min=50, max=600, step=50));

# %% [markdown]
# ## Summary and exercises
#
# Centering alone drives the teacher to the uniform distribution and sharpening alone to a one-
# hot one; only both together keep the teacher informative. The entropy of the batch-mean teacher
# minus the per-image entropy (the teacher's information) is what tells collapse apart from
# learning.
#
# **Exercises.**
# 1. Set `center_momentum=1.0` (the center never moves) and predict the curves before you run.
# 2. Find, with the sliders, the highest teacher temperature at which the run still avoids the
#    uniform collapse.
# 3. Write down H = h + KL for one of the runs from its logged values and check the identity
#    numerically.

# %% [markdown]
# ## Check
# Centering alone ends near the uniform distribution with the student no longer learning;
# sharpening alone ends near one-hot; both together stay in between with the KL clearly above
# the centering-only collapse. (Set `center_momentum=1.0` in the "both" run, or the teacher
# temperature to 0.1, and these assertions fail.)

# %%
last = {name: (r["teacher_entropy"][-20:].mean(), r["kl"][-20:].mean()) for name, r in runs.items()}
assert last["centering only"][0] > 0.9 * max_entropy, last["centering only"]
assert last["centering only"][1] < 0.1, last["centering only"]
assert last["sharpening only"][0] < 0.15 * max_entropy, last["sharpening only"]
both_entropy, both_kl = last["centering + sharpening"]
assert 0.1 * max_entropy < both_entropy < 0.9 * max_entropy, both_entropy
assert both_kl > 5 * last["centering only"][1], both_kl
print("all checks passed")
