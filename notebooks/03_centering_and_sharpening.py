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
# # 03 · The collapse lab: centering and sharpening
#
# **What this notebook teaches.** Nothing in DINO's loss stops the trivial solution "every image
# gets the same output". Two operations on the teacher's output keep it away, and each one alone
# collapses in its own way. You will see both as equations, watch each collapse, read the
# collapse the way the paper's Fig. 7 does (H = h + KL), and explore the two knobs with sliders.
#
# **Run time:** 34 s measured with `jupytext --execute` on a 2-core AVX2 CPU in fp32, with another
# job on the cores (the toy runs compute in fp32 on every CPU).
# On a 2-core AVX-512 BF16 CPU in bf16 (idle; every notebook in order from a fresh clone,
# `pytest --nbval-lax`): 12 s.
# The same CPU limited to AVX2 kernels, so fp32 as on an AVX2-only CPU (`ATEN_CPU_CAPABILITY=avx2
# ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`; idle, the same procedure): 8 s.
# **Knobs:** `STEPS` (length of the four runs), and the sliders of the last section.
#
# **Centering** subtracts a running mean C of the teacher's logits before the softmax:
#
# $$P_t = \mathrm{softmax}\big((g_t(x) - C) / \tau_t\big), \qquad
#   C \leftarrow m\,C + (1 - m)\,\frac{1}{B}\sum_{i=1}^{B} g_t(x_i), \quad m = 0.9,$$
#
# the mean running over the batch's teacher outputs (both global views; over all processes in a
# distributed run). No prototype can then win for *all* images, but on its own centering pushes
# the teacher towards the **uniform** distribution (entropy -> ln K).
#
# **Sharpening** divides by a low teacher temperature (tau_t = 0.04 against the student's 0.1):
# on its own it lets one prototype win for every image, a **one-hot** collapse (entropy -> 0).
#
# Together they balance. We reproduce this with `dino_lite.collapse.collapse_run`: the same
# `DINOLoss`, head and EMA teacher as the real training, on toy data ("images" are 512 random
# vectors, "views" noisy copies, K = 64 prototypes) so that a run takes seconds.
#
# ## How to read a collapse: H = h + KL
# The loss of one pair is the cross-entropy H(P_t, P_s) = -sum_k P_t[k] log P_s[k]. It splits
# into two parts:
#
# $$H(P_t, P_s) = \underbrace{-\sum_k P_t[k]\log P_t[k]}_{h:\ \text{teacher entropy}}
#   + \underbrace{\sum_k P_t[k]\log\frac{P_t[k]}{P_s[k]}}_{\mathrm{KL}(P_t\,\|\,P_s)}.$$
#
# The student can only lower the KL; h is set by the teacher. The paper's Fig. 7 plots exactly
# these two: in **both** collapses the KL goes to 0 (the student reproduces the teacher, so
# there is nothing left to learn), and h tells the two apart: ln K for the uniform collapse, 0
# for the one-hot one. A healthy run keeps a moderate h *and* a KL away from 0. Below, each run
# logs h and KL (`DINOLoss.diagnostics`, computed on the teacher's distribution that the loss
# uses) and the loss H itself, so the identity can be checked step by step.
#
# The last panel is the **teacher information**: the entropy of the batch-mean teacher
# distribution minus the mean per-image entropy h, the mutual information between "which image"
# and "which prototype" under the teacher. It is 0 when every image gets the same distribution,
# uniform or one-hot alike, and high only when images get different sharp answers. The dashed red
# line is the collapse line that training's warning, notebook 00 and notebook 07 use
# (`dino_lite.collapse.COLLAPSE_NATS`, 0.2 nats): below it a run counts as collapsed.

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

from dino_lite.collapse import COLLAPSE_NATS, collapse_run
from dino_lite.loss import DINOLoss

STEPS = 300          # knob: longer runs make the curves smoother
settings = {"centering + sharpening": dict(centering=True, sharpening=True),
            "centering only": dict(centering=True, sharpening=False),
            "sharpening only": dict(centering=False, sharpening=True),
            "neither": dict(centering=False, sharpening=False)}
