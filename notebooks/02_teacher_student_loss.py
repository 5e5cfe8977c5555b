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
# The loss is the mean of H over all such pairs. Local-to-global pairs teach the student that a
# small part of an image should be described like the whole: this is where DINO's semantic,
# object-centred features come from. You will see the views with their photometric asymmetry,
# the loss by hand against the package, why same-view pairs are skipped (and when their KL is
# zero), the head that produces the K logits, and the paper's Algorithm 1 beside the package's
# training step.
#
# **Run time:** about 11 s on a 2-core CPU (measured with `jupytext --execute`).
# **Knob:** `N_DRAWS` in section 1 (augmentation draws per view used to measure the policy;
# more gives tighter estimates).

# %%
import inspect
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import HTML, display
from matplotlib.patches import Rectangle

import dino_lite.train
from dino_lite import augment
from dino_lite.augment import POLICY, BatchRandom, MultiCrop, photometric
from dino_lite.loss import dino_loss
from dino_lite.models import DINOHead, MultiCropWrapper, build_backbone
from dino_lite.shapes import render

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
# training step): colour jitter, grayscale, and a policy that differs **per view**:

# %%
for view, (blur_p, solar_p) in POLICY.items():
    print(f"{view:8s} blur p = {blur_p:.1f}   solarise p = {solar_p:.1f}")

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
names = ["global 1\n(blur 1.0)", "global 2\n(blur 0.1, solar. 0.2)"] + [f"local {i}\n(blur 0.5)" for i in range(1, 5)]
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
print(f"by hand: {by_hand:.5f}   dino_lite.loss.dino_loss: {from_package.item():.5f}")

