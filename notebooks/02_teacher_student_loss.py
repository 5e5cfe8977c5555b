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
# # 02 · The teacher/student loss over multi-crop views
#
# **What this notebook teaches.** DINO shows one image to two networks. The **teacher** sees only
# the two large *global* crops; the **student** sees those and several small *local* crops. For
# every pair (teacher view t, student view s) with t != s, the student's distribution over K
# "prototypes" must match the teacher's:
#
# $$H(P_t, P_s) = -\sum_k P_t[k] \log P_s[k], \quad
#   P_s = \mathrm{softmax}(g_s / \tau_s), \quad P_t = \mathrm{softmax}((g_t - C) / \tau_t)$$
#
# Over the set V of all views of an image, of which the teacher sees the two global ones, the
# paper's Eq. 3 sums this over every pair of *different* views:
#
# $$\min_{\theta_s} \sum_{x \in \{x^g_1,\, x^g_2\}} \;\sum_{\substack{x' \in V \\ x' \neq x}}
#   H\big(P_t(x),\, P_s(x')\big)$$
#
# (`dino_lite.loss.dino_loss` takes the mean over those pairs and over the batch: 2 x (|V| - 1)
# pairs, 10 with 2 global and 4 local crops). Local-to-global pairs teach the student that a
# small part of an image should be described like the whole: this is where DINO's semantic,
# object-centred features come from. You will see the views with their photometric asymmetry,
# the loss by hand against the package, that the package skips same-view pairs (and when their
# KL would be zero), the head that produces the K logits, and a whole DINO step built by hand
# from the package's networks and augmentations, checked against the package's step.
#
# **Run time:** 20 s measured with `jupytext --execute` on a 2-core AVX2 CPU in fp32, with another
# job on the cores (section 6 computes in fp32 on every CPU, so that the two steps compare exactly).
# On a 2-core AVX-512 BF16 CPU in bf16 (idle; every notebook in order from a fresh clone,
# `pytest --nbval-lax`): 9 s.
# The same CPU limited to AVX2 kernels, so fp32 as on an AVX2-only CPU (`ATEN_CPU_CAPABILITY=avx2
# ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`; idle, the same procedure): 7 s.
# **Knobs:** `N_DRAWS` in section 1 (augmentation draws per view used to measure the policy;
# more gives tighter estimates) and `HAND_STEPS` in section 6 (steps of the hand-built loop).

# %%
import copy
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.patches import Rectangle

from dino_lite import augment
from dino_lite.augment import POLICY, BatchRandom, MultiCrop, photometric
from dino_lite.config import make_config
from dino_lite.loss import _pairs, dino_loss
from dino_lite.methods import get_method
from dino_lite.methods.dino import dino_step
from dino_lite.models import DINOHead, MultiCropWrapper, build_backbone, build_student_teacher
from dino_lite.precision import Precision
from dino_lite.shapes import render
from dino_lite.step import Process, augmented
from dino_lite.train import build_optimizer, make_schedules

torch.manual_seed(0)
mean = torch.tensor(augment.IMAGENET_MEAN).view(1, 3, 1, 1)
std = torch.tensor(augment.IMAGENET_STD).view(1, 3, 1, 1)


def to_pixels(x):
    """Undo the ImageNet normalisation that ``photometric`` ends with: values in [0, 1]."""
    return (x * std + mean).clamp(0, 1)


# %% [markdown]
# ## 1. Multi-crop views of one image, and their photometric asymmetry
# Global crops cover 40-100% of the image, local crops 5-40% (the CPU presets: 15-50%), resized
# to a smaller resolution. Here on a 128 px image from the embedded dataset: 2 global crops at
# 64 px, 4 local at 32 px. The top row is the geometric part (`MultiCrop`, per image in the
# loader); the bottom row adds the photometric part (`augment.photometric`, per batch in the
# training step): colour jitter, grayscale, and a policy that differs **per view**. The numbers
# are **probabilities** that a view is blurred or solarised (not blur strengths):

# %%
for view, (blur_p, solar_p) in POLICY.items():
    print(f"{view:8s} P(blur) = {blur_p:.1f}   P(solarise) = {solar_p:.1f}")