runs = {name: collapse_run(steps=STEPS, **kw) for name, kw in settings.items()}
max_entropy = runs["neither"]["max_entropy"]

fig, axes = plt.subplots(1, 4, figsize=(18, 3.8), layout="constrained")
for name, r in runs.items():
    axes[0].plot(r["teacher_entropy"], label=name)
    axes[1].plot(r["kl"], label=name)
    axes[2].plot(r["loss"], label=name)
    axes[3].plot(r["teacher_batch_entropy"] - r["teacher_entropy"], label=name)
axes[0].axhline(max_entropy, ls=":", c="gray", label=f"ln K = {max_entropy:.2f} (uniform)")
axes[0].set(title="h: teacher entropy per image", xlabel="step", ylabel="entropy (nats)")
axes[0].legend(fontsize=8, loc="center right")
axes[1].set(title="KL(teacher || student)", xlabel="step", ylabel="KL (nats)")
axes[1].legend(fontsize=8)
axes[2].set(title="H = h + KL: the loss", xlabel="step", ylabel="cross-entropy (nats)")
axes[3].axhline(COLLAPSE_NATS, ls="--", c="r", label=f"collapse line ({COLLAPSE_NATS} nats)")
axes[3].set(title="teacher information: h(batch mean) - h", xlabel="step", ylabel="information (nats)")
axes[3].legend(fontsize=8)
plt.show()

# the last 20 steps of each run
last = {name: {k: r[k][-20:].mean() for k in ("teacher_entropy", "teacher_batch_entropy", "kl", "loss")}
        for name, r in runs.items()}
for name, v in last.items():
    v["information"] = v["teacher_batch_entropy"] - v["teacher_entropy"]
    v["prototypes"] = np.exp(v["teacher_batch_entropy"])   # batch-mean perplexity
    print(f"{name:24s} final h {v['teacher_entropy']:4.2f} / ln K = {max_entropy:.2f}"
          f"   KL {v['kl']:5.3f}   H {v['loss']:5.3f}   information {v['information']:4.2f}"
          f"   batch-mean perplexity {v['prototypes']:4.1f} of {np.exp(max_entropy):.0f}"
          f"   collapsed by the {COLLAPSE_NATS}-nat rule: {v['information'] < COLLAPSE_NATS}")

# %% [markdown]
# **Reading the curves.** The numbers below are the last 20 steps of each run above.

# %%
centering, sharpening, both, neither = (last[k] for k in ("centering only", "sharpening only",
                                                          "centering + sharpening", "neither"))
display(Markdown(
    f"* **Centering only**: h ends at {centering['teacher_entropy']:.2f} nats, "
    f"{centering['teacher_entropy'] / max_entropy:.0%} of ln K, and the KL at {centering['kl']:.3f}: "
    f"student and teacher agree on \"nothing\", the uniform collapse (information "
    f"{centering['information']:.2f} nats, {'below' if centering['information'] < COLLAPSE_NATS else 'above'} "
    f"the collapse line).\n"
    f"* **Neither**: h ends at {neither['teacher_entropy']:.2f} nats "
    f"({neither['teacher_entropy'] / max_entropy:.0%} of ln K) and the information at "
    f"{neither['information']:.2f}: "
    f"{'collapsed by the rule as well, nearer uniform than one-hot' if neither['information'] < COLLAPSE_NATS and neither['teacher_entropy'] > max_entropy / 2 else 'see the curves'}.\n"
    f"* **Sharpening only**: h falls to {sharpening['teacher_entropy']:.2f} nats "
    f"({sharpening['teacher_entropy'] / max_entropy:.0%} of ln K): the teacher is sharp, and sharp on "
    f"the *same* few prototypes for the whole batch (batch-mean perplexity "
    f"{sharpening['prototypes']:.1f} of {np.exp(max_entropy):.0f}): the one-hot collapse, on its way. "
    f"It has not reached 0 information: with {sharpening['prototypes']:.1f} prototypes in use the "
    f"teacher can still split the batch into a few groups ({sharpening['information']:.2f} nats, at "
    f"most ln {sharpening['prototypes']:.1f} = {np.log(sharpening['prototypes']):.2f}), so the "
    f"{COLLAPSE_NATS}-nat rule {'does not call it collapsed yet' if sharpening['information'] >= COLLAPSE_NATS else 'calls it collapsed'}; "
    f"its KL is {sharpening['kl']:.3f} nats, where the paper's Fig. 7 goes to 0.\n"
    f"* **Both**: the KL stays at {both['kl']:.2f} nats ({both['kl'] / centering['kl']:.0f} times "
    f"centering only's) and the teacher uses {both['prototypes']:.0f} of "
    f"{np.exp(max_entropy):.0f} prototypes across the batch while h is {both['teacher_entropy']:.2f} "
    f"nats per image: {both['information']:.2f} nats of information, the student still has something "
    f"to learn from every image."))

