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
# # 01 · How a Vision Transformer sees an image: patches, tokens, positions
#
# A ViT never looks at pixels one by one. It cuts the image into a grid of `p x p` patches,
# turns each patch into one vector (a *token*) with a single linear map, prepends a learned
# **CLS** token, adds a **position embedding** to every token and lets the transformer blocks
# mix them. DINO's attention maps are the CLS token's attention over these patch tokens.
#
# This notebook uses the same timm backbone `dino_lite` trains (`dino_lite.models.build_backbone`).

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from skimage import data as skdata

from dino_lite.models import build_backbone

torch.manual_seed(0)
image = torch.from_numpy(skdata.astronaut()).permute(2, 0, 1).float() / 255   # [3, 512, 512]
image = F.interpolate(image[None], size=224, mode="bilinear", antialias=True)[0]
print("image", tuple(image.shape))

# %% [markdown]
# ## 1. Cutting the image into patches
# `unfold` lifts every non-overlapping `16 x 16` patch out of the image: a 224 px image gives a
# 14 x 14 grid, 196 patches of 3 x 16 x 16 = 768 numbers each.

# %%
P = 16
patches = F.unfold(image[None], kernel_size=P, stride=P)[0].T       # [196, 768]
grid = 224 // P
print("patches:", tuple(patches.shape), "grid:", grid, "x", grid)

fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
axes[0].imshow(image.permute(1, 2, 0))
for k in range(1, grid):
    axes[0].axhline(k * P - 0.5, color="w", lw=0.5)
    axes[0].axvline(k * P - 0.5, color="w", lw=0.5)
axes[0].set_title("224 px image, 16 px patches")
tiles = patches.view(grid, grid, 3, P, P)
mosaic = torch.ones(3, grid * (P + 2), grid * (P + 2))
for i in range(grid):
    for j in range(grid):
        mosaic[:, i * (P + 2):i * (P + 2) + P, j * (P + 2):j * (P + 2) + P] = tiles[i, j]
axes[1].imshow(mosaic.permute(1, 2, 0))
axes[1].set_title("196 tokens-to-be")
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## 2. The patch embedding is a strided convolution
# A linear map applied to each flattened patch is exactly a convolution with kernel = stride =
# patch size. timm implements it that way (`patch_embed.proj`); we check that flattening +
# matrix product gives the same tokens.

# %%
vit = build_backbone("vit_small", patch_size=P, img_size=224).eval()
proj = vit.patch_embed.proj                                   # Conv2d(3, 384, 16, stride=16)
with torch.no_grad():
    tokens_conv = proj(image[None]).flatten(2).transpose(1, 2)[0]              # [196, 384]
    tokens_linear = patches @ proj.weight.flatten(1).T + proj.bias            # [196, 384]
print(proj)
print("max |conv - linear| =", (tokens_conv - tokens_linear).abs().max().item())

# %% [markdown]
# ## 3. The CLS token and the position embeddings
# The transformer is permutation-invariant, so position enters only through a learned vector
# added to each token. timm keeps one for the CLS token and one per grid cell. When the image
# size changes (DINO's 96 px local crops), the grid changes and the position embeddings are
# **interpolated** bicubically: the model built with `dynamic_img_size=True` does this itself.

# %%
pos = vit.pos_embed[0, 1:].detach()                           # [196, 384] (CLS row removed)
small = F.interpolate(pos.T.reshape(1, -1, grid, grid), size=(6, 6), mode="bicubic",
                      align_corners=False)[0].reshape(pos.shape[1], -1).T
with torch.no_grad():
    out224 = vit.forward_features(image[None])
    out96 = vit.forward_features(F.interpolate(image[None], size=96, mode="bilinear", antialias=True))
print("tokens at 224 px:", out224.shape[1], "= 1 CLS +", grid * grid, "patches")
print("tokens at  96 px:", out96.shape[1], "= 1 CLS +", (96 // P) ** 2, "patches")

fig, axes = plt.subplots(1, 2, figsize=(7, 3.5))
axes[0].imshow(pos[:, 0].view(grid, grid), cmap="coolwarm")
axes[0].set_title("one position-embedding channel, 14x14")
axes[1].imshow(small[:, 0].view(6, 6), cmap="coolwarm")
axes[1].set_title("interpolated to 6x6 (96 px crop)")
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## 4. /16 versus /8: four times the tokens, far more compute
# Halving the patch size quadruples the number of tokens. The MLPs grow linearly with tokens and
# attention quadratically, which is why the paper's ViT-S/8 runs at 180 im/s against 1007 im/s
# for ViT-S/16. We measure the same ratio on this CPU with a small batch (the knob below).

# %%
BATCH = 2          # knob: a larger batch gives steadier timings
rows = []
for patch in (16, 8):
    model = build_backbone("vit_small", patch_size=patch, img_size=224).eval()
    x = torch.randn(BATCH, 3, 224, 224)
    with torch.no_grad():
        model(x)                                                # warm-up
        start = time.perf_counter()
        model(x)
        seconds = time.perf_counter() - start
    rows.append((patch, (224 // patch) ** 2 + 1, BATCH / seconds))
for patch, n_tokens, ips in rows:
    print(f"ViT-S/{patch}: {n_tokens:4d} tokens, {ips:6.1f} images/s on this CPU")
measured_ratio = rows[0][2] / rows[1][2]
print(f"/16 is {measured_ratio:.1f}x faster than /8 here; the paper's table: {1007 / 180:.1f}x")

# %% [markdown]
# ## Summary and exercises
#
# A ViT cuts the image into patches, embeds each with one strided convolution, prepends a CLS
# token and adds position embeddings, interpolated when the crop size changes. Going from /16 to
# /8 patches quadruples the tokens and costs far more than 4x in attention.
#
# **Exercises.**
# 1. Compute by hand how many tokens a 96 px local crop gives at patch 8 and at patch 16, then
#    check with the notebook's code.
# 2. Change the patch size in section 2 and confirm that the strided convolution and the reshaped
#    linear layer still agree.
# 3. The CPU presets replace the patch embedding by a convolutional stem (`stem="conv"`): build
#    one with `build_backbone(..., stem="conv")` and count its parameters against the linear patch
#    embedding.

# %% [markdown]
# ## Check
# The claims of this notebook, asserted: the linear patch map *is* the strided convolution,
# the token count is `1 + (size / p)^2` at any input size, and /8 costs several times /16.

# %%
assert torch.allclose(tokens_conv, tokens_linear, atol=1e-4)
assert out224.shape[1] == 1 + (224 // 16) ** 2 and out96.shape[1] == 1 + (96 // 16) ** 2
assert rows[1][1] - 1 == 4 * (rows[0][1] - 1)
assert measured_ratio > 2.5, measured_ratio
print("all checks passed")