# %% [markdown]
# Global view 1 is always blurred and never solarised; global view 2 is rarely blurred and
# sometimes solarised (bright pixels inverted); local views are blurred half the time. The
# teacher sees both global views and the loss pairs each with the other, so the student learns
# to describe a blurred view and a sharp (maybe solarised) view of the same image alike.
# Below, **look at** the bottom row: global 1 is blurred, global 2 sharp (change the `BatchRandom`
# seed to see other draws; a weak blur can look sharp).

# %%
img, label, mask = render(seed=0, split="train", index=3, size=128)
crops = MultiCrop(global_size=64, local_size=32, n_local=4)(torch.from_numpy(img).permute(2, 0, 1))
coloured = photometric([c[None] for c in crops], BatchRandom(seed=1))
names = ([f"global 1\nP(blur) {POLICY['global1'][0]:g}", f"global 2\nP(blur) {POLICY['global2'][0]:g}, "
          f"P(sol.) {POLICY['global2'][1]:g}"] + [f"local {i}\nP(blur) {POLICY['local'][0]:g}" for i in range(1, 5)])
fig, axes = plt.subplots(2, 7, figsize=(15, 4.6), layout="constrained")
axes[0, 0].imshow(img)
axes[0, 0].set_title(f"image, {img.shape[1]} px")
axes[1, 0].axis("off")
for j, (c, x, name) in enumerate(zip(crops, coloured, names), start=1):
    axes[0, j].imshow(c.permute(1, 2, 0))
    axes[0, j].set_title(f"{name}\n{c.shape[-1]} px", fontsize=9)
    axes[1, j].imshow(to_pixels(x)[0].permute(1, 2, 0))
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
axes[0, 1].set_ylabel("crop + flip")
axes[1, 1].set_ylabel("+ photometric")
plt.show()

# %% [markdown]
# One draw proves nothing about probabilities, so we **measure** the policy. A test strip is
# sent through `photometric` `N_DRAWS` times as each of 4 views (global 1, global 2, two local)
# with the colour jitter switched off (`jitter=(0, 0, 0, 0)`; grayscale leaves a black-and-white
# strip unchanged). Its left half is a one-pixel checkerboard, which any blur of sigma above about
# 0.25 px visibly changes; its right half holds a white bar, which stays white unless solarised
# (solarisation maps every value >= 0.5 to 1 - value); since solarisation also changes the
# checkerboard, blur is counted among the views that were not solarised. Blur sigmas are drawn in (0.1, 2.0) px at
# 224 px, scaled to the crop's width, so a few blurs are too weak to see: what we can compare
# across views is the *ratio* of blurred shares, 0.1 (global 2 / global 1) and 0.5 (local /
# global 1) if the policy holds.

# %%
N_DRAWS = 2000                                          # knob: draws per view
H_STRIP, W_STRIP = 16, 128
strip = torch.zeros(H_STRIP, W_STRIP)
strip[:, :64] = (torch.arange(H_STRIP)[:, None] + torch.arange(64)[None]) % 2     # checkerboard
strip[:, 80:112] = 1.0                                                           # white bar
batch = (strip * 255).to(torch.uint8).expand(N_DRAWS, 3, H_STRIP, W_STRIP).contiguous()
out = photometric([batch] * 4, BatchRandom(seed=2), jitter=(0, 0, 0, 0))
blurred, solarised, n_unsolarised = [], [], []
for x in out:
    x = to_pixels(x)[:, 0]                                  # grey: one channel is enough
    solar = x[:, :, 88:104].amax((1, 2)) < 0.5              # the white bar turned dark
    changed = (x[:, :, 4:60] - strip[:, 4:60]).abs().amax((1, 2)) > 1e-3
    # solarisation changes the checkerboard too: judge blur on the views it left alone
    blurred.append(changed[~solar].float().mean().item())
    n_unsolarised.append(int((~solar).sum()))
    solarised.append(solar.float().mean().item())
view_names = ["global 1", "global 2", "local a", "local b"]
policy = [POLICY["global1"], POLICY["global2"], POLICY["local"], POLICY["local"]]
def se(p, n=N_DRAWS):
    """Binomial standard error of a share p measured over n draws."""
    return math.sqrt(max(p * (1 - p), 1e-4) / n)