# %% [markdown]
# **Where this toy differs from the paper's Fig. 7.** In the paper, sharpening alone ends with
# KL -> 0 and a teacher that gives every image the same one-hot answer; within `STEPS` steps
# this toy heads that way, and the numbers above say how far it got (exercise 3 runs it longer).
# The toy also shows why h alone is a poor health signal: a sharp teacher has a low h whether it
# is informative (both operations) or collapsing (sharpening only); the information panel tells
# the two apart where h cannot.
#
# The decomposition for one run, drawn as stacked areas, with the logged loss H as a black
# line on top: **look at** the line riding exactly on the top edge of the stack.

# %%
name = "centering + sharpening"
r = runs[name]
steps = np.arange(STEPS)
fig, ax = plt.subplots(figsize=(7, 3.4))
ax.stackplot(steps, r["teacher_entropy"], r["kl"], labels=["h (teacher entropy)", "KL(teacher || student)"],
             alpha=0.7)
ax.plot(steps, r["loss"], "k", lw=1, label="H, the logged loss")
ax.set(xlabel="step", ylabel="nats", title=f"H = h + KL, run '{name}'")
ax.legend(loc="upper right")
plt.show()
identity_gap = max(np.abs(r["loss"] - r["teacher_entropy"] - r["kl"]).max() for r in runs.values())
print(f"largest |H - (h + KL)| over every step of the four runs: {identity_gap:.1e} nats")

# %% [markdown]
# ## The center update, checked against its equation
# `DINOLoss` updates its center after every loss evaluation. We feed it three batches of random
# teacher logits and replay the equation above in numpy: C_0 = 0, C_{n+1} = m C_n + (1 - m) x
# mean of batch n.

# %%
m = 0.9
loss_fn = DINOLoss(out_dim=5, total_steps=3, center_momentum=m)
rng = np.random.default_rng(0)
C = np.zeros(5)
for step in range(3):
    teacher = [torch.from_numpy(rng.normal(size=(4, 5))).float() for _ in range(2)]   # 2 global views
    student = [torch.from_numpy(rng.normal(size=(4, 5))).float() for _ in range(2)]
    loss_fn(student, teacher, step)
    C = m * C + (1 - m) * np.concatenate([t.numpy() for t in teacher]).mean(0)
print("package center:", loss_fn.center.numpy().round(5))
print("equation      :", C.round(5))

# %% [markdown]
# ## Try it: teacher temperature and center momentum
# The sliders re-run a short simulation when you **release** them (not while dragging). A
# center momentum of 1.0 means the center never moves from zero (no centering); a teacher
# temperature of 0.1 equals the student's (no sharpening).

