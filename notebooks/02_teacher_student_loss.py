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
# DINO shows one image to two networks. The **teacher** sees only the two large *global* crops;
# the **student** sees those and several small *local* crops. For every pair (teacher view t,
# student view s) with t != s, the student's distribution over K "prototypes" must match the
# teacher's:
#
# $$H(P_t, P_s) = -\sum_k P_t[k] \log P_s[k], \quad
#   P_s = \mathrm{softmax}(g_s / \tau_s), \quad P_t = \mathrm{softmax}((g_t - C) / \tau_t)$$
#
# The loss is the mean of H over all such pairs. Local-to-global pairs teach the student that a
# small part of an image should be described like the whole: this is where DINO's semantic,
# object-centred features come from.

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from dino_lite.augment import MultiCrop
from dino_lite.loss import dino_loss
from dino_lite.shapes import render

torch.manual_seed(0)

# %% [markdown]
# ## 1. Multi-crop views of one image
# Global crops cover 40-100% of the image, local crops 5-40%, resized to a smaller resolution.
# Here on a 128 px image from the embedded dataset: 2 global crops at 64 px, 6 local at 32 px.

# %%
img, label, mask = render(seed=0, split="train", index=3, size=128)
crops = MultiCrop(global_size=64, local_size=32, n_local=6)(torch.from_numpy(img).permute(2, 0, 1))
fig, axes = plt.subplots(1, 9, figsize=(15, 2.2))
axes[0].imshow(img)
axes[0].set_title("image")
for ax, (i, c) in zip(axes[1:], enumerate(crops)):
    ax.imshow(c.permute(1, 2, 0))
    ax.set_title(("global " if i < 2 else "local ") + f"{i}  {c.shape[-1]}px")
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
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
# ## 3. Why same-view pairs are skipped
# At the start the student and the teacher are copies. If both look at the *same* crop, the
# student already produces the teacher's answer: that cell of the pair matrix sits at its
# minimum (the teacher's own entropy, KL = 0) and carries no signal about the image. Below, a
# copy of one small network scores 2 global + 4 local crops; the matrix holds H(t, s) for
# every pair, and DINO's loss is the mean of the cells *off* the diagonal.

# %%
from dino_lite.models import DINOHead, MultiCropWrapper, build_backbone

K = 16
net = MultiCropWrapper(build_backbone("vit_mini", patch_size=8, img_size=64, depth=2),
                       DINOHead(128, K, hidden_dim=64, bottleneck_dim=32)).eval()
views = [c.float()[None] / 255 for c in MultiCrop(64, 32, n_local=4)(torch.from_numpy(img).permute(2, 0, 1))]
with torch.no_grad():
    out = net(views).output                 # the same network plays teacher and student
T = 0.1                                         # one temperature for both, no center: a pure copy
H = torch.tensor([[(-(F.softmax(out[t] / T, -1) * F.log_softmax(out[s] / T, -1)).sum()).item()
                   for s in range(len(out))] for t in range(2)])
own_entropy = torch.stack([-(F.softmax(out[t] / T, -1) * F.log_softmax(out[t] / T, -1)).sum() for t in range(2)])
loss = dino_loss(out, out[:2], torch.zeros(1, K), student_temp=T, teacher_temp=T)

plt.figure(figsize=(6, 2.2))
shown = H.clone()
shown[0, 0] = shown[1, 1] = float("nan")
plt.imshow(shown, cmap="viridis")
plt.colorbar(label="H(t, s)")
plt.xticks(range(6), ["g0", "g1", "l2", "l3", "l4", "l5"])
plt.yticks(range(2), ["teacher g0", "teacher g1"])
plt.title("pairs used by the loss (diagonal blank: same view)")
plt.show()
print("same-view cells:", H.diagonal().tolist(), " teacher entropies:", own_entropy.tolist())
print("mean of off-diagonal cells:", H[~torch.eye(2, 6, dtype=bool)].mean().item(), " dino_loss:", loss.item())

# %% [markdown]
# ## 4. The loss landscape in one picture
# With the teacher fixed, the loss of one pair as the student's logit for prototype 0 varies:
# the minimum sits where the student's distribution equals the teacher's.

# %%
teacher_logits = torch.tensor([[0.1, 0.0, 0.0]])
xs = torch.linspace(-1, 1, 201)
pair = [dino_loss([torch.tensor([[x, 0.0, 0.0]]), teacher_logits], [teacher_logits, teacher_logits],
                  torch.zeros(1, 3)).item() for x in xs]
best = xs[int(torch.tensor(pair).argmin())].item()
plt.figure(figsize=(5, 3))
plt.plot(xs, pair)
plt.axvline(best, ls="--", c="k")
plt.xlabel("student logit for prototype 0")
plt.ylabel("DINO loss")
plt.title(f"minimum at {best:.2f} = 0.1 x tau_s / tau_t = {0.1 * 0.1 / 0.04:.2f}")
plt.show()

# %% [markdown]
# ## Summary and exercises
#
# The loss compares every teacher view (the 2 global crops) with every *other* student view, as a
# cross-entropy between a sharpened, centred teacher softmax and the student's softmax; the hand
# computation matches `dino_loss`, and pairs of the same view are skipped because the student
# could match them without learning anything view-invariant.
#
# **Exercises.**
# 1. Set the teacher temperature equal to the student's and the center to zero: where does the
#    same-view pair's KL go, and why?
# 2. Add a third global crop by hand: how many (teacher, student) pairs does the loss average
#    over now?
# 3. Turn off the photometric asymmetry (blur and solarisation per view) in `augment.photometric`
#    and predict how the loss landscape changes.

# %% [markdown]
# ## Check
# The package's loss equals the hand computation; a copy already agrees with itself on the same
# view (those cells sit at the teacher's entropy) but not across views, and the loss is the mean
# of the cross-view cells; and the student matches the teacher when its logits
# are the teacher's scaled by tau_s / tau_t.

# %%
assert abs(from_package.item() - by_hand) < 1e-5
assert torch.allclose(H.diagonal(), own_entropy, atol=1e-4)          # same view: nothing to learn
assert all((H[t, s] > H[t, t]) for t in range(2) for s in range(6) if s != t)   # Gibbs: cross-view costs more
assert abs(H[~torch.eye(2, 6, dtype=bool)].mean().item() - loss.item()) < 1e-4
assert abs(best - 0.1 * 0.1 / 0.04) < 0.02
print("all checks passed")