# %% [markdown]
# ## 3. Why same-view pairs are skipped, and when their KL is zero
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
# every (teacher view, student view), in both settings; the diagonal (same view) is outlined in
# red. **Look at** the outlined cells: exactly 0 on the left, clearly not 0 on the right.

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
mats = {}
for ax, (name, (tt, ts, c)) in zip(axes, settings.items()):
    H_mat, KL_mat = mats[name] = pair_matrices(tt, ts, c)
    im = ax.imshow(KL_mat, cmap="viridis", vmin=0)
    fig.colorbar(im, ax=ax, label="KL(P_t || P_s) (nats)")
    for t in range(2):
        ax.add_patch(Rectangle((t - 0.5, t - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
        for s_ in range(6):
            ax.text(s_, t, f"{KL_mat[t, s_]:.3f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(6), view_labels)
    ax.set_yticks(range(2), ["g1", "g2"])
    ax.set(xlabel="student view", ylabel="teacher view", title=name)
plt.show()

tt, ts, c = settings["DINO: teacher 0.04, student 0.1, center"]
H_dino, KL_dino = mats["DINO: teacher 0.04, student 0.1, center"]
off = ~np.eye(2, 6, dtype=bool)
loss = dino_loss(out, out[:2], c, student_temp=ts, teacher_temp=tt).item()
# each off-diagonal cell through the package alone: teacher view t, student views [unused, s]
cells = np.array([[dino_loss([out[s], out[s]], [out[t]], c, ts, tt).item() if s != t else np.nan
                   for s in range(6)] for t in range(2)])
print("same-view KL, equal temperatures & zero center:", mats["equal temperatures (0.1), center 0"][1].diagonal())
print("same-view KL, DINO's temperatures & center:    ", KL_dino.diagonal())
print(f"dino_loss {loss:.6f}; numpy mean of off-diagonal H {H_dino[off].mean():.6f};"
      f" numpy mean of all 12 cells {H_dino.mean():.6f}")
print("largest |package cell - numpy cell|:", np.nanmax(np.abs(cells - H_dino)))

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
# learn. These are the package's lines (`dino_lite/methods/dino.py`: the epochs turned into a
# number of steps, then the gradients dropped in the step):

# %%
# the package's DINO step (dino_lite.methods.dino.dino_step, imported into dino_lite.train)
step_fn = dino_lite.train.dino_step
step_source = inspect.getsource(step_fn)
modules = {dino_lite.train, inspect.getmodule(step_fn)}
module_lines = [line for m in sorted(modules, key=lambda m: m.__name__) for line in inspect.getsource(m).splitlines()]
for i, line in enumerate(module_lines):
    if "freeze_last_layer" in line:
        shown = module_lines[i:i + 3] if line.strip().startswith("if ") else [line]
        print("\n".join(shown))

# %% [markdown]
# ## 6. Algorithm 1 beside the package
# The paper gives DINO's training loop as a dozen lines of pseudocode (its Algorithm 1). Left:
# that loop in our own notation (two global views only, as in the paper's listing). Right: the
# package's step function, which runs it (`dino_lite.methods.dino.dino_step`, also importable as
# `dino_lite.train.dino_step`). **Read across**: each step on the left has a line on the right, in
# the same order, the center moving last; the right side adds multi-crop (all t != s pairs, local
# crops for the student), the photometric augmentations, lr and weight-decay schedules, gradient
# accumulation, gradient clipping, `freeze_last_layer`, diagnostics and the optional additions
# from later papers (iBOT's and KoLeo's loss terms, computed beside it in `loss_terms`).

# %%
algorithm_1 = """\
given: student g_s, teacher g_t (same architecture),
       center C (K zeros), temperatures tau_s = 0.1, tau_t = 0.04,
       momenta lam (teacher, 0.996 -> 1) and m (center, 0.9)

g_t <- copy of g_s                    # the teacher starts as the student
for each minibatch x of n images:
    v1, v2 <- two random augmented views of x
    s1, s2 <- g_s(v1), g_s(v2)        # student logits, n x K
    t1, t2 <- g_t(v1), g_t(v2)        # teacher logits, no gradient
    loss <- (H(t1, s2) + H(t2, s1)) / 2   # only pairs of different views
    back-propagate loss into g_s only
    optimiser step on g_s
    g_t <- lam * g_t + (1 - lam) * g_s     # EMA of the student
    C   <- m * C + (1 - m) * mean of [t1; t2] over the batch

H(t, s):
    P_t <- softmax((t - C) / tau_t)   # center, then sharpen; treated as a constant
    P_s <- softmax(s / tau_s)
    return mean over images of - sum_k P_t[k] log P_s[k]
"""
esc = lambda text: text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
display(HTML(
    "<table><tr><th style='text-align:left'>Algorithm 1 (the paper), our notation</th>"
    f"<th style='text-align:left'>the package: <code>{step_fn.__qualname__}</code></th></tr>"
    "<tr><td style='vertical-align:top'><pre style='font-size:11px'>" + esc(algorithm_1) + "</pre></td>"
    "<td style='vertical-align:top'><pre style='font-size:11px'>" + esc(step_source) + "</pre></td></tr></table>"))
print(f"the package's step: {step_fn.__module__}.{step_fn.__qualname__}, {len(step_source.splitlines())} lines")

# %% [markdown]
# ## Summary and exercises
#
# The loss compares every teacher view (the 2 global crops) with every *other* student view, as a
# cross-entropy between a sharpened, centred teacher softmax and the student's softmax. It splits
# into the teacher's entropy plus a KL; a same-view pair has KL = 0 only at equal temperatures
# and zero center, and it is skipped in any case because it teaches no invariance across views.
# The views differ photometrically by design (global 1 blurred, global 2 sometimes solarised),
# the logits are cosines to K unit-norm prototypes, and the package's step is Algorithm 1 plus
# multi-crop, schedules and bookkeeping.
#
# **Exercises.**
# 1. In section 3, keep the temperatures equal but use the batch-mean center: is the same-view
#    KL still zero? Predict first, then change `settings`.
# 2. Add a third global crop by hand: how many (teacher, student) pairs does the loss average
#    over now? Check with `dino_lite.loss._pairs`.
# 3. In section 5, train the head with `norm_last_layer=False` for 300 steps: what happens to the
#    student's softmax at temperature 0.1 as the row norms grow?

# %% [markdown]
# ## Check
# Each assertion compares the package with an independent computation or a measurement:
# 1. `dino_loss` equals the closed form log(1+e) - 1/(1+e) (fails if the loss used the same-view
#    pairs, swapped teacher and student, or dropped a softmax);
# 2. every (t, s) cell computed by `dino_loss` alone equals the float64 numpy cross-entropy, and
#    the full loss equals the numpy mean of the 10 off-diagonal cells but not the mean of all 12
#    (fails if the package centred or sharpened the student, or kept the same-view pairs);
# 3. the same-view KL is 0 at equal temperatures and zero center, and above 0.01 nats in every
#    same-view cell with DINO's settings (fails if the notebook's first claim were wrong in
#    either direction);
# 4. the measured photometric policy: global 1 and the locals are never solarised, global 2 is
#    solarised at 0.2 and blurred at 0.1 times global 1's rate, the locals at 0.5 times, each
#    within 4 standard errors (fails if `photometric` used one policy for all views, or swapped
#    the two global views);
# 5. the head's logits are cosines (|logit| <= 1 and equal to the cosine computed by hand), and
#    with g fixed the row norms stay 1 after 30 AdamW steps while the directions moved, but grow
#    with g trained (fails without the weight normalisation, or if g were handed to AdamW);
# 6. the loss landscape's minimum sits at 0.1 x tau_s / tau_t (fails if the temperatures were
#    swapped: the minimum would be at 0.04).

# %%
assert abs(from_package.item() - by_hand) < 1e-5
assert np.nanmax(np.abs(cells - H_dino)) < 1e-4
assert abs(loss - H_dino[off].mean()) < 1e-5 < abs(loss - H_dino.mean()), (loss, H_dino[off].mean(), H_dino.mean())
assert np.abs(mats["equal temperatures (0.1), center 0"][1].diagonal()).max() < 1e-9
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
print("all checks passed")