# %%
def explore(teacher_temp=0.04, center_momentum=0.9, steps=150):
    r = collapse_run(steps=steps, teacher_temp=teacher_temp, center_momentum=center_momentum)
    information = r["teacher_batch_entropy"] - r["teacher_entropy"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3), layout="constrained")
    axes[0].plot(r["teacher_entropy"], label="h")
    axes[0].axhline(r["max_entropy"], ls=":", c="gray", label="ln K (uniform)")
    axes[0].set(title=f"h: teacher entropy (final {r['teacher_entropy'][-1]:.2f})",
                ylim=(0, r["max_entropy"] * 1.05), xlabel="step", ylabel="entropy (nats)")
    axes[0].legend(loc="lower right")
    axes[1].plot(information, label="information")
    axes[1].axhline(COLLAPSE_NATS, ls="--", c="r", label=f"collapse line ({COLLAPSE_NATS} nats)")
    axes[1].set(title=f"teacher information (final {information[-1]:.2f})", xlabel="step",
                ylabel="information (nats)", ylim=(0, None))
    axes[1].legend(loc="upper right")
    axes[2].plot(r["kl"])
    axes[2].set(title=f"KL(teacher || student) (final {r['kl'][-1]:.3f})", xlabel="step", ylabel="KL (nats)")
    plt.show()


slider = dict(continuous_update=False)          # run on release, not on every drag
widgets.interact(explore,
                 teacher_temp=widgets.FloatSlider(value=0.04, min=0.01, max=0.2, step=0.01, **slider),
                 center_momentum=widgets.FloatSlider(value=0.9, min=0.0, max=1.0, step=0.05, **slider),
                 steps=widgets.IntSlider(value=150, min=50, max=600, step=50, **slider));

# %% [markdown]
# ## Summary and exercises
#
# The center is a running mean of the teacher's logits (momentum 0.9) subtracted before the
# softmax; the teacher temperature sharpens. Centering alone drives the teacher to the uniform
# distribution and sharpening alone towards a one-hot one; only both together keep the teacher
# informative. The loss splits as H = h + KL: a collapse shows as a KL near zero, and h says
# which collapse it is.
#
# **Exercises.**
# 1. Set `center_momentum=1.0` (the center never moves) and predict the curves before you run.
# 2. Find, with the sliders, the highest teacher temperature at which the run still avoids the
#    uniform collapse.
# 3. Run sharpening only for longer, `collapse_run(steps=10 * STEPS, centering=False)` (ten times
#    this notebook's runs): does its KL reach 0, and does its information fall below the collapse
#    line, as the paper's Fig. 7 would predict? Run both operations for as long: why is a low h
#    then no sign of collapse?

# %% [markdown]
# ## Check
# Each assertion names the sentence it guards:
# 1. "H = h + KL": at every step of every run, to 1e-4 nats (fails if the loss used a different
#    teacher distribution than the diagnostics, e.g. a center updated before the loss, or if
#    the loss kept the same-view pairs);
# 2. "the center update, checked against its equation": the package's center equals the equation
#    replayed in numpy (fails if m and 1 - m were swapped, or the mean were taken over one view);
# 3. "centering only: the uniform collapse": h > 0.9 ln K, KL < 0.1 and the information below the
#    collapse line;
# 4. "sharpening only: one-hot, on its way": h < 0.15 ln K and a batch-mean perplexity (exp of the
#    batch-mean distribution's entropy: the effective number of prototypes the batch uses) under
#    8 of 64, with less than half the information of the run with both;
# 5. "both: the student still has something to learn from every image": not uniform (h < 0.9 ln
#    K), a batch-mean perplexity over 16, more than 2 nats of teacher information (far above the
#    collapse line), and a KL more than 5 times the centering-only one. Set `center_momentum=1.0`
#    in the "both" run (no centering) and the perplexity fails; set its teacher temperature to 0.1
#    (no sharpening) and h and the information fail.

# %%
assert identity_gap < 1e-4, identity_gap
assert np.allclose(loss_fn.center.numpy(), C, atol=1e-6), (loss_fn.center, C)
assert centering["teacher_entropy"] > 0.9 * max_entropy and centering["kl"] < 0.1, centering
assert centering["information"] < COLLAPSE_NATS, centering
assert sharpening["teacher_entropy"] < 0.15 * max_entropy, sharpening
assert sharpening["prototypes"] < 8 and sharpening["information"] < both["information"] / 2, sharpening
assert both["teacher_entropy"] < 0.9 * max_entropy, both
assert both["prototypes"] > 16 and both["information"] > 2, both
assert both["kl"] > 5 * centering["kl"], both
print("all checks passed")