def ratio_tolerance(num, den, n_num, n_den, k=4):
    """k standard errors of the ratio num / den of two independent measured shares."""
    return k * math.sqrt(se(num, n_num) ** 2 + (num / den * se(den, n_den)) ** 2) / den

fig, ax = plt.subplots(figsize=(7, 3.4))
xs = np.arange(4)
ax.bar(xs - 0.2, blurred, 0.4, yerr=[2 * se(p, n) for p, n in zip(blurred, n_unsolarised)],
       label="measured: visibly blurred (of the unsolarised)")
ax.bar(xs + 0.2, solarised, 0.4, yerr=[2 * se(p) for p in solarised], label="measured: solarised")
ax.scatter(xs - 0.2, [b[0] for b in policy], marker="_", s=600, c="k", label="policy probability")
ax.scatter(xs + 0.2, [b[1] for b in policy], marker="_", s=600, c="k")
ax.set_xticks(xs, view_names)
ax.set(ylabel=f"share of {N_DRAWS} draws", ylim=(0, 1.1),
       title="photometric policy per view (bars: 2 standard errors)")
ax.legend(fontsize=8, loc="upper right")
plt.show()
for name, b, s_ in zip(view_names, blurred, solarised):
    print(f"{name:9s} visibly blurred {b:.3f}   solarised {s_:.3f}")
print(f"blur ratios: global 2 / global 1 = {blurred[1] / blurred[0]:.3f} (policy 0.1),"
      f" local / global 1 = {(blurred[2] + blurred[3]) / 2 / blurred[0]:.3f} (policy 0.5)")

# %% [markdown]
# Global view 1's bar sits below its probability of 1.0 only because its weakest blurs (sigma
# below about 0.25 px) change the checkerboard by less than the 1e-3 we count as visible; the
# ratios between views are what the policy fixes, and they match it within the error bars.
#
# ## 2. The loss by hand on tiny tensors
# Two views, K = 2 prototypes, batch of one. Teacher logits (after centering) are [1, 0] for
# view 0 and [0, 1] for view 1; the student outputs the same logits. With both temperatures 1:
# the teacher of view 0 is softmax([1, 0]) = [e/(1+e), 1/(1+e)], compared with the student of
# view 1, softmax([0, 1]) = [1/(1+e), e/(1+e)]. Only the two cross pairs (t=0, s=1) and (t=1, s=0)
# count, and by symmetry they are equal:
#
# H = -(e/(1+e)) log(1/(1+e)) - (1/(1+e)) log(e/(1+e)) = log(1+e) - 1/(1+e)

# %%
# NBVAL_CHECK_OUTPUT
logits = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
by_hand = math.log(1 + math.e) - 1 / (1 + math.e)
from_package = dino_loss(logits, logits, center=torch.zeros(1, 2), student_temp=1.0, teacher_temp=1.0)
# a same-view pair would be H(P, P) = h(P), the entropy of softmax([1, 0])
same_view = math.log(1 + math.e) - math.e / (1 + math.e)
print(f"by hand: {by_hand:.5f}   dino_lite.loss.dino_loss: {from_package.item():.5f}   "
      f"(with the two same-view pairs as well it would be {(by_hand + same_view) / 2:.5f})")

# %% [markdown]
# ## 3. The package skips same-view pairs: why, and when their KL would be zero
# Write the cross-entropy as H(P_t, P_s) = h(P_t) + KL(P_t || P_s): the teacher's entropy, which
# the student cannot change, plus the KL, which it can. At the start the student and the teacher
# are copies. If both score the *same* crop, and **if** both use one temperature and the center
# is zero, then P_s = P_t exactly and the KL is 0: the cell carries no signal at all. With
# DINO's real settings (teacher at 0.04, student at 0.1, a nonzero center) the same-view cell
# has KL > 0, but all it asks of the student is to become sharper and centred on its *own* view,
# which teaches nothing about invariance across views. Either way, DINO's loss is the mean of
# the cells *off* the diagonal.
#
# Below, one small network (a copy plays teacher and student) scores a batch of 8 images, each
# as 2 global + 4 local crops. The heat maps show KL(P_t || P_s) averaged over the batch, for
# every (teacher view, student view), in both settings, computed independently in float64 numpy
# (one colour scale for both); the diagonal (same view) is outlined in red. **Look at** the
# outlined cells: 0 on the left (there P_s = P_t, and KL(p || p) = 0 by definition), not 0 on the
# right. What the figure cannot show is that the *package* leaves those cells out; the printout
# below tests that in both settings: `dino_loss` equals the mean of the 10 off-diagonal cells,
# not the mean of all 12.

# %%
K = 16
net = MultiCropWrapper(build_backbone("vit_mini", patch_size=8, img_size=64, depth=2),
                       DINOHead(128, K, hidden_dim=64, bottleneck_dim=32)).eval()
images = [torch.from_numpy(render(seed=0, split="train", index=i, size=128)[0]).permute(2, 0, 1)
          for i in range(8)]
per_image = [MultiCrop(64, 32, n_local=4)(im) for im in images]
views = photometric([torch.stack(v) for v in zip(*per_image)], BatchRandom(seed=3))
with torch.no_grad():
    out = [o.double() for o in net(views).output]         # one copy plays teacher and student
center = torch.cat(out[:2]).mean(0, keepdim=True)     # a center: the batch mean of teacher logits
settings = {"equal temperatures (0.1), center 0": (0.1, 0.1, torch.zeros(1, K, dtype=torch.float64)),
            "DINO: teacher 0.04, student 0.1, center": (0.04, 0.1, center)}


def pair_matrices(teacher_temp, student_temp, c):
    """H and KL for every (teacher view, student view), mean over the batch, in float64 numpy:
    an independent computation of what ``dino_loss`` should average."""
    o = [v.numpy() for v in out]
    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))
    log_pt = [log_softmax((o[t] - c.numpy()) / teacher_temp) for t in range(2)]
    log_ps = [log_softmax(v / student_temp) for v in o]
    H = np.array([[-(np.exp(log_pt[t]) * log_ps[s]).sum(1).mean() for s in range(len(o))] for t in range(2)])
    h = np.array([-(np.exp(lp) * lp).sum(1).mean() for lp in log_pt])
    return H, H - h[:, None]


view_labels = ["g1", "g2"] + [f"l{i}" for i in range(1, 5)]
fig, axes = plt.subplots(1, 2, figsize=(12, 2.8), layout="constrained")
mats = {name: pair_matrices(*setting) for name, setting in settings.items()}
kl_max = max(KL.max() for _, KL in mats.values())          # one colour scale for both maps
for ax, name in zip(axes, settings):
    H_mat, KL_mat = mats[name]
    im = ax.imshow(KL_mat, cmap="viridis", vmin=0, vmax=kl_max)
    for t in range(2):
        ax.add_patch(Rectangle((t - 0.5, t - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
        for s_ in range(6):
            ax.text(s_, t, f"{KL_mat[t, s_]:.3f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(6), view_labels)
    ax.set_yticks(range(2), ["g1", "g2"])
    ax.set(xlabel="student view", ylabel="teacher view", title=name)
fig.colorbar(im, ax=axes, label="KL(P_t || P_s) (nats)")
plt.show()

tt, ts, c = settings["DINO: teacher 0.04, student 0.1, center"]
H_dino, KL_dino = mats["DINO: teacher 0.04, student 0.1, center"]
off = ~np.eye(2, 6, dtype=bool)
package = {}                 # the package's loss on this batch, in each setting
for name, (tt_, ts_, c_) in settings.items():
    package[name] = dino_loss(out, out[:2], c_, student_temp=ts_, teacher_temp=tt_).item()
    H_mat = mats[name][0]
    print(f"{name}:\n  dino_loss {package[name]:.6f}   numpy mean of the 10 off-diagonal cells "
          f"{H_mat[off].mean():.6f}   of all 12 cells {H_mat.mean():.6f}")
print("same-view KL (numpy), DINO's settings:", KL_dino.diagonal().round(3))
loss = package["DINO: teacher 0.04, student 0.1, center"]
# each off-diagonal cell through the package alone: teacher view t, student views [unused, s]
cells = np.array([[dino_loss([out[s], out[s]], [out[t]], c, ts, tt).item() if s != t else np.nan
                   for s in range(6)] for t in range(2)])
print("largest |package cell - numpy cell|:", np.nanmax(np.abs(cells - H_dino)))
print("the (teacher, student) pairs the package averages:", _pairs(2, 6))

# %% [markdown]
# ## 4. The loss landscape in one picture
# With the teacher fixed, the loss of one pair as the student's logit for prototype 0 varies:
# the minimum sits where the student's distribution equals the teacher's. Because the teacher
# divides by 0.04 and the student by 0.1, the student must make its logit 0.1 / 0.04 = 2.5 times
# the teacher's: sharpening, seen from the student's side.

# %%
teacher_logits = torch.tensor([[0.1, 0.0, 0.0]])
xs = torch.linspace(-1, 1, 201)
pair = [dino_loss([torch.tensor([[x, 0.0, 0.0]]), teacher_logits], [teacher_logits, teacher_logits],
                  torch.zeros(1, 3)).item() for x in xs]
best = xs[int(torch.tensor(pair).argmin())].item()
plt.figure(figsize=(5, 3))
plt.plot(xs, pair)
plt.axvline(best, ls="--", c="k", label=f"minimum at {best:.2f}")
plt.xlabel("student logit for prototype 0 (teacher's: 0.1)")
plt.ylabel("DINO loss (nats)")
plt.legend()
plt.title(f"minimum at 0.1 x tau_s / tau_t = {0.1 * 0.1 / 0.04:.2f}")
plt.show()

# %% [markdown]
# ## 5. The DINO head: K prototypes on a sphere
# The K logits come from the projection head (`dino_lite.models.DINOHead`): a 3-layer MLP, a
# bottleneck (256 in the paper), L2 normalisation, then a **weight-normalised** linear layer
# without bias to K outputs (65536 in the paper). Weight normalisation writes each row of that
# layer as `g * v / ||v||`; with `norm_last_layer=True` (the paper's default) the gain g is
# fixed at 1 and never trained. Each row is then a unit vector, a **prototype**, and each logit is
# the cosine between the image's bottleneck vector and one prototype, in [-1, 1]. Divided by
# the temperatures, that bounds how peaked the softmax can get.

# %%
head = DINOHead(128, K, hidden_dim=64, bottleneck_dim=32)
print(head)
g = head.last_layer.parametrizations.weight.original0
print("gain g:", tuple(g.shape), "all ones:", bool((g == 1).all()), " trainable:", g.requires_grad)
x = torch.randn(64, 128)
with torch.no_grad():
    logits = head(x)
    cosines = F.normalize(head.mlp(x), dim=-1) @ F.normalize(head.last_layer.parametrizations.weight.original1, dim=-1).T
print(f"logits in [{logits.min().item():.3f}, {logits.max().item():.3f}];"
      f" max |logit - cosine(bottleneck, prototype)| = {(logits - cosines).abs().max().item():.1e}")

# %% [markdown]
# What fixing g does, over 30 AdamW steps of a loss that rewards large logits (the easiest way
# to lower a cross-entropy is to scale the logits up): with `norm_last_layer=True` the row norms
# stay at 1 and the head can only *turn* its prototypes; with `False` it simply grows them.
# **Look at** the flat line.

# %%
norms = {}
for fixed in (True, False):
    torch.manual_seed(0)
    h_ = DINOHead(128, K, hidden_dim=64, bottleneck_dim=32, norm_last_layer=fixed)
    opt = torch.optim.AdamW(h_.parameters(), lr=1e-2)
    v0 = h_.last_layer.parametrizations.weight.original1.detach().clone()
    norms[fixed] = [h_.last_layer.weight.norm(dim=1).mean().item()]
    for _ in range(30):
        loss_ = -h_(x).max(dim=1).values.mean()
        opt.zero_grad()
        loss_.backward()
        opt.step()
        norms[fixed].append(h_.last_layer.weight.norm(dim=1).mean().item())
    if fixed:
        turned = (h_.last_layer.parametrizations.weight.original1 - v0).abs().max().item()
plt.figure(figsize=(5.5, 3))
plt.plot(norms[True], label="norm_last_layer=True (g fixed at 1)")
plt.plot(norms[False], label="norm_last_layer=False (g trained)")
plt.xlabel("AdamW step")
plt.ylabel("mean row norm of last layer")
plt.legend(fontsize=8)
plt.show()
print(f"fixed g: row norm {norms[True][-1]:.4f} after 30 steps while the directions moved by up to {turned:.3f};"
      f" trained g: {norms[False][-1]:.3f}")

# %% [markdown]
# **`freeze_last_layer`.** For the first `freeze_last_layer` epochs (1 in the paper; 0 in the
# CPU presets) the training step drops the gradients of this last layer after the backward pass,
# so the prototypes stay where they were initialised while the rest of the network starts to
# learn (`dino_step` in `dino_lite/methods/dino.py`: `if step < sched["freeze_last_layer"]`).

# %% [markdown]
# ## 6. A whole DINO step by hand, against the package's
# The paper's Algorithm 1 in words: augment two views; the teacher (no gradient) and the student
# score them; the loss is the cross-entropy between the teacher's centred, sharpened softmax and
# the student's softmax over pairs of different views; back-propagate into the student only;
# an optimiser step; then the teacher becomes an exponential moving average (EMA) of the student
# and the center a running mean of the teacher's logits:
#
# $$\theta_t \leftarrow \lambda\,\theta_t + (1 - \lambda)\,\theta_s, \qquad
#   C \leftarrow m\,C + (1 - m)\,\frac{1}{2B}\sum_{i=1}^{B}\big(g_t(x^g_{1,i}) + g_t(x^g_{2,i})\big).$$
#
# Below, `hand_step` writes that step out, multi-crop included, in about 20 lines. It takes the
# networks, the optimiser, the schedules and the augmentations from the package (the `cpu-demo`
# recipe, shrunk to one block and 8 images so that it runs in seconds, in fp32 on every machine)
# and writes the rest itself: the temperatures, center and sharpen, the pairs, the loss, the
# learning rate, clipping, the EMA and the center update. Then two identical copies of the
# networks take `HAND_STEPS` steps on the same batches: one copy with `hand_step`, the other with
# the package's `dino_lite.methods.dino.dino_step`. If the hand-written step is the package's
# step, the losses agree at every step and so do the teachers and centers at the end.

# %%
HAND_STEPS = 3           # knob: steps of the comparison
cfg = make_config("cpu-demo", dict(depth=1, out_dim=256, head_hidden=64, batch_size=8, max_steps=10,
                                   minutes=None, fp32_variant={}, global_size=48, local_size=24))
proc = Process(0, 1, torch.device("cpu"), Precision(bf16=False, fused_attention=False, reason="fp32 here"))
sched = make_schedules(cfg, cfg.max_steps, cfg.batch_size)


def hand_step(views, step, student, teacher, center, optimizer):
    """One DINO step: ``views`` are the batch's crops (2 global, then local), uint8."""
    x, _ = augmented(views, step, cfg, proc)                    # the package's photometric draw
    for group in optimizer.param_groups:                        # this step's lr and weight decay
        group["lr"] = sched["lr"][step]
        if not group.get("no_decay"):
            group["weight_decay"] = sched["wd"][step]
    with torch.no_grad():
        t = teacher(x[:2]).output                               # the teacher sees the global views
    p_t = [F.softmax((ti - center) / cfg.teacher_temp, dim=-1) for ti in t]   # center, sharpen
    # (cpu-demo keeps the teacher temperature at 0.04 throughout; notebook 04 shows a warm-up)
    log_p_s = [F.log_softmax(si / cfg.out_temp_student, dim=-1) for si in student(x).output]
    pairs = [(i, j) for i in range(2) for j in range(len(x)) if j != i]       # different views
    loss = sum(-(p_t[i] * log_p_s[j]).sum(-1).mean() for i, j in pairs) / len(pairs)
    optimizer.zero_grad()
    loss.backward()                                             # into the student only
    torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.clip_grad)
    optimizer.step()
    lam, m = sched["momentum"][step], cfg.center_momentum
    with torch.no_grad():
        for p_teacher, p_student in zip(teacher.parameters(), student.parameters()):
            p_teacher.mul_(lam).add_(p_student, alpha=1 - lam)  # EMA of the student
        center.mul_(m).add_(torch.cat(t).mean(0, keepdim=True), alpha=1 - m)
    return loss.item()


torch.manual_seed(0)
student, teacher = build_student_teacher(cfg, fused_attention=False)
teacher_at_start = copy.deepcopy(teacher)
hand = {"student": student, "teacher": teacher, "center": torch.zeros(1, cfg.out_dim)}
pkg = {"student": copy.deepcopy(student), "teacher": copy.deepcopy(teacher),
       "loss_fn": get_method("dino").loss_state(cfg, cfg.max_steps, sched)}
hand["optimizer"], pkg["optimizer"] = build_optimizer(cfg, hand["student"]), build_optimizer(cfg, pkg["student"])
crop = MultiCrop(cfg.global_size, cfg.local_size, cfg.n_local, cfg.global_scale, cfg.local_scale)
losses = []
for step in range(HAND_STEPS):
    batch = [torch.from_numpy(render(seed=0, split="train", index=step * cfg.batch_size + i, size=64)[0])
             .permute(2, 0, 1) for i in range(cfg.batch_size)]
    views = [torch.stack(v) for v in zip(*[crop(im) for im in batch])]
    ours = hand_step(views, step, hand["student"], hand["teacher"], hand["center"], hand["optimizer"])
    record = dino_step(views, step, pkg["student"], pkg["teacher"], pkg["loss_fn"], pkg["optimizer"],
                       sched, cfg, proc)
    losses.append((ours, record["loss"]))
    print(f"step {step}: hand_step loss {ours:.6f}   dino_step loss {record['loss']:.6f}")


def distance(net_a, net_b):
    """The Euclidean distance between two networks' weights (all parameters as one vector)."""
    return sum(((a - b) ** 2).sum() for a, b in zip(net_a.parameters(), net_b.parameters())).sqrt().item()


# AdamW divides by the root of each gradient's running square, so float rounding in a near-zero
# gradient can move a weight by a whole step: compare the teachers as vectors, not weight by weight
teacher_gap, moved = distance(hand["teacher"], pkg["teacher"]), distance(hand["teacher"], teacher_at_start)
center_gap = (hand["center"] - pkg["loss_fn"].center).abs().max().item()
print(f"after {HAND_STEPS} steps: |teacher, hand - package| = {teacher_gap:.1e} while the teacher moved "
      f"by {moved:.1e}; largest |center, hand - package| {center_gap:.1e}")

# %% [markdown]
# And the same-view pairs once more, now inside a real step: the same batch scored by the
# package's networks, with the loss over the 10 pairs of different views (what `dino_step`
# logged) and over all 12 pairs. Only the first matches the package.

# %%
with torch.no_grad():
    x, _ = augmented(views, 0, cfg, proc)
    t = pkg["teacher"](x[:2]).output
    p_t = pkg["loss_fn"].targets(t, 0)
    log_p_s = [F.log_softmax(si / cfg.out_temp_student, dim=-1) for si in pkg["student"](x).output]
    cell = {(i, j): -(p_t[i] * log_p_s[j]).sum(-1).mean().item() for i in range(2) for j in range(len(x))}
    package_now = pkg["loss_fn"].objective(pkg["student"](x).output, t, 0).item()
different = np.mean([v for (i, j), v in cell.items() if i != j])
every = np.mean(list(cell.values()))
print(f"the package's loss {package_now:.6f}   mean over different views {different:.6f}   "
      f"over all pairs {every:.6f}")

# %% [markdown]
# ## Summary and exercises
#
# The loss (Eq. 3) compares every teacher view (the 2 global crops) with every *other* student
# view, as a cross-entropy between a sharpened, centred teacher softmax and the student's softmax;
# the package averages exactly those pairs and leaves the same-view ones out. A cross-entropy
# splits into the teacher's entropy plus a KL; a same-view pair would have KL = 0 only at equal
# temperatures and zero center, and teaches no invariance across views in any case. The views
# differ photometrically by design (global 1 always blurred, global 2 sometimes solarised), the
# logits are cosines to K unit-norm prototypes, and a whole DINO step (views, center and
# sharpen, loss, backward, step, EMA, center update) fits in about 20 lines that reproduce the
# package's `dino_step`; the package adds iBOT's and KoLeo's optional terms, gradient
# accumulation, several processes and the log.
#
# **Exercises.**
# 1. In section 3, keep the temperatures equal but use the batch-mean center: is the same-view
#    KL still zero? Predict first, then change `settings`.
# 2. Add a third global crop by hand: how many (teacher, student) pairs does the loss average
#    over now? Check with `dino_lite.loss._pairs`.
# 3. In section 5, train the head with `norm_last_layer=False` for 300 steps: what happens to the
#    student's softmax at temperature 0.1 as the row norms grow?
# 4. In `hand_step`, drop `if j != i` from the pairs, or swap `lam` and `1 - lam` in the EMA, and
#    rerun section 6 and the check: which assertion fails?

# %% [markdown]
# ## Check
# Each assertion compares the package with an independent computation or a measurement, and
# names the sentence it guards:
# 1. "only the two cross pairs count": `dino_loss` equals the closed form log(1+e) - 1/(1+e), not
#    the value with the same-view pairs (fails if the loss used the same-view pairs, swapped
#    teacher and student, or dropped a softmax);
# 2. "the package leaves those cells out": every (t, s) cell computed by `dino_loss` alone equals
#    the float64 numpy cross-entropy, and in **both** settings of section 3 the package's loss
#    equals the numpy mean of the 10 off-diagonal cells and differs from the mean of all 12
#    (fails if the package centred or sharpened the student, or kept the same-view pairs);
# 3. "with DINO's real settings the same-view cell has KL > 0": above 0.01 nats in every
#    same-view cell (numpy; a statement about the settings, not the package);
# 4. the measured photometric policy: global 1 and the locals are never solarised, global 2 is
#    solarised at 0.2 and blurred at 0.1 times global 1's rate, the locals at 0.5 times, each
#    within 4 standard errors (fails if `photometric` used one policy for all views, or swapped
#    the two global views);
# 5. the head's logits are cosines (|logit| <= 1 and equal to the cosine computed by hand), and
#    with g fixed the row norms stay 1 after 30 AdamW steps while the directions moved, but grow
#    with g trained (fails without the weight normalisation, or if g were handed to AdamW);
# 6. the loss landscape's minimum sits at 0.1 x tau_s / tau_t (fails if the temperatures were
#    swapped: the minimum would be at 0.04);
# 7. "the hand-written step is the package's step": the losses agree at every step, and the
#    centers after the last step, and the two teachers lie within 5% of the distance the teacher
#    moved (float rounding, amplified by AdamW, leaves a little; fails if `hand_step` kept the same-view pairs, swapped the EMA's weights, updated
#    the center before the loss, or if `dino_step` did any of these); and inside a real step the
#    package's loss is the mean over different views, not over all pairs.

# %%
assert abs(from_package.item() - by_hand) < 1e-5 and abs(from_package.item() - (by_hand + same_view) / 2) > 0.1
assert np.nanmax(np.abs(cells - H_dino)) < 1e-4
for name in settings:
    H_mat = mats[name][0]
    assert abs(package[name] - H_mat[off].mean()) < 1e-5 < abs(package[name] - H_mat.mean()), (name, package[name], H_mat[off].mean(), H_mat.mean())
assert (KL_dino.diagonal() > 0.01).all(), KL_dino.diagonal()
assert solarised[0] == 0 and solarised[2] == solarised[3] == 0, solarised
assert abs(solarised[1] - 0.2) < 4 * se(0.2), solarised
n = n_unsolarised
assert abs(blurred[1] / blurred[0] - 0.1) < ratio_tolerance(blurred[1], blurred[0], n[1], n[0]), blurred
local = (blurred[2] + blurred[3]) / 2
assert abs(local / blurred[0] - 0.5) < ratio_tolerance(local, blurred[0], n[2] + n[3], n[0]), blurred
assert logits.abs().max() <= 1 + 1e-6 and torch.allclose(logits, cosines, atol=1e-5)
assert abs(norms[True][-1] - 1) < 1e-5 and turned > 1e-3 and norms[False][-1] > 1.1, (norms[True][-1], norms[False][-1])
assert abs(best - 0.1 * 0.1 / 0.04) < 0.02
assert all(abs(a - b) < 1e-5 for a, b in losses), losses
assert teacher_gap < 0.05 * moved and center_gap < 1e-5, (teacher_gap, center_gap, moved)
assert abs(package_now - different) < 1e-5 < abs(package_now - every), (package_now, different, every)
print("all checks passed")
