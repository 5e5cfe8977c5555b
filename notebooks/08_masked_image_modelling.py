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
# # 08 · Masked image modelling beside DINO: BEiT, SplitMask and the small-data study
#
# **What this teaches.** DINO learns by matching two augmented *views* of an image. Masked image
# models learn by *hiding part of one view* and predicting what was hidden. El-Nouby et al. 2021
# ("Are Large-scale Datasets Necessary for Self-Supervised Pre-training?") found that these
# denoising objectives (BEiT, and their SplitMask) lose little when pre-trained on 1% or 10% of
# ImageNet, where DINO loses several points. Here we take the pieces apart: the masks (BEiT's
# blocks, MAE-style uniform masking, SplitMask's two halves), the targets (a *tokenizer* turning
# every patch into one of V codewords), both losses computed by hand beside the package's, a
# short run of each method, and the small-data study's result file from a longer run on real
# photos (read, not re-run: it took hours of CPU).
#
# **Run time:** about 90 s on a 2-core AVX2 CPU in fp32 the first time (three 20-step runs,
# then cached in `../runs`), 25 s after that; 56 s the first time on a 2-core AVX-512 BF16 CPU
# in bf16 (`jupytext --execute`, idle machine); the study itself is read from `docs/results/`.
# On a 2-core AVX-512 BF16 CPU in bf16 (idle; every notebook in order from a fresh clone,
# `pytest --nbval-lax`): 33 s.
# The same CPU limited to AVX2 kernels, so fp32 as on an AVX2-only CPU (`ATEN_CPU_CAPABILITY=avx2
# ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`; idle, the same procedure): 24 s.
# **Knobs:** `STEPS` (steps of each short run), `VOCAB` (codebook size of the tokenizer figures).

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from dino_lite.config import make_config
from dino_lite.data import build_dataset, eval_transform
from dino_lite.masking import block_masks, min_block_patches, split_masks, uniform_masks
from dino_lite.methods import build_method
from dino_lite.tokenizers import build_tokenizer, codebook_image, redraw
from dino_lite.train import read_log, train

torch.set_num_threads(2)
plt.rcParams["figure.dpi"] = 80   # the stored figures stay readable and the notebook file small
STEPS = 20         # knob: steps of each method's short run (batch 32 on the embedded shapes)
VOCAB = 512        # knob: codebook size of the tokenizer figures (the runs use the preset's 8192)
GRID = (8, 8)      # 64 px images, 8 px patches: the cpu-demo and tinyimagenet presets
shapes = build_dataset("shapes", train=True, transform=eval_transform(64))
images = torch.stack([shapes[i][0] for i in range(8)])          # [8, 3, 64, 64], normalised
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def show(x):
    """A normalised [3, H, W] image as an [H, W, 3] array in [0, 1]."""
    return (x.permute(1, 2, 0) * STD + MEAN).clamp(0, 1).numpy()


def overlay(ax, x, hidden, title, colour=(0.05, 0.05, 0.2)):
    """``x`` with the ``hidden`` patches ([64] bool) darkened, patch grid drawn."""
    img = show(x).copy()
    m = hidden.view(GRID).repeat_interleave(8, 0).repeat_interleave(8, 1).numpy()
    img[m] = 0.2 * img[m] + 0.8 * np.array(colour)
    ax.imshow(img, extent=(0, GRID[1], GRID[0], 0))
    ax.set_xticks(range(0, GRID[1] + 1, 2))
    ax.set_yticks(range(0, GRID[0] + 1, 2))
    ax.grid(color="white", lw=0.3)
    ax.set_xlabel("patch column")
    ax.set_ylabel("patch row")
    ax.set_title(title, fontsize=9)


# %% [markdown]
# ## 1 · Two ways to hide 40% of the patches
# BEiT hides **blocks**: rectangles of at least a minimum area (16 patches of a 14 x 14 grid,
# scaled here to our 8 x 8 grid) with a log-uniform aspect ratio in [0.3, 1/0.3], added until the
# target of 40% is reached, never beyond it. **Uniform** masking (MAE) hides each patch
# independently of its neighbours. Look at how much of a hidden patch's neighbourhood is still
# visible: a uniformly hidden patch can be interpolated from its neighbours, a patch in the middle
# of a block cannot.

# %%
g = torch.Generator().manual_seed(0)
target = round(0.4 * 64)
block = block_masks(g, 1000, GRID, 0.4)
uniform = uniform_masks(g, 1000, 64, 0.4)
fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
overlay(axes[0], images[0], block[0], f"block mask ({int(block[0].sum())} of 64)")
overlay(axes[1], images[0], uniform[0], f"uniform mask ({int(uniform[0].sum())} of 64)")


def visible_neighbours(masks):
    """For each hidden patch, how many of its 4 neighbours are visible."""
    m = masks.view(-1, 1, *GRID).float()
    vis = F.conv2d(F.pad(1 - m, (1, 1, 1, 1)), torch.tensor([[[[0., 1, 0], [1, 0, 1], [0, 1, 0]]]]))
    inside = F.conv2d(F.pad(torch.ones_like(m), (1, 1, 1, 1)), torch.tensor([[[[0., 1, 0], [1, 0, 1], [0, 1, 0]]]]))
    return (vis / inside)[m.bool()]


axes[2].hist(block.sum(1).numpy(), bins=np.arange(0, 30) - 0.5, color="tab:purple", label="block")
axes[2].axvline(target, color="k", ls="--", label=f"target {target}")
axes[2].set_xlabel("hidden patches per mask")
axes[2].set_ylabel("masks (of 1000)")
axes[2].legend(fontsize=8)
share = {"block": visible_neighbours(block), "uniform": visible_neighbours(uniform)}
axes[3].hist([share["block"].numpy(), share["uniform"].numpy()], bins=np.linspace(0, 1, 6), label=list(share),
             color=["tab:purple", "tab:green"])
axes[3].set_xlabel("visible share of a hidden\npatch's 4 neighbours")
axes[3].set_ylabel("hidden patches")
axes[3].legend(fontsize=8)
fig.tight_layout()
plt.show()
print(f"minimum block on an 8 x 8 grid: {min_block_patches(64)} patches; block masks hide "
      f"{block.sum(1).float().mean():.1f} patches on average (at most {int(block.sum(1).max())}); "
      f"a hidden patch has {share['block'].mean():.2f} (block) vs {share['uniform'].mean():.2f} "
      f"(uniform) of its neighbours visible")

# %% [markdown]
# Dark patches are hidden. Almost every block mask reaches the target of 26 exactly; a few stop
# short, when no block of at least the minimum area fits the remainder in 10 attempts (the small
# bar left of the dashed line); none passes it. A hidden patch in a block has about a fifth of its
# neighbours visible, a uniformly hidden one about 60%.
#
# ## 2 · SplitMask's two halves
# SplitMask draws a 50% block mask and takes its complement: two disjoint halves A and B that
# together cover every patch. The encoder runs once on A's patches alone (no placeholders for
# B) and once on B's; a small decoder then predicts the tokens of the other half. In the paper's
# small-data variant each branch sees a uniformly drawn quarter and predicts the other 75%.

# %%
a, b = split_masks(torch.Generator().manual_seed(1), 4, GRID, "block")
qa, qb = split_masks(torch.Generator().manual_seed(1), 4, GRID, "uniform")
fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
overlay(axes[0], images[1], ~a[0], "branch A sees (dark: hidden from A)")
overlay(axes[1], images[1], ~b[0], "branch B sees (dark: hidden from B)")
overlay(axes[2], images[1], ~qa[0], "small-data variant: A sees 25%")
overlay(axes[3], images[1], ~qb[0], "small-data variant: B sees 25%")
fig.tight_layout()
plt.show()
print("block split: A and B disjoint:", not (a & b).any().item(), "| cover every patch:",
      (a | b).all().item(), "| A sees", a.sum(1).tolist(), "patches per image")
print("uniform split: A sees", qa.sum(1).tolist(), "and B", qb.sum(1).tolist(), "of 64; disjoint:",
      not (qa & qb).any().item())

# %% [markdown]
# ## 3 · Tokenizers: what the models predict
# The paper replaces BEiT's learned dVAE tokenizer by fixed codebooks of V unit vectors e_i: a
# patch x (normalised pixels, then L2-normalised) gets the token argmax_i x·e_i. Three codebooks:
# **random projection** (random Gaussian vectors, the paper's default), **random patches** (patches
# sampled from training images) and **k-means** centroids of training patches. The redrawn image
# replaces each patch by its codeword (scaled to the patch's norm): what survives is all the
# target tells the model about the image. The paper finds the three nearly equal after
# fine-tuning (75.2 / 75.3 / 75.0 on iNat-19).

# %%
kinds = ["random_projection", "random_patches", "kmeans"]
tokenizers = {k: build_tokenizer(k, VOCAB, 8, seed=0, dataset=shapes, n_images=256) for k in kinds}
fig, axes = plt.subplots(2, 4, figsize=(12, 6.2))
axes[0, 0].imshow(show(images[2]))
axes[0, 0].set_title("image", fontsize=9)
axes[1, 0].axis("off")
usage = {}
for col, (kind, tok) in enumerate(tokenizers.items(), start=1):
    axes[0, col].imshow(codebook_image(tok, n=64))
    axes[0, col].set_title(f"{kind}: 64 of {VOCAB} codewords", fontsize=9)
    axes[1, col].imshow(redraw(tok, images[2]))
    axes[1, col].set_title("image redrawn from its tokens", fontsize=9)
    ids = torch.cat([tok(images[i:i + 1]) for i in range(8)]).flatten()
    usage[kind] = len(ids.unique())
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()
print("distinct tokens among the 8 x 64 patches of 8 images:", usage)

# %% [markdown]
# Random projections are noise-like; the two data-driven codebooks look like patches of the
# data (flat colours, textured backgrounds and the shapes' edges). Redrawn from random-projection
# tokens the image keeps only a faint outline of the shape (each codeword is noise, only its
# choice carries information); the data-driven codebooks redraw a recognisable, blocky image, and
# on these images they use more distinct tokens (printed above). Yet the paper finds all three
# equally good targets: the target need not look like the image to be worth predicting.
#
# ## 4 · Both losses by hand, beside the package's
# The objectives, written again with plain torch ops on the networks' parameters (not the
# package's `vit_tokens`, `vit_visible_tokens`, `info_nce` or tokenizer code).
#
# **BEiT:** tokens of all patches; the hidden patches' embeddings replaced by the mask token
# *before* the position embedding; the encoder; a linear head over V at the hidden patches;
# cross-entropy averaged over the hidden patches. With $z_i \in \{1..V\}$ the token of patch
# $i$, $\mathcal{M}$ the hidden patches and $x^{\mathcal{M}}$ the image with those patches
# replaced by the mask token:
#
# $$\mathcal{L}_{\text{BEiT}} = -\frac{1}{|\mathcal{M}|} \sum_{i \in \mathcal{M}}
#   \log \operatorname{softmax}\big(W h_i(x^{\mathcal{M}}) + b\big)_{z_i}$$
#
# where $h_i$ is the encoder's output at patch $i$ and $W, b$ the linear head over V
# (`beit_by_hand` below, line by line).

# %%
torch.manual_seed(0)
beit, splitmask = (build_method(make_config("cpu-demo", dict(method=m, vocab_size=VOCAB))).eval()
                   for m in ("beit", "splitmask"))      # eval(): no drop path, both sides agree


def tokens_by_hand(codebook, x, p=8):
    b, c, h, w = x.shape
    patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
    return (F.normalize(patches, dim=-1) @ codebook.T).argmax(-1)           # [b, 64]


def encode_by_hand(vit, tokens):
    """CLS + position embedding + blocks + final norm over a [b, n, D] sequence of patch tokens
    whose position embeddings are already added."""
    x = torch.cat([vit.cls_token.expand(len(tokens), -1, -1) + vit.pos_embed[:, :1], tokens], 1)
    for blk in vit.blocks:
        x = blk(x)
    return vit.norm(x)


def beit_by_hand(model, x, mask):
    vit = model.backbone
    targets = tokens_by_hand(model.tokenizer.codebook, x)
    emb = vit.patch_embed(x).flatten(1, 2)                                    # [b, 64, D]
    emb = torch.where(mask.unsqueeze(-1), model.mask_token, emb) + vit.pos_embed[:, 1:]
    out = encode_by_hand(vit, emb)[:, 1:]
    logits = out[mask] @ model.head.weight.T + model.head.bias
    return F.cross_entropy(logits, targets[mask])


(mask,) = beit.draw_masks(torch.Generator().manual_seed(2), len(images))
with torch.no_grad():
    beit_package, _ = beit(images, mask)
    beit_hand = beit_by_hand(beit, images, mask)
print(f"BEiT loss: package {beit_package.item():.6f}, by hand {beit_hand.item():.6f} "
      f"(ln V = {np.log(VOCAB):.3f}: an untrained head is near chance)")

# %% [markdown]
# **SplitMask:** for branch A, the encoder gets only A's patch embeddings, each with its own
# position embedding (so the sequence is 1 + 32 tokens long); a decoder gets those 32 outputs at
# their positions and a mask token at B's 32 positions, adds its own position embedding, and
# predicts B's tokens. Then the same from B to A. The two branches' decoder outputs, averaged
# over positions, are matched by InfoNCE: image i's A-vector must pick image i's B-vector among
# the batch's B-vectors (cosine / 0.2), and vice versa. Loss = CE(A→B) + CE(B→A) + InfoNCE:
#
# $$\mathcal{L}_{\text{SplitMask}} = \underbrace{-\frac{1}{|B|}\sum_{i \in B} \log p_i(z_i \mid x_A)}_{\text{CE}(A \to B)}
#   \;\underbrace{-\frac{1}{|A|}\sum_{i \in A} \log p_i(z_i \mid x_B)}_{\text{CE}(B \to A)}
#   \;+\; \frac{1}{2n}\sum_{k=1}^{n} \Big[\ell(a_k, b) + \ell(b_k, a)\Big],
#   \qquad \ell(a_k, b) = -\log \frac{e^{\cos(a_k, b_k)/\tau}}{\sum_{j=1}^{n} e^{\cos(a_k, b_j)/\tau}}$$
#
# with $x_A$ the image's A half, $p_i$ the decoder's distribution over the V tokens at patch $i$,
# $a_k, b_k$ image $k$'s position-averaged decoder outputs of the two branches, $n$ the batch
# and $\tau = 0.2$ (`splitmask_by_hand` below).

# %%
def branch_by_hand(model, x, visible, targets):
    vit, b = model.backbone, len(x)
    emb = vit.patch_embed(x).flatten(1, 2) + vit.pos_embed[:, 1:]           # [b, 64, D]
    seen = emb[visible].view(b, -1, emb.shape[-1])                          # only the visible half
    encoded = encode_by_hand(vit, seen)[:, 1:]
    full = model.mask_token.expand(b, 64, -1).clone()
    full[visible] = encoded.reshape(-1, encoded.shape[-1])
    dec = full + model.decoder_pos
    for blk in model.decoder:
        dec = blk(dec)
    dec = model.decoder_norm(dec)
    logits = dec[~visible] @ model.head.weight.T + model.head.bias
    return F.cross_entropy(logits, targets[~visible]), dec.mean(1), seen.shape[1]


def splitmask_by_hand(model, x, va, vb, temperature=0.2):
    targets = tokens_by_hand(model.tokenizer.codebook, x)
    ce_a, pa, seq_a = branch_by_hand(model, x, va, targets)
    ce_b, pb, _ = branch_by_hand(model, x, vb, targets)
    pa, pb = F.normalize(pa, dim=-1), F.normalize(pb, dim=-1)
    sim = pa @ pb.T / temperature                                           # [b, b]
    labels = torch.arange(len(x))
    infonce = (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels)) / 2
    return ce_a + ce_b + infonce, ce_a, ce_b, infonce, seq_a


va, vb = splitmask.draw_masks(torch.Generator().manual_seed(3), len(images))
with torch.no_grad():
    split_package, split_stats = splitmask(images, va, vb)
    split_hand, ce_a, ce_b, nce_hand, seq_a = splitmask_by_hand(splitmask, images, va, vb)
    swapped, _ = splitmask(images, vb, va)                                 # the package, halves swapped
print(f"SplitMask loss: package {split_package.item():.6f}, by hand {split_hand.item():.6f} "
      f"= CE(A->B) {ce_a.item():.3f} + CE(B->A) {ce_b.item():.3f} + InfoNCE {nce_hand.item():.3f} "
      f"(ln {len(images)} = {np.log(len(images)):.3f})")
print(f"each branch's encoder is fed {seq_a} patch tokens per image by hand; the package with the halves "
      f"swapped gives {swapped.item():.6f}")

# %% [markdown]
# ## 5 · A short run of each method
# The same loop trains all three (`python -m dino_lite train --method dino|beit|splitmask`); the
# method supplies its networks and the loss of one step. `STEPS` steps of batch 32 on the
# embedded shapes, each method with its own published optimiser (DINO's for DINO, BEiT's for
# both masked models). BEiT's learning rate, set for 800 ImageNet epochs at batch 2048, barely
# moves a network in a few dozen steps, so these runs raise it to the CPU value used by the study
# below (`lr=1.5e-3` per 256 images). The runs are cached: a second execution reads them back.

# %%
runs = {}
for method in ["dino", "beit", "splitmask"]:
    extra = {} if method == "dino" else {"lr": 1.5e-3}
    # one epoch's schedule (156 steps of 32 of the 5000 images), a short warm-up, cut at STEPS
    run_cfg = make_config("cpu-demo", dict(method=method, minutes=None, max_steps=STEPS,
                                           batch_size=32, epochs=1, warmup_epochs=0.05, **extra))
    out = Path("..") / "runs" / "notebooks" / f"mim-{method}-{STEPS}steps"
    train(run_cfg, out, resume="auto", progress=False)
    runs[method] = [r for r in read_log(out) if "loss" in r]
fig, axes = plt.subplots(1, 3, figsize=(12, 3))
for ax, (method, log) in zip(axes, runs.items()):
    ax.plot([r["step"] for r in log], [r["loss"] for r in log], color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel(f"{method} loss")
    ax.set_title(method, fontsize=9)
    second = {"dino": ("kl", "KL(teacher || student)"), "beit": ("mim_accuracy", "masked-token accuracy")}
    if method in second:
        key, name = second[method]
        tw = ax.twinx()
        tw.plot([r["step"] for r in log], [r[key] for r in log], color="tab:orange", label=name)
        tw.set_ylabel(name)
        tw.legend(fontsize=7, loc="lower left")
    ax.legend(fontsize=7, loc="upper right")
fig.tight_layout()
plt.show()
for method, log in runs.items():
    print(f"{method:10s} loss {log[0]['loss']:.3f} -> {log[-1]['loss']:.3f} over {len(log)} steps")
print(f"DINO: teacher entropy {runs['dino'][0]['teacher_entropy']:.3f} -> "
      f"{runs['dino'][-1]['teacher_entropy']:.3f}, KL {runs['dino'][0]['kl']:.3f} -> {runs['dino'][-1]['kl']:.3f}")

# %% [markdown]
# The three losses are on different scales (DINO's cross-entropy between teacher and student
# distributions over K prototypes; BEiT's over V = 8192 tokens, starting near ln 8192 = 9.0;
# SplitMask's two such terms plus InfoNCE): compare each curve with its own start, not with the
# others. The masked models' losses fall from the start. DINO's does not, in 20 steps: its
# cross-entropy is the teacher's entropy plus KL(teacher ‖ student), and only the KL is the
# student's to lower. The KL falls steadily (orange), while the teacher's entropy, which the
# student cannot change and which the EMA teacher inherits slowly, rises a little, so their sum
# stays near ln K = 8.3. Falling losses say each objective is being optimised, not how good the
# features are; that is what the study measures.
#
# ## 6 · The small-data study (read from its result file, not re-run here)
# `python -m dino_lite smalldata` pre-trains each method on fractions of `tinyimagenet-dev20`
# (20 classes of Tiny-ImageNet, 64 px photos) for the *same number of steps*, fine-tunes every
# encoder on all the labelled training images with one recipe (random resized crops, label
# smoothing, AdamW with warm-up and cosine decay, drop path; layer-wise lr decay is an option,
# off by default since part 6's finding below), fine-tunes a randomly initialised encoder the
# same way as the baseline, and writes everything to `smalldata.json`. Parts 6-13 read the
# study's result files in the order they were measured, from this first run (2,000 steps,
# fine-tuned then with layer decay 0.75) to the chosen length; each is in `docs/results/` with
# its command, commit and CPU in `docs/masked-image-modelling.md`.
#
# **Which DINO.** The DINO cells of parts 6-13 use the `tinyimagenet` preset's recipe: DINO's
# loss *plus* two later additions that made it learn more on these photos in 10-minute runs,
# DINOv2's KoLeo regulariser (weight 0.1) and iBOT's masked patch prediction (weight 1: the
# student sees some patches masked and matches the teacher's output for them). The paper's DINO
# has neither, and iBOT's term is itself a masked-prediction objective, the family the paper
# finds robust to small data. So "DINO" in parts 6-13 is DINO with iBOT's and KoLeo's terms, and
# their comparison with BEiT and SplitMask is not the paper's pure one. Part 14 trains the
# paper's DINO at the study's length, which is now the command's default (`smalldata.DINO_SETS`).

# %%
import json

STUDY = Path("..") / "docs" / "results" / "smalldata-dino2000-avx2.json"
study = json.loads(STUDY.read_text())
cells = {(c["method"], c["fraction"]): c for c in study["cells"]}
base = study["random_init"]
recipe = study["finetune"]
# the same DINO encoder fine-tuned once more with every layer at the full lr (no layer decay):
# `python -m dino_lite finetune --checkpoint ... --epochs 6 --layer-decay 1.0 --json`
no_decay = json.loads((STUDY.parent / "finetune-dino2000-layerdecay1-avx2.json").read_text())
print(f"{study['steps']} pre-training steps per cell, {study['precision']}; fine-tuning "
      f"{recipe['epochs']} epochs of batch {recipe['batch_size']}, lr {recipe['lr']:g} per 256, "
      f"seeds {recipe['seeds']}; {study['convergence_rule']}")
for (method, fraction), c in cells.items():
    print(f"{method:9s} on {fraction:4.0%}: fine-tune {100 * c['finetune_top1']:.1f} +- "
          f"{100 * c['finetune_se']:.1f}, {c['over_random_init']:+.1f} +- {c['over_random_init_se']:.1f} "
          f"over random init; frozen: k-NN {100 * c['knn_top1']:.1f}, linear {100 * c['linear_top1']:.1f}; "
          f"converged: {c['converged']}")
print(f"random init: fine-tune {100 * base['finetune_top1']:.1f} +- {100 * base['finetune_se']:.1f}; "
      f"frozen: k-NN {100 * base['knn_top1']:.1f}, linear {100 * base['linear_top1']:.1f}; "
      f"converged: {base['converged']}")
print("drops from 100% to 10%:", study["drops"] or "none measured (every method needs both fractions)")
print("verdict:", study["verdict"] or "none yet (it compares DINO's drop with SplitMask's)")
print(f"DINO on 100% fine-tuned without layer decay: {100 * no_decay['finetune_top1']:.1f} "
      f"({100 * (no_decay['finetune_top1'] - base['finetune_top1']):+.1f} over random init)")

curves = {f"{r['method']} on {r['fraction']:.0%}, seed {r['seed']}": r["curves"] for r in study["runs"]}
curves["random init"] = base["curves"]
curves["dino on 100%, no layer decay"] = [[c["top1"] for c in no_decay["curve"]]]
fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [3, 2]})
for i, (label, runs_) in enumerate(curves.items()):
    for run in runs_:
        ax.plot(range(1, len(run) + 1), [100 * v for v in run], marker="o", ms=3, color=f"C{i}",
                label=label)
for i, c in enumerate(list(cells.values()) + [base]):
    ax.axhline(100 * c["linear_top1"], color=f"C{i}", ls=":", lw=1)
ax.plot([], [], color="gray", ls=":", label="frozen linear probe (same colour: same encoder)")
ax.set_xlabel("fine-tuning epoch")
ax.set_ylabel("held-out top-1 (%)")
ax.set_title("fine-tuning curves", fontsize=9)
ax.grid(alpha=0.3)
ax.legend(fontsize=7)
names = [f"{m}\n{f:.0%}" for m, f in cells]
gain = [c["over_random_init"] for c in cells.values()]
err = [1.96 * c["over_random_init_se"] for c in cells.values()]
bx.bar(range(len(gain)), gain, yerr=err, capsize=4, color="tab:blue")
bx.axhline(0, color="k", lw=0.8)
bx.set_xticks(range(len(gain)), names)
bx.set_ylabel("fine-tune top-1 over random init\n(points, bars: 95% interval)")
bx.set_title("what pre-training adds after fine-tuning", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# **What the study shows so far.** Read the printout and the two panels. DINO pre-trained for
# 2,000 steps learned something the labels can use: frozen, its features beat random init's by a
# wide margin in k-NN and in the linear probe, and after the first fine-tuning epoch it is
# clearly ahead (the left panel's first points). But its lead shrinks with every epoch, and
# after the last one the two are level: the right panel's 95% interval contains zero. Neither
# curve has flattened (both marked not converged), and DINO's ends below its own frozen linear
# probe (the dotted line of its colour): six epochs do not let fine-tuning run its course. So
# this run does **not** show pre-training beating random init after fine-tuning, the premise of
# both papers; and with no 10% cells it cannot answer the small-data question yet (no drops, no
# verdict).
#
# **How it is fine-tuned matters as much.** The study's recipe gives a pre-trained encoder's
# lower blocks a smaller learning rate (layer-wise decay 0.75, BEiT's choice for 12-block ViTs
# fine-tuned for 100 epochs); random init learns every layer alike. Fine-tuned once more with no
# decay (the green curve), the same DINO encoder stays ahead of random init at every epoch and
# ends a few points above it, but one run of each on 1,000 images leaves that final gap inside
# two standard errors: a lead to confirm with seeds and longer fine-tuning, not yet a result
# (the longer fine-tuning below does not confirm it).
# The check at the end asserts each of these statements against the stored results, so new
# result files that contradict them fail it.
#
# The paper's small-data effect, for reference, on its own axis (its absolute numbers are
# iNaturalist-2019 fine-tuning after ImageNet pre-training, not comparable with ours):

# %%
paper = {"dino": {"0.1": 73.1, "1": 78.4}, "beit": {"0.1": 74.5, "1": 75.2},
         "splitmask": {"0.1": 75.4, "1": 75.4}}
paper_drop = {m: paper[m]["1"] - paper[m]["0.1"] for m in paper}
fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3), sharey=False)
ax.bar(range(3), list(paper_drop.values()), color="tab:gray")
ax.set_xticks(range(3), list(paper_drop))
ax.set_ylabel("top-1 lost from 100% to 10%\n(points, iNat-19, paper)")
ax.set_title("paper (pre-trained on ImageNet, fine-tuned on iNat-19)", fontsize=9)
ours = study["drops"]
bx.bar(range(len(ours)), [d["drop"] for d in ours.values()],
       yerr=[1.96 * d["se"] for d in ours.values()], capsize=4, color="tab:blue")
bx.set_xticks(range(len(ours)), list(ours))
bx.set_ylabel("top-1 lost from 100% to 10%\n(points, here, bars: 95% interval)")
bx.set_title("here" if ours else f"here, {study['steps']:,} steps: no 10% cells", fontsize=9)
bx.axhline(0, color="k", lw=0.8)
if not ours:
    bx.text(0.5, 0.6, "no 10% cells in this run:\nparts 8 and 10 add them\nat 8,000 steps",
            ha="center", transform=bx.transAxes, fontsize=9)
fig.tight_layout()
plt.show()
print("paper's drops (points):", {m: round(d, 1) for m, d in paper_drop.items()})

# %% [markdown]
# **Fine-tuned for longer.** Six epochs left both curves rising, so random init and the same DINO
# encoder (without layer decay) were fine-tuned again for 15 epochs, the recipe otherwise
# unchanged (`python -m dino_lite finetune --preset tinyimagenet --random-init --epochs 15 --json`
# and `finetune --checkpoint ... --epochs 15 --layer-decay 1.0 --json`; commit, CPU and times in
# `docs/masked-image-modelling.md`). The warm-up and cosine decay are laid out over all 15
# epochs, so these are new runs, not the 6-epoch ones continued. The solid lines are the
# 15-epoch runs, the dashed ones the 6-epoch runs above.

# %%
long = {name: json.loads((STUDY.parent / f"finetune-{name}-15ep-avx2.json").read_text())
        for name in ("random-init", "dino2000-layerdecay1")}
long_base, long_dino = long["random-init"], long["dino2000-layerdecay1"]


def binomial_gap(a, b, n=base["test_images"]):
    """a - b in points, and its standard error from the two top-1s' binomial errors."""
    return 100 * (a - b), 100 * np.hypot(np.sqrt(a * (1 - a) / n), np.sqrt(b * (1 - b) / n))


fig, ax = plt.subplots(figsize=(7.5, 3.6))
for label, run, short, colour in [("random init", long_base, base["curves"][0], "tab:orange"),
                                  ("DINO 2,000 steps, no layer decay", long_dino,
                                   [c["top1"] for c in no_decay["curve"]], "tab:green")]:
    ax.plot([c["epoch"] for c in run["curve"]], [100 * c["top1"] for c in run["curve"]],
            marker="o", ms=3, color=colour, label=f"{label}, 15 epochs")
    ax.plot(range(1, len(short) + 1), [100 * v for v in short], ls="--", color=colour, alpha=0.6,
            label=f"{label}, 6 epochs")
ax.set_xlabel("fine-tuning epoch")
ax.set_ylabel("held-out top-1 (%)")
ax.set_title("fine-tuning for 6 and for 15 epochs (1,000 held-out images)", fontsize=9)
ax.grid(alpha=0.3)
ax.legend(fontsize=7)
fig.tight_layout()
plt.show()
long_gap, long_se = binomial_gap(long_dino["finetune_top1"], long_base["finetune_top1"])
short_gap, _ = binomial_gap(no_decay["finetune_top1"], base["finetune_top1"])
lead = [100 * (a["top1"] - b["top1"]) for a, b in zip(long_dino["curve"], long_base["curve"])]
where = ("clearly above it (beyond two standard errors)" if long_gap > 2 * long_se else
         "clearly below it" if long_gap < -2 * long_se else "level with it (within two standard errors)")
ahead = sum(x > 0 for x in lead)
display(Markdown(
    f"After 15 epochs random init reaches **{100 * long_base['finetune_top1']:.1f}%** "
    f"({100 * (long_base['finetune_top1'] - base['finetune_top1']):+.1f} points over its 6-epoch run; "
    f"{'converged' if long_base['converged'] else 'not converged'} by the command's rule) and the "
    f"DINO encoder **{100 * long_dino['finetune_top1']:.1f}%** "
    f"({'converged' if long_dino['converged'] else 'not converged'}): DINO is "
    f"**{long_gap:+.1f} +- {long_se:.1f} points** over random init, {where}, against "
    f"{short_gap:+.1f} after 6 epochs. DINO is ahead after {ahead} of the 15 epochs (its lead per "
    f"epoch: {', '.join(f'{x:+.1f}' for x in lead)}). Read the rule's verdict with care: the "
    f"learning rate decays to almost zero over the last epochs, so any run flattens at its end; "
    f"whether random init would gain more from 30 epochs is what a longer run tells (below)."))

# %% [markdown]
# **Pre-training for longer.** Item 2 of the study's protocol: pre-train DINO for longer and find
# the shortest length at which it fine-tunes clearly above random init. A second DINO encoder
# was pre-trained for 4,000 steps (the same recipe and seed; the schedules are laid out over the
# whole run, so it is a new run, not the 2,000-step one continued) and fine-tuned for 15 epochs
# without layer decay, like the green curve above (`python -m dino_lite smalldata --methods dino
# --fractions 1 --steps 4000 --finetune-epochs 15 --finetune-layer-decay 1.0 --no-baseline`;
# commit, CPU and times in `docs/masked-image-modelling.md`). Left: the three scores against
# pre-training length (0 steps is random init); right: the 15-epoch fine-tuning curves.

# %%
longer = json.loads((STUDY.parent / "smalldata-dino4000-avx2.json").read_text())
assert longer["finetune"]["epochs"] == 15 and longer["finetune"]["layer_decay"] == 1.0, longer["finetune"]
dino2000 = cells[("dino", 1.0)]
length = {0: dict(knn_top1=base["knn_top1"], linear_top1=base["linear_top1"],
                  finetune_top1=long_base["finetune_top1"], curve=[c["top1"] for c in long_base["curve"]]),
          study["steps"]: dict(knn_top1=dino2000["knn_top1"], linear_top1=dino2000["linear_top1"],
                               finetune_top1=long_dino["finetune_top1"],
                               curve=[c["top1"] for c in long_dino["curve"]]),
          longer["steps"]: dict(knn_top1=longer["cells"][0]["knn_top1"],
                                linear_top1=longer["cells"][0]["linear_top1"],
                                finetune_top1=longer["cells"][0]["finetune_top1"],
                                curve=longer["runs"][0]["curves"][0])}
steps_axis = sorted(length)
n_test = base["test_images"]
fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 3.8))
for key, label, colour in [("finetune_top1", "fine-tuned 15 epochs", "tab:green"),
                           ("linear_top1", "frozen: linear probe", "tab:blue"),
                           ("knn_top1", "frozen: k-NN (k = 20)", "tab:purple")]:
    top1 = np.array([length[s][key] for s in steps_axis])
    ax.errorbar(steps_axis, 100 * top1, yerr=200 * np.sqrt(top1 * (1 - top1) / n_test), marker="o",
                capsize=3, color=colour, label=label)
ax.set_xlabel("DINO pre-training steps (0: random init; batch 32)")
ax.set_ylabel("held-out top-1 (%)")
ax.set_xticks(steps_axis)
ax.set_title("scores against pre-training length (bars: 2 binomial SE)", fontsize=9)
ax.grid(alpha=0.3)
ax.legend(fontsize=7)
for (s, run), colour in zip(length.items(), ["tab:orange", "tab:green", "tab:red"]):
    name = "random init" if s == 0 else f"DINO {s:,} steps"
    bx.plot(range(1, len(run["curve"]) + 1), [100 * v for v in run["curve"]], marker="o", ms=3,
            color=colour, label=name)
bx.set_xlabel("fine-tuning epoch")
bx.set_ylabel("held-out top-1 (%)")
bx.set_title("15-epoch fine-tuning curves, no layer decay for DINO", fontsize=9)
bx.grid(alpha=0.3)
bx.legend(fontsize=7)
fig.tight_layout()
plt.show()
length_gap = {s: binomial_gap(length[s]["finetune_top1"], long_base["finetune_top1"]) for s in steps_axis[1:]}
display(Markdown(
    "Fine-tuned for 15 epochs (seed 0), over random init's " f"{100 * long_base['finetune_top1']:.1f}%: " +
    "; ".join(f"{s:,} steps **{g:+.1f} +- {e:.1f}** points" for s, (g, e) in length_gap.items()) +
    " (unpaired standard errors). Frozen, the linear probe reads " +
    ", ".join(f"{100 * length[s]['linear_top1']:.1f}%" for s in steps_axis) +
    " and k-NN " + ", ".join(f"{100 * length[s]['knn_top1']:.1f}%" for s in steps_axis) +
    f" at {', '.join(f'{s:,}' for s in steps_axis)} steps."))

# %% [markdown]
# **A sharper test: pairing over the held-out images.** The error bars above treat the two
# top-1s as independent, each with the binomial error of 1,000 images (about 1.6 points). But
# both networks are scored on the *same* 1,000 images, and they tend to fail on the same hard
# ones. Comparing them image by image removes that shared part: for image $i$ let $d_i$ be
# DINO's hit minus random init's (each a 0/1 hit, averaged over the fine-tuning seeds); the gap
# is $\bar d$ and its standard error $\mathrm{sd}(d)/\sqrt{1000}$, and the seeds' own spread
# (how much another fine-tuning seed moves each top-1) is added in quadrature. The image part is
# the package's `smalldata.paired_gap`; `smalldata` adds the seeds' spread the same way when it
# compares a cell with random init. The 4,000-step encoder and random init were each
# fine-tuned again with their hits kept, with fine-tuning seeds 0 and 1
# (`python -m dino_lite finetune ... --epochs 15 --layer-decay 1.0 --seed S --json`; the file is
# `docs/results/finetune-15ep-hits-avx2.json`).

# %%
from dino_lite.smalldata import paired_gap

hits = json.loads((STUDY.parent / "finetune-15ep-hits-avx2.json").read_text())
tuned = {enc: [r for r in hits["runs"] if r["encoder"] == enc] for enc in ("dino-4000", "random-init")}
assert all(r["epochs"] == 15 and len(r["correct"]) == n_test for runs in tuned.values() for r in runs)
top1s = {enc: [100 * r["finetune_top1"] for r in runs] for enc, runs in tuned.items()}
seed_se = {enc: np.std(t, ddof=1) / np.sqrt(len(t)) for enc, t in top1s.items()}
g_pair, e_images = paired_gap([r["correct"] for r in tuned["dino-4000"]],
                              [r["correct"] for r in tuned["random-init"]])
e_pair = float(np.hypot(e_images, np.hypot(*seed_se.values())))
e_unpaired = float(np.hypot(*[np.sqrt(np.mean(t) * (100 - np.mean(t)) / n_test) for t in top1s.values()]))
d_seed0 = np.subtract(tuned["dino-4000"][0]["correct"], tuned["random-init"][0]["correct"])

fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [3, 2]})
for i, (enc, t) in enumerate(top1s.items()):
    ax.scatter([i] * len(t), t, color=["tab:red", "tab:orange"][i], zorder=3,
               label=f"{enc}: seeds {', '.join(f'{x:.1f}' for x in t)}")
    ax.errorbar(i + 0.15, np.mean(t), yerr=2 * np.sqrt(np.mean(t) * (100 - np.mean(t)) / n_test),
                fmt="_", markersize=18, mew=2, color="k", capsize=4)
ax.set_xticks([0, 1], ["DINO 4,000 steps", "random init"])
ax.set_xlim(-0.5, 1.5)
ax.set_ylabel("held-out top-1 after 15 epochs (%)")
ax.set_title("two fine-tuning seeds each (black: mean, 2 binomial SE)", fontsize=9)
ax.legend(fontsize=7, loc="lower center")
ax.grid(alpha=0.3)
bx.barh([1, 0], [g_pair, g_pair], xerr=[2 * e_unpaired, 2 * e_pair], capsize=5,
        color=["tab:gray", "tab:green"])
bx.axvline(0, color="k", lw=0.8)
bx.set_yticks([1, 0], ["unpaired\n(binomial)", "paired over the\n1,000 images\n(+ seeds' spread)"])
bx.set_xlabel("DINO 4,000 minus random init (points; bars: 2 SE)")
bx.set_title("the same gap, two standard errors", fontsize=9)
fig.tight_layout()
plt.show()
both = np.logical_and(tuned["dino-4000"][0]["correct"], tuned["random-init"][0]["correct"])
print(f"seed 0, image by image: both right {int(both.sum())}, only DINO right {int((d_seed0 > 0).sum())}, "
      f"only random init right {int((d_seed0 < 0).sum())} (the gap lives in the last two numbers)")

clear_at = {4000: g_pair > 2 * e_pair, 2000: length_gap[2000][0] > 2 * length_gap[2000][1]}
clear = sorted(s for s, ok in clear_at.items() if ok)
display(Markdown(
    f"Averaged over the two fine-tuning seeds, DINO pre-trained 4,000 steps fine-tunes to "
    f"{np.mean(top1s['dino-4000']):.1f}% and random init to {np.mean(top1s['random-init']):.1f}%: "
    f"**{g_pair:+.1f} +- {e_pair:.1f} points** paired ({g_pair / e_pair:.1f} standard errors; "
    f"unpaired the same gap is +- {e_unpaired:.1f}). " +
    (f"So, both fine-tuned for 15 epochs, the shortest length measured at which DINO fine-tunes "
     f"clearly above random init (beyond two standard errors) is **{min(clear):,} steps**." if clear else
     "So no length measured yet makes DINO fine-tune clearly above random init at 15 epochs each "
     "(beyond two standard errors).")))

# %% [markdown]
# **But is 15 epochs random init's plateau?** The study compares against *converged* random
# init. All the 15-epoch curves pass the command's rule, but the learning rate decays to almost
# zero over the last epochs, so every run flattens at its end whether or not more epochs would
# help. The direct test: fine-tune random init for 30 epochs (same recipe, seed 0, the schedule
# laid out over 30 epochs; `python -m dino_lite finetune --preset tinyimagenet --random-init
# --epochs 30 --json`, `docs/results/finetune-random-init-30ep-avx2.json`) and compare it, image
# by image, with its 15-epoch run.

# %%
long30 = json.loads((STUDY.parent / "finetune-random-init-30ep-avx2.json").read_text())
assert long30["epochs"] == 30 and long30["seed"] == 0 and len(long30["correct"]) == n_test
g30, e30 = paired_gap([long30["correct"]], [tuned["random-init"][0]["correct"]])
fig, ax = plt.subplots(figsize=(7.5, 3.6))
for label, curve, colour in [("random init, 30 epochs", [c["top1"] for c in long30["curve"]], "tab:brown"),
                             ("random init, 15 epochs", [c["top1"] for c in tuned["random-init"][0]["curve"]], "tab:orange"),
                             ("DINO 4,000 steps, 15 epochs", [c["top1"] for c in tuned["dino-4000"][0]["curve"]], "tab:red")]:
    ax.plot(range(1, len(curve) + 1), [100 * v for v in curve], marker="o", ms=3, color=colour, label=label)
ax.set_xlabel("fine-tuning epoch")
ax.set_ylabel("held-out top-1 (%)")
ax.set_title("fine-tuning seed 0; each schedule decays to zero at its own last epoch", fontsize=9)
ax.grid(alpha=0.3)
ax.legend(fontsize=7)
fig.tight_layout()
plt.show()
dino15 = np.mean(top1s["dino-4000"])
display(Markdown(
    f"Fine-tuned for 30 epochs, random init reaches **{100 * long30['finetune_top1']:.1f}%**, "
    f"{g30:+.1f} +- {e30:.1f} points over its own 15-epoch run (paired), which is "
    f"**{'beyond' if abs(g30) > 2 * e30 else 'within'} two standard errors**: 15 epochs "
    f"{'is not' if g30 > 2 * e30 else 'is'} its plateau. DINO's 15-epoch mean, {dino15:.1f}%, is "
    f"{'below' if dino15 < 100 * long30['finetune_top1'] else 'above'} it. " +
    ("So the gap above holds at an equal 15-epoch budget, not against converged random init: the "
     "fair test fine-tunes DINO for 30 epochs too, and the study's default length waits for it."
     if g30 > 2 * e30 else "So the 15-epoch comparison above is against converged random init.")))

# %% [markdown]
# **The fair test: 30 epochs each.** So DINO is fine-tuned for 30 epochs too, beside random init
# fine-tuned the same way, both with fine-tuning seeds 0 and 1, by the study's own command:
#
#     python -m dino_lite smalldata --preset tinyimagenet --methods dino --fractions 1 --steps 4000 \
#         --finetune-epochs 30 --finetune-seeds 0,1 --finetune-layer-decay 1.0 --json
#
# This one ran on a 2-core **AVX-512 BF16** CPU, so in bf16 with the preset's own 64/32 px
# pre-training crops (the AVX2 runs above use the fp32 variant's 48/24 px): a new 4,000-step
# encoder, not the one above, and numbers to compare within this file only. The command's
# `smalldata.json` is `docs/results/smalldata-dino4000-30ep-bf16.json`; the gap is the package's
# own (`over_random_init`: paired over the images, the seeds' spread in quadrature).

# %%
from dino_lite.finetune import converged

fair = json.loads((STUDY.parent / "smalldata-dino4000-30ep-bf16.json").read_text())
assert fair["finetune"]["epochs"] == 30 and fair["finetune"]["seeds"] == [0, 1], fair["finetune"]
assert fair["precision"] == "bf16" and fair["steps"] == 4000
fair_cell = next(c for c in fair["cells"] if (c["method"], c["fraction"]) == ("dino", 1.0))
fair_run = next(r for r in fair["runs"] if (r["method"], r["fraction"], r["seed"]) == ("dino", 1.0, 0))
fair_base = fair["random_init"]
g_fair, e_fair = fair_cell["over_random_init"], fair_cell["over_random_init_se"]
assert fair_cell["paired"], "the result file kept no per-image hits"
fair_seed_gaps = [paired_gap([a], [b]) for a, b in zip(fair_run["finetune_correct"], fair_base["finetune_correct"])]


def curve_panel(ax, rows, title, legend_size=7):
    """Held-out top-1 against fine-tuning epoch for (name, curves, colour) rows: one line per
    fine-tuning seed (solid seed 0, dashed seed 1), each labelled with its final top-1."""
    for name, curves, colour in rows:
        for seed, (curve, style) in enumerate(zip(curves, ["-", "--"])):
            ax.plot(range(1, len(curve) + 1), [100 * v for v in curve], style, color=colour,
                    label=f"{name}, fine-tuning seed {seed}: {100 * curve[-1]:.1f}%")
    ax.set_xlabel("fine-tuning epoch")
    ax.set_ylabel("held-out top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size, loc="lower right")


def gap_bars(ax, rows, colours, xlabel):
    """Horizontal bars of (label, gap, SE) rows, top to bottom, with 2-SE whiskers, zero and
    the issue's 3-point bar."""
    ax.barh(range(len(rows)), [g for _, g, _ in rows], xerr=[2 * e for _, _, e in rows], capsize=5,
            color=colours)
    ax.axvline(0, color="k", lw=0.8)
    ax.axvline(3, color="tab:purple", ls=":", label="the issue's 3-point bar")
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=7, loc="lower right")


fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 3.6), gridspec_kw={"width_ratios": [3, 2]})
curve_panel(ax, [(f"DINO {fair['steps']:,} steps", fair_run["curves"], "tab:red"),
                 ("random init", fair_base["curves"], "tab:orange")],
            f"30-epoch fine-tuning, {fair['precision']} (1,000 held-out images)")

fair_rows = [(f"seed {s}", g, e) for s, (g, e) in enumerate(fair_seed_gaps)] + [("both seeds", g_fair, e_fair)]
gap_bars(bx, fair_rows, ["tab:gray"] * (len(fair_rows) - 1) + ["tab:green"],
         "DINO minus random init (points, paired; bars: 2 SE)")
fig.tight_layout()
plt.show()
fair_clear = g_fair > 2 * e_fair
display(Markdown(
    f"Fine-tuned for 30 epochs, DINO pre-trained {fair['steps']:,} steps reaches "
    f"**{100 * fair_cell['finetune_top1']:.1f}%** (seeds "
    f"{', '.join(f'{100 * t:.1f}' for t in fair_cell['finetune_top1_seeds'])}) and random init "
    f"**{100 * fair_base['finetune_top1']:.1f}%** (seeds "
    f"{', '.join(f'{100 * t:.1f}' for t in fair_base['finetune_top1_seeds'])}). Converged by the "
    f"command's rule, seed by seed: DINO {', '.join('yes' if converged(c) else 'no' for c in fair_run['curves'])}, "
    f"random init {', '.join('yes' if converged(c) else 'no' for c in fair_base['curves'])}" +
    ("" if fair_cell["converged"] and fair_base["converged"] else
     " (a 'no': its last 6 epochs still raised the best top-1 by a point or more, so the curve "
     "is still rising and longer fine-tuning may add more)") +
    f". The gap is **{g_fair:+.1f} +- {e_fair:.1f} points** ({g_fair / e_fair:.1f} "
    f"standard errors): **{'beyond' if fair_clear else 'within'} two standard errors**, and "
    f"{'above' if g_fair >= 3 else 'below'} the issue's 3-point bar. Per fine-tuning seed: " +
    ", ".join(f"{g:+.1f} +- {e:.1f}" for g, e in fair_seed_gaps) + "."))

# %% [markdown]
# **Pre-training twice as long: 8,000 steps.** At an equal 30 epochs, DINO's 4,000-step lead
# is too small to call. So the same cell was pre-trained for 8,000 steps (25.6
# passes over the 10,000 images; the schedules laid out over the whole run), with **two
# pre-training seeds**, each encoder fine-tuned with seeds 0 and 1 exactly like the fair test
# above, on the same bf16 CPU:
#
#     python -m dino_lite smalldata --preset tinyimagenet --methods dino --fractions 1 --steps 8000 \
#         --seeds 0,1 --finetune-epochs 30 --finetune-seeds 0,1 --finetune-layer-decay 1.0 \
#         --no-baseline --json
#
# (`--no-baseline`: random init does not depend on the pre-training length, so the random init
# of the fair test is the baseline; `smalldata.over_random_init` pairs them over the images and
# adds both seeds' spreads.) Left: the three scores against pre-training length, all fine-tuned
# 30 epochs (0 steps is random init); right: the gap over random init per pre-training seed and
# for the cell.

# %%
from dino_lite.smalldata import over_random_init


def at_fair_protocol(name, steps, seeds):
    """A study result file, checked to share the fair test's fine-tuning recipe and precision
    (so its cells compare with ``fair_base``), with the pre-training ``steps`` and ``seeds`` the
    text says."""
    result = json.loads((STUDY.parent / name).read_text())
    assert result["finetune"] == fair["finetune"] and result["precision"] == fair["precision"], name
    assert result["steps"] == steps and result["seeds"] == seeds, (name, result["steps"], result["seeds"])
    return result


twice = at_fair_protocol("smalldata-dino8000-30ep-bf16.json", 8000, [0, 1])
twice_cell = next(c for c in twice["cells"] if (c["method"], c["fraction"]) == ("dino", 1.0))
twice_gap = over_random_init(twice_cell, twice["runs"], fair_base)
g_twice, e_twice = twice_gap["over_random_init"], twice_gap["over_random_init_se"]
assert twice_gap["paired"], "the result file kept no per-image hits"
twice_seed_gaps = [paired_gap(r["finetune_correct"], fair_base["finetune_correct"]) for r in twice["runs"]]
by_length = {0: fair_base, fair["steps"]: fair_cell, twice["steps"]: twice_cell}

fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [3, 2]})
lengths = sorted(by_length)
for key, label, colour in [("finetune_top1", "fine-tuned 30 epochs (bars: 2 SE, seeds and images)", "tab:green"),
                           ("linear_top1", "frozen: linear probe (bars: 2 binomial SE)", "tab:blue"),
                           ("knn_top1", "frozen: k-NN, k = 20 (bars: 2 binomial SE)", "tab:purple")]:
    top1 = np.array([by_length[s][key] for s in lengths])
    se = (np.array([by_length[s]["finetune_se"] for s in lengths]) if key == "finetune_top1"
          else np.sqrt(top1 * (1 - top1) / n_test))
    ax.errorbar(lengths, 100 * top1, yerr=200 * se, marker="o", capsize=3, color=colour, label=label)
ax.set_xticks(lengths)
ax.set_xlabel(f"DINO pre-training steps (0: random init; batch 32; {twice['precision']})")
ax.set_ylabel("held-out top-1 (%)")
ax.set_title("scores against pre-training length, fine-tuning 30 epochs", fontsize=9)
ax.grid(alpha=0.3)
ax.legend(fontsize=7)
twice_rows = ([(f"4,000 steps, cell", g_fair, e_fair)] +
              [(f"8,000 steps, pre-training seed {r['seed']}", g, e) for r, (g, e) in zip(twice["runs"], twice_seed_gaps)] +
              [("8,000 steps, cell", g_twice, e_twice)])
gap_bars(bx, twice_rows, ["tab:gray"] + ["tab:olive"] * len(twice_seed_gaps) + ["tab:green"],
         "DINO minus random init, 30 epochs each\n(points, paired; bars: 2 SE)")
fig.tight_layout()
plt.show()
twice_clear = g_twice > 2 * e_twice
shortest = min([s for s, ok in ((fair["steps"], fair_clear), (twice["steps"], twice_clear)) if ok], default=None)
display(Markdown(
    f"Pre-trained {twice['steps']:,} steps, DINO fine-tunes to **{100 * twice_cell['finetune_top1']:.1f}%** "
    f"(pre-training seeds " + ", ".join(f"{r['seed']}: {100 * r['finetune_top1']:.1f}" for r in twice["runs"]) +
    f", each the mean of fine-tuning seeds 0 and 1; converged by the rule: "
    f"{'every curve' if twice_cell['converged'] else 'not every curve'}), against random init's "
    f"{100 * fair_base['finetune_top1']:.1f}%: **{g_twice:+.1f} +- {e_twice:.1f} points** "
    f"({g_twice / e_twice:.1f} standard errors; per pre-training seed " +
    ", ".join(f"{g:+.1f} +- {e:.1f}" for g, e in twice_seed_gaps) + "), "
    f"**{'beyond' if twice_clear else 'within'} two standard errors** and "
    f"{'above' if g_twice >= 3 else 'below'} the 3-point bar. Frozen, doubling the length adds "
    f"{100 * (twice_cell['knn_top1'] - fair_cell['knn_top1']):+.1f} points of k-NN and "
    f"{100 * (twice_cell['linear_top1'] - fair_cell['linear_top1']):+.1f} of linear probe. " +
    (f"So the shortest length measured at which DINO fine-tunes clearly above random init, both "
     f"fine-tuned 30 epochs, is **{shortest:,} steps**." if shortest else
     "So no length measured yet makes DINO fine-tune clearly above random init at 30 epochs each.")))

# %% [markdown]
# ## 7 · Where the study's DINO encoders look on real photos
# Both DINO encoders (2,000 and 4,000 steps) and a random init, their last block's CLS attention
# on the 600 `pets-mini` photos (64 px, the pet covers ~41% of an image), scored like notebook
# 06: the Jaccard of the patches holding 60% of the attention against the pet's trimap, for the
# head-mean map and for the best head per image; and beside it a **centre prior of the same
# area**, the patches nearest the image centre, as many as the head-mean mask holds (what "look
# at the middle" scores with the map's own area). Scored by
# `python -m dino_lite attention --checkpoint ... --images pets-mini/images --masks pets-mini/trimaps --mask-format trimap --json`;
# the results are in `docs/results/`. Error bars: two standard errors of the paired per-image
# differences, the honest noise for comparing two maps on the same images. The best head is a
# comparison that flatters the network: it picks the best of several heads after seeing the
# answer.

# %%
pets = {name: json.loads((STUDY.parent / f"pets-attention-{name}-avx2.json").read_text())
        for name in ("dino2000", "dino4000", "random-init")}


def paired(a, b):
    """Mean and standard error of the per-image difference between two lists of Jaccards."""
    d = np.subtract(a, b)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def versus(d, e):
    """The comparison word for a paired difference, by two standard errors."""
    return "above" if d > 2 * e else "below" if d < -2 * e else "level with"


dino_pets, rand_pets = pets["dino4000"], pets["random-init"]
pairs = {"DINO 4,000 - random init\n(head mean)": paired(dino_pets["per_image"], rand_pets["per_image"]),
         "DINO 4,000 - centre prior\n(head mean)": paired(dino_pets["per_image"],
                                                          dino_pets["per_image_centre_prior"]),
         "DINO 4,000 best head\n- centre prior": paired(dino_pets["per_image_best_head"],
                                                        dino_pets["per_image_centre_prior"]),
         "DINO 4,000 - DINO 2,000\n(head mean)": paired(dino_pets["per_image"], pets["dino2000"]["per_image"]),
         "random init - centre prior\n(head mean)": paired(rand_pets["per_image"],
                                                           rand_pets["per_image_centre_prior"])}
fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 3.6), gridspec_kw={"width_ratios": [2, 3]})
labels = ["head mean", "best head", "centre prior\n(same area)"]
for i, (name, p) in enumerate([("DINO 2,000 steps", pets["dino2000"]), ("DINO 4,000 steps", dino_pets),
                               ("random init", rand_pets)]):
    values = [p["jaccard"], p["jaccard_best_head"], p["jaccard_centre_prior"]]
    ax.bar(np.arange(3) + (i - 1) * 0.27, values, 0.25, label=name)
ax.set_xticks(range(3), labels)
ax.set_ylabel("Jaccard with the pet (0-1)")
ax.set_title(f"pets-mini, {dino_pets['images']} photos", fontsize=9)
ax.set_ylim(0, 1)                       # the whole Jaccard scale, the legend above the bars
ax.legend(fontsize=8, ncol=3, loc="upper center")
diffs = list(pairs.values())
bx.barh(range(len(pairs)), [d for d, _ in diffs], xerr=[2 * e for _, e in diffs], capsize=4,
        color=["tab:blue" if d > 0 else "tab:red" for d, _ in diffs])
bx.axvline(0, color="k", lw=0.8)
bx.set_yticks(range(len(pairs)), list(pairs))
bx.invert_yaxis()                       # the first comparison on top, as the text reads them
bx.set_xlabel("paired Jaccard difference (bars: 2 standard errors)")
fig.tight_layout()
plt.show()
for name, (d, e) in pairs.items():
    print(f"{name.replace(chr(10), ' '):42s} {d:+.3f} +- {e:.3f}")
print("attention on the pet: " + ", ".join(f"{n} {p['object_mass']:.0%}" for n, p in pets.items()) +
      f"; the pet's area {dino_pets['object_area']:.0%}")
(g_rand, e_rand), (g_prior, e_prior), (g_best, e_best), (g_len, e_len), (g_rp, e_rp) = pairs.values()
display(Markdown(
    f"The 4,000-step encoder's head-mean map is **{versus(g_rand, e_rand)}** random init's "
    f"({g_rand:+.3f} +- {e_rand:.3f}) and **{versus(g_prior, e_prior)}** the centre prior of the same area "
    f"({g_prior:+.3f} +- {e_prior:.3f}); its best head per image is {versus(g_best, e_best)} the prior "
    f"({g_best:+.3f} +- {e_best:.3f}); against the 2,000-step encoder it is {versus(g_len, e_len)} "
    f"({g_len:+.3f} +- {e_len:.3f}). Random init's maps are {versus(g_rp, e_rp)} the prior "
    f"({g_rp:+.3f} +- {e_rp:.3f})."))

# %% [markdown]
# Read the sentence above with the right panel: pre-training moves the attention towards the pet
# (the top bar), but on these photos, where the pet is usually in the middle, simply taking the
# central patches of the same area is a strong baseline. Whether a run beats it is printed, not
# assumed; the published weights (notebook 06) show what a long run on ImageNet does.

# %% [markdown]
# **The bf16 encoders on the same photos.** The encoders of the fair test and of the 8,000-step
# cell (pre-training seeds 0 and 1) were scored the same way on the bf16 CPU, beside a random init
# scored there too (their files end in `-bf16.json`; these were trained with 64/32 px crops,
# the ones above with 48/24 px, so compare within each set). Does twice the pre-training that
# helps fine-tuning also move the attention towards the pet?

# %%
pets16 = {name: json.loads((STUDY.parent / f"pets-attention-{name}-bf16.json").read_text())
          for name in ("dino4000", "dino8000", "dino8000-s1", "random-init")}
assert all(p["precision"] == "bf16" and p["images"] == dino_pets["images"] for p in pets16.values())
d8, d4, r16, d8s1 = pets16["dino8000"], pets16["dino4000"], pets16["random-init"], pets16["dino8000-s1"]
pairs16 = {"DINO 8,000 - DINO 4,000\n(head mean)": paired(d8["per_image"], d4["per_image"]),
           "DINO 8,000 - random init\n(head mean)": paired(d8["per_image"], r16["per_image"]),
           "DINO 8,000 - centre prior\n(head mean)": paired(d8["per_image"], d8["per_image_centre_prior"]),
           "DINO 8,000 best head\n- centre prior": paired(d8["per_image_best_head"], d8["per_image_centre_prior"]),
           "DINO 8,000 best head\n- DINO 4,000 best head": paired(d8["per_image_best_head"], d4["per_image_best_head"]),
           "DINO 8,000 one head\n- its centre prior": paired(d8["per_image_held_out_head"],
                                                              d8["per_image_held_out_head_prior"]),
           "DINO 8,000 seed 1, one head\n- its centre prior": paired(d8s1["per_image_held_out_head"],
                                                                      d8s1["per_image_held_out_head_prior"])}
fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [2, 3]})
encoders16 = [("DINO 4,000 steps", d4), ("DINO 8,000 steps", d8), ("DINO 8,000, seed 1", d8s1),
              ("random init", r16)]
for i, (name, p) in enumerate(encoders16):
    ax.bar(np.arange(4) + (i - 1.5) * 0.2, [p["jaccard"], p["jaccard_best_head"], p["jaccard_held_out_head"],
                                           p["jaccard_centre_prior"]],
           0.19, label=f"{name} (on the pet: {p['object_mass']:.0%})")
ax.set_xticks(range(4), ["head mean", "best head\nper image", "one head, picked\non the other half",
                         "centre prior\n(same area)"], fontsize=8)
ax.set_ylabel("Jaccard with the pet (0-1)")
ax.set_title(f"pets-mini, bf16 encoders (the pet covers {d8['object_area']:.0%})", fontsize=9)
ax.set_ylim(0, 1)
ax.legend(fontsize=7, loc="upper left")
diffs16 = list(pairs16.values())
bx.barh(range(len(pairs16)), [d for d, _ in diffs16], xerr=[2 * e for _, e in diffs16], capsize=4,
        color=["tab:blue" if d > 0 else "tab:red" for d, _ in diffs16])
bx.axvline(0, color="k", lw=0.8)
bx.set_yticks(range(len(pairs16)), list(pairs16))
bx.invert_yaxis()
bx.set_xlabel("paired Jaccard difference (bars: 2 standard errors)")
fig.tight_layout()
plt.show()
(g84, e84), (g8r, e8r), (g8p, e8p), (g8b, e8b), (g8bb, e8bb), (g8h, e8h), (g8s, e8s) = pairs16.values()
display(Markdown(
    f"Twice the pre-training moves the head-mean map **{'towards' if g84 > 2 * e84 else 'away from' if g84 < -2 * e84 else 'no clear distance towards or away from'}** "
    f"the pet: the 8,000-step map is {versus(g84, e84)} the 4,000-step one ({g84:+.3f} +- {e84:.3f}), "
    f"{versus(g8r, e8r)} random init's ({g8r:+.3f} +- {e8r:.3f}) and {versus(g8p, e8p)} the centre "
    f"prior ({g8p:+.3f} +- {e8p:.3f}); it puts {d8['object_mass']:.0%} of its attention on a pet that "
    f"covers {d8['object_area']:.0%} of the image. Its best head per image is {versus(g8b, e8b)} the "
    f"prior ({g8b:+.3f} +- {e8b:.3f}) and {versus(g8bb, e8bb)} the 4,000-step encoder's best head "
    f"({g8bb:+.3f} +- {e8bb:.3f}). One head picked on the other half of the photos (head "
    f"{d8['held_out_heads'][0]} on one half, {d8['held_out_heads'][1]} on the other) is "
    f"**{versus(g8h, e8h)}** the centre prior of its own area ({g8h:+.3f} +- {e8h:.3f}); the second "
    f"pre-training seed's is {versus(g8s, e8s)} its prior ({g8s:+.3f} +- {e8s:.3f}), and that "
    f"encoder's head-mean map scores {d8s1['jaccard']:.3f} against seed 0's {d8['jaccard']:.3f}."))

# %% [markdown]
# So the length that makes fine-tuning clearly better does not make the head-mean map better:
# the heads do not move together. The attention command's figure of the 8,000-step encoder,
# `docs/pets-attention-dino8000-bf16.png` (six photos, each head's map), shows how: in all six,
# one of the four heads puts most of its mass on the top row of patches, away from the pet,
# and drags the mean with it, while others still light up parts of the pet (which head, if any,
# differs from run to run; the figure is of the stored encoder whose scores are read above).
# Much larger ViTs trained far longer show a related effect, attention pooled on a few
# uninformative background patches (Darcet et al. 2023, "Vision Transformers Need Registers").
# The best head *per image* skips such a head, but it is an oracle: the largest of four noisy
# scores, a choice the centre prior does not get. The fair single head is chosen on half of the
# photos and scored on the other half (`attention` prints it, `score_maps` returns it), against
# the centre prior of that head's own area: the "one head" bars and rows above.

# %% [markdown]
# ## 8 · Pre-training on 10% of the images: DINO's drop
# The paper's question is what happens when the pre-training data shrink. So DINO was
# pre-trained for the same 8,000 steps on a seeded 10% of the training images (1,000 photos, so
# about 256 passes over them instead of 25.6), then fine-tuned on *all* the labelled images
# exactly like the 100% cell (fine-tuning seeds 0 and 1, 30 epochs, no layer decay), on the same
# bf16 CPU, by the study's own command:
#
#     python -m dino_lite smalldata --preset tinyimagenet --methods dino --fractions 0.1,1 \
#         --seeds 0 --finetune-epochs 30 --finetune-seeds 0,1 --finetune-layer-decay 1.0 \
#         --no-baseline --json
#
# (the 100% cell is pre-training seed 0 of the 8,000-step cell above, reused). Both cells are
# scored on the same 1,000 held-out images, so the drop's error is paired image by image
# (`smalldata.drops`). Left: the fine-tuning curves; middle: the paper's drops, on their own
# axis (iNaturalist-2019 fine-tuning after ImageNet pre-training); right: the drop here.

# %%
from dino_lite.smalldata import drops

small = at_fair_protocol("smalldata-dino8000-frac-bf16.json", 8000, [0])
small_runs = small["runs"]
small_cells = {(c["method"], c["fraction"]): c for c in small["cells"]}
at10, at100 = small_cells[("dino", 0.1)], small_cells[("dino", 1.0)]
# 100% minus 10%, image by image from the kept hits, and the package's drop with its paired SE
hits = {f: [h for r in small_runs if r["fraction"] == f for h in r["finetune_correct"]] for f in (1.0, 0.1)}
drop, _ = paired_gap(hits[1.0], hits[0.1])
small_drops = drops(small["cells"], small_runs)
drop_se = small_drops["dino"]["se"]
gap10 = over_random_init(at10, small_runs, fair_base)
g10, e10 = gap10["over_random_init"], gap10["over_random_init_se"]
frozen_drop = {k: 100 * (at100[k] - at10[k]) for k in ("knn_top1", "linear_top1")}


def paper_panel(ax):
    """The paper's drops from 100% to 10% (iNat-19 fine-tuning after ImageNet), on an axis of
    their own: its absolute numbers are not comparable with the miniature's."""
    ax.bar_label(ax.bar(range(3), list(paper_drop.values()), color="tab:gray"), fmt="%.1f", fontsize=8)
    ax.set_xticks(range(3), list(paper_drop))
    ax.set_ylabel("top-1 lost from 100% to 10% (points)")
    ax.set_title("paper (iNat-19, after ImageNet)", fontsize=9)
    ax.axhline(0, color="k", lw=0.8)


fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [3, 1.4, 1.4]})
curve_panel(ax, [(f"DINO on {r['fraction']:.0%}", r["curves"], "tab:green" if r["fraction"] == 1 else "tab:olive")
                 for r in sorted(small_runs, key=lambda r: -r["fraction"])] +
            [("random init", fair_base["curves"], "tab:orange")],
            f"fine-tuning on all labelled images after {small['steps']:,} pre-training steps", legend_size=6.5)
paper_panel(bx)
cx.bar([0], [drop], yerr=[2 * drop_se], capsize=5, color="tab:green")
cx.set_xticks([0], ["dino"])
cx.set_xlim(-0.8, 2.8)
cx.text(0.72, 0.5, "SplitMask:\npart 10\n\nBEiT: not yet\nat this length", ha="center", va="center",
        fontsize=7, transform=cx.transAxes)
cx.set_ylabel("top-1 lost from 100% to 10%\n(points; bar: 2 SE, paired)")
cx.set_title(f"here (tinyimagenet-dev20, {small['precision']})", fontsize=9)
cx.axhline(0, color="k", lw=0.8)
fig.tight_layout()
plt.show()
lo, hi = drop - 1.96 * drop_se, drop + 1.96 * drop_se
display(Markdown(
    f"Pre-trained on 10% of the images, DINO fine-tunes to **{100 * at10['finetune_top1']:.1f}%** "
    f"(fine-tuning seeds {', '.join(f'{100 * t:.1f}' for t in at10['finetune_top1_seeds'])}), "
    f"against **{100 * at100['finetune_top1']:.1f}%** on 100% (same pre-training seed): it "
    f"{'loses' if drop > 0 else 'gains'} **{abs(drop):.1f} +- {drop_se:.1f} points** "
    f"({abs(drop) / drop_se:.1f} standard errors, paired over the images; 95% interval for the "
    f"drop {lo:+.1f} to {hi:+.1f}), **{'beyond' if abs(drop) > 2 * drop_se else 'within'} two "
    f"standard errors**. The paper's DINO loses {paper_drop['dino']:.1f} on iNaturalist-2019, "
    f"{'outside' if not lo <= paper_drop['dino'] <= hi else 'inside'} that interval. Frozen, the "
    f"10% encoder's k-NN is " +
    " and its linear probe ".join(f"{abs(frozen_drop[k]):.1f} points {'below' if frozen_drop[k] > 0 else 'above'}"
                                  for k in ("knn_top1", "linear_top1")) +
    f" the 100% encoder's (one score's binomial SE: about {100 * np.sqrt(0.25 / n_test):.1f}). Over "
    f"random init it fine-tunes {g10:+.1f} +- {e10:.1f} points, **{versus(g10, e10)}** it by two "
    f"standard errors."))

# %% [markdown]
# **Reading it.** In this miniature, pre-training on a tenth of the images costs DINO nothing
# measurable after fine-tuning: the two cells are level within noise, and a drop the size of the
# paper's lies outside the interval. Three cautions before calling that an answer. It is one
# pre-training seed per fraction (the seeds' spread at 100% was small, above, but not measured
# here). A miniature is not ImageNet: 1,000 photos of 20 classes seen 256 times may hold most of
# what a 4-block ViT can learn from 10,000 of them, where the paper's 10% is 128,000 images for a
# far larger network. And the paper's claim is a *comparison*: DINO loses more than SplitMask. That
# needs SplitMask's cells at the same length (parts 9 and 10: `smalldata` computes the verdict,
# paired image by image over all four cells); this run's file holds DINO's cells only, so it has
# no verdict, and the check below asserts that too.
#
# Where does the 10% encoder look? Scored on the pets like the others (`attention`, bf16):

# %%
p10 = json.loads((STUDY.parent / "pets-attention-dino8000-10pct-bf16.json").read_text())
assert p10["precision"] == "bf16" and p10["images"] == d8["images"]
(g10_100, e10_100), (g10r, e10r), (g10p, e10p), (g10b, e10b) = (
    paired(p10["per_image"], d8["per_image"]), paired(p10["per_image"], r16["per_image"]),
    paired(p10["per_image"], p10["per_image_centre_prior"]),
    paired(p10["per_image_best_head"], p10["per_image_centre_prior"]))
display(Markdown(
    f"The 10% encoder's head-mean map scores **{p10['jaccard']:.3f}** (best head {p10['jaccard_best_head']:.3f}; "
    f"{p10['object_mass']:.0%} of its attention on a pet covering {p10['object_area']:.0%}): "
    f"{versus(g10_100, e10_100)} the 100% encoder's ({g10_100:+.3f} +- {e10_100:.3f}), "
    f"{versus(g10r, e10r)} random init's ({g10r:+.3f} +- {e10r:.3f}) and {versus(g10p, e10p)} the "
    f"centre prior ({g10p:+.3f} +- {e10p:.3f}); its best head is {versus(g10b, e10b)} the prior "
    f"({g10b:+.3f} +- {e10b:.3f}). The attention command's figure of it (six photos, every head) is "
    f"`docs/pets-attention-dino8000-10pct-bf16.png`."))

# %% [markdown]
# ## 9 · SplitMask at the same length, on all the images
# The comparison's other side starts with SplitMask's 100% cell: pre-trained for the same 8,000
# steps (pre-training seed 0) at the masked models' study learning rate (`lr=0.0015` per 256,
# `smalldata.MIM_SETS`, the command's default), then fine-tuned exactly like DINO's cells, on the
# same bf16 CPU, by the study's command:
#
#     python -m dino_lite smalldata --preset tinyimagenet --methods splitmask --fractions 1 \
#         --seeds 0 --finetune-epochs 30 --finetune-seeds 0,1 --finetune-layer-decay 1.0 \
#         --no-baseline --json
#
# Left: its fine-tuning curves beside DINO's 100% cell (same pre-training seed) and random init;
# right: what each pre-training adds after fine-tuning, paired over the 1,000 held-out images.

# %%
sm = at_fair_protocol("smalldata-splitmask8000-bf16.json", 8000, [0])
assert sm["mim_sets"] == ["lr=0.0015"], sm["mim_sets"]
sm_cell = next(c for c in sm["cells"] if (c["method"], c["fraction"]) == ("splitmask", 1.0))
sm_run = next(r for r in sm["runs"] if (r["method"], r["fraction"]) == ("splitmask", 1.0))
(g_sm, e_sm), (g_d100, e_d100) = ((g["over_random_init"], g["over_random_init_se"]) for g in (
    over_random_init(sm_cell, sm["runs"], fair_base), over_random_init(at100, small_runs, fair_base)))
g_sd, e_sd = paired_gap(sm_run["finetune_correct"], hits[1.0])       # SplitMask - DINO, 100%, seed 0
frozen_sm = {k: (binomial_gap(sm_cell[k], fair_base[k]), binomial_gap(at100[k], sm_cell[k]))
             for k in ("knn_top1", "linear_top1")}                     # over random init; DINO over it

fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 3.6), gridspec_kw={"width_ratios": [3, 2]})
curve_panel(ax, [("SplitMask on 100%", sm_run["curves"], "tab:blue"),
                 ("DINO on 100%", next(r for r in small_runs if r["fraction"] == 1.0)["curves"], "tab:green"),
                 ("random init", fair_base["curves"], "tab:orange")],
            f"fine-tuning on all labelled images after {sm['steps']:,} pre-training steps", legend_size=6.5)
gap_bars(bx, [("SplitMask", g_sm, e_sm), ("DINO", g_d100, e_d100)], ["tab:blue", "tab:green"],
         "fine-tuned top-1 minus random init's\n(points, paired; bars: 2 SE)")
fig.tight_layout()
plt.show()
display(Markdown(
    f"Pre-trained by SplitMask, the encoder fine-tunes to **{100 * sm_cell['finetune_top1']:.1f}%** "
    f"(fine-tuning seeds {', '.join(f'{100 * t:.1f}' for t in sm_cell['finetune_top1_seeds'])}), "
    f"**{g_sm:+.1f} +- {e_sm:.1f} points** over random init: **{versus(g_sm, e_sm)}** it by two "
    f"standard errors, and {'above' if g_sm > 3 else 'under'} the 3-point bar DINO's length was "
    f"held to. DINO's 100% cell of the same pre-training seed: {g_d100:+.1f} +- {e_d100:.1f}. "
    f"SplitMask minus DINO after fine-tuning: **{g_sd:+.1f} +- {e_sd:.1f}** points, "
    f"**{versus(g_sd, e_sd)}** it. Frozen, SplitMask's k-NN is {100 * sm_cell['knn_top1']:.1f}% and "
    f"its linear probe {100 * sm_cell['linear_top1']:.1f}%; " +
    "; ".join(f"{name}: {versus(*frozen_sm[k][0])} random init's ({100 * fair_base[k]:.1f}%) and "
                 f"{'below' if frozen_sm[k][1][0] > 2 * frozen_sm[k][1][1] else 'not clearly below'} "
                 f"DINO's ({100 * at100[k]:.1f}%)"
                 for name, k in (("k-NN", "knn_top1"), ("linear", "linear_top1"))) +
    f" (two standard errors of the difference). Its curves are marked "
    f"{'converged' if sm_cell['converged'] else 'not converged'} by the rule."))

# %% [markdown]
# **Reading it.** At this length SplitMask's pre-training adds little after fine-tuning: its lead
# over random init is inside two standard errors and under 3 points, and it fine-tunes below DINO's
# 100% cell by more than two. Its frozen features did learn (k-NN and linear above random init),
# less than DINO's under both the k-NN and the linear probe. Two cautions: one pre-training
# seed, and the masked models' learning rate (0.0015 per 256, chosen on a 150-step BEiT check)
# was not tuned at 8,000 steps.
# For the paper's question this cell is half of SplitMask's drop: what matters is how much of its
# small lead survives at 10% of the images, measured against DINO's drop on the same images: that
# cell is part 10.
#
# Where does SplitMask's CLS token look on the pets? Nowhere useful, and for a reason in the
# objective: each branch's encoder output is read at the patch tokens only
# (`methods/splitmask.py` drops the prefix tokens before the decoder, and the global InfoNCE
# average-pools the decoder's patch outputs), so no loss ever reads the CLS token's output, and
# its attention in the last block gets no gradient from the loss: where it looks is a by-product
# of weights trained for the patch tokens. Scored like DINO's (`attention`, bf16):

# %%
psm = json.loads((STUDY.parent / "pets-attention-splitmask8000-bf16.json").read_text())
assert psm["precision"] == "bf16" and psm["images"] == d8["images"]
(gsr, esr), (gsp, esp) = (paired(psm["per_image"], r16["per_image"]),
                          paired(psm["per_image"], psm["per_image_centre_prior"]))
display(Markdown(
    f"SplitMask's head-mean map scores **{psm['jaccard']:.3f}** (best head {psm['jaccard_best_head']:.3f}); "
    f"{psm['object_mass']:.0%} of its attention lands on a pet covering {psm['object_area']:.0%}, "
    f"{'less' if psm['object_mass'] < psm['object_area'] else 'more'} than a uniform map would put "
    f"there. It is {versus(gsr, esr)} random init's map ({gsr:+.3f} +- {esr:.3f}) and "
    f"{versus(gsp, esp)} the centre prior ({gsp:+.3f} +- {esp:.3f}). The figure "
    f"`docs/pets-attention-splitmask8000-bf16.png` shows where it looks: in its six photos every "
    f"head attends to the left-hand and top-left patches, whatever the photo shows."))

# %% [markdown]
# ## 10 · SplitMask on 10% of the images: the four cells and the study's verdict
# SplitMask's 10% cell (pre-training seed 0, the same 8,000 steps and learning rate, fine-tuned on
# all the labelled images like every cell) completes the four cells of the paper's comparison.
# One more run of the study's command over all four re-trains nothing: it reuses the cells of
# parts 8 and 9 and the new one, and computes both drops and the verdict sentence:
#
#     python -m dino_lite smalldata --preset tinyimagenet --methods dino,splitmask \
#         --fractions 0.1,1 --seeds 0 --finetune-epochs 30 --finetune-seeds 0,1 \
#         --finetune-layer-decay 1.0 --no-baseline --json
#
# The paper's claim is a difference of differences: DINO's drop from 100% to 10% minus
# SplitMask's. All four cells are scored on the same 1,000 held-out images, so the package counts
# it image by image, $(d_{100} - d_{10}) - (s_{100} - s_{10})$ per image (each term the mean hit
# over the two fine-tunings); its standard error is that of a mean of 1,000 numbers, with each
# cell's fine-tuning-seed spread added in quadrature. A spread measured from two runs has one
# degree of freedom, so the 95% interval is not 1.96 standard errors but Student's t with the
# Welch-Satterthwaite degrees of freedom of those pieces,
# $\nu = (\sum_i s_i^2)^2 / \sum_i (s_i^4 / \nu_i)$ (`smalldata.difference`). Left: SplitMask's
# fine-tuning curves at both fractions; middle: the paper's drops (iNaturalist-2019 after
# ImageNet, on their own axis); right: the drops here and their difference.

# %%
from dino_lite.smalldata import t_quantile

four = at_fair_protocol("smalldata-8000-frac-bf16.json", 8000, [0])
assert four["mim_sets"] == ["lr=0.0015"], four["mim_sets"]
four_cells = {(c["method"], c["fraction"]): c for c in four["cells"]}
assert sorted(four_cells) == [(m, f) for m in ("dino", "splitmask") for f in (0.1, 1.0)], sorted(four_cells)
# reused, not re-trained: the three earlier cells are the ones parts 8 and 9 read
for key, earlier in ((("dino", 1.0), at100), (("dino", 0.1), at10), (("splitmask", 1.0), sm_cell)):
    assert four_cells[key]["finetune_top1_seeds"] == earlier["finetune_top1_seeds"], key
sm10 = four_cells[("splitmask", 0.1)]
four_drops = drops(four["cells"], four["runs"])


def cell_hits(runs, key):
    """Each held-out image's hit (0 to 1), averaged over every fine-tuning of the cell ``key``."""
    return np.mean([h for r in runs if (r["method"], r["fraction"]) == key for h in r["finetune_correct"]], axis=0)


def drop_difference(hit, spreads, a="dino", b="splitmask"):
    """Method ``a``'s drop minus ``b``'s, counted here without the package: per held-out image
    from each cell's mean hit ``hit``; its standard error with the cells' spreads ``(se, df)``
    added in quadrature; their Welch-Satterthwaite degrees of freedom and Student's t 95% interval."""
    per_image = (hit[(a, 1.0)] - hit[(a, 0.1)]) - (hit[(b, 1.0)] - hit[(b, 0.1)])
    pieces = [(100 * per_image.std(ddof=1) / np.sqrt(len(per_image)), len(per_image) - 1)] + spreads
    se = float(np.hypot.reduce([s for s, _ in pieces]))
    nu = sum(s ** 2 for s, _ in pieces) ** 2 / sum(s ** 4 / k for s, k in pieces)
    q = t_quantile(0.975, nu)
    d = 100 * per_image.mean()
    return d, se, nu, q, (d - q * se, d + q * se)


hit = {k: cell_hits(four["runs"], k) for k in four_cells}
def finetune_spread(cell):
    """The standard error (points) of a cell's mean over its fine-tuning seeds: two seeds, 1 df."""
    return 100 * np.std(cell["finetune_top1_seeds"], ddof=1) / np.sqrt(len(cell["finetune_top1_seeds"]))


# each cell's fine-tuning-seed spread, 1 df
diff, diff_se, nu, q95, (dlo, dhi) = drop_difference(hit, [(finetune_spread(c), 1) for c in four_cells.values()])
paper_diff = paper_drop["dino"] - paper_drop["splitmask"]
gap_sm10 = over_random_init(sm10, four["runs"], fair_base)
g_sm10, e_sm10 = gap_sm10["over_random_init"], gap_sm10["over_random_init_se"]
sm_frozen = {k: binomial_gap(sm10[k], sm_cell[k]) for k in ("knn_top1", "linear_top1")}   # 10% - 100%
# at 100%, DINO's two pre-training seeds (part 6): the only measured pre-training-seed spread
seed_top1 = [100 * r["finetune_top1"] for r in twice["runs"]]

fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [3, 1.4, 1.6]})
curve_panel(ax, [(f"SplitMask on {f:.0%}", next(r for r in four["runs"] if (r["method"], r["fraction"]) == ("splitmask", f))["curves"], c)
                 for f, c in ((1.0, "tab:blue"), (0.1, "tab:cyan"))] +
            [("random init", fair_base["curves"], "tab:orange")],
            f"fine-tuning on all labelled images after {four['steps']:,} SplitMask steps", legend_size=6.5)
paper_panel(bx)
rows = [("dino", four_drops["dino"]["drop"], four_drops["dino"]["se"], "tab:green"),
        ("splitmask", four_drops["splitmask"]["drop"], four_drops["splitmask"]["se"], "tab:blue"),
        ("DINO drop -\nSplitMask drop", diff, diff_se, "tab:purple")]
cx.bar_label(cx.bar(range(3), [r[1] for r in rows], yerr=[2 * r[2] for r in rows], capsize=5,
                    color=[r[3] for r in rows]), fmt="%+.1f", fontsize=8, label_type="center")
cx.set_xticks(range(3), [r[0] for r in rows])
cx.set_ylabel("top-1 lost from 100% to 10%\n(points; bars: 2 SE, paired)")
cx.set_title(f"here (tinyimagenet-dev20, {four['precision']})", fontsize=9)
cx.axhline(0, color="k", lw=0.8)
fig.tight_layout()
plt.show()
sm_drop, sm_drop_se = four_drops["splitmask"]["drop"], four_drops["splitmask"]["se"]
display(Markdown(
    f"Pre-trained on 10% of the images, SplitMask fine-tunes to **{100 * sm10['finetune_top1']:.1f}%** "
    f"(fine-tuning seeds {', '.join(f'{100 * t:.1f}' for t in sm10['finetune_top1_seeds'])}; "
    f"{'converged' if sm10['converged'] else 'not converged'} by the rule), against "
    f"**{100 * sm_cell['finetune_top1']:.1f}%** on 100%: its drop from 100% to 10% is "
    f"**{sm_drop:+.1f} +- {sm_drop_se:.1f} points** (a negative drop is a gain), "
    f"**{'beyond' if abs(sm_drop) > 2 * sm_drop_se else 'within'} two standard errors** of zero; over "
    f"random init it fine-tunes {g_sm10:+.1f} +- {e_sm10:.1f} points, {versus(g_sm10, e_sm10)} it. "
    f"DINO's drop on the same images: {four_drops['dino']['drop']:+.1f} +- {four_drops['dino']['se']:.1f} "
    f"(part 8). "
    f"**DINO's drop minus SplitMask's: {diff:+.1f} +- {diff_se:.1f} points** (95% interval, "
    f"Student's t with {nu:.0f} degrees of freedom, {q95:.2f} standard errors each side: "
    f"{dlo:+.1f} to {dhi:+.1f}); the paper's difference, {paper_diff:.1f} points, is "
    f"**{'inside' if dlo <= paper_diff <= dhi else 'outside'}** that interval. Frozen, the 10% "
    f"SplitMask encoder scores " +
    " and ".join(f"{name} {100 * sm10[k]:.1f}%, {versus(*sm_frozen[k])} the 100% encoder's "
                 f"({sm_frozen[k][0]:+.1f} +- {sm_frozen[k][1]:.1f})"
                 for name, k in (("k-NN", "knn_top1"), ("linear probe", "linear_top1"))) + ".\n\n"
    f"The study's verdict, as `smalldata` wrote it: *{four['verdict']}*\n\n"
    f"Of the pre-training-seed spreads, part 6 measured DINO's at 100%: seeds 0 and 1 fine-tune to "
    f"{seed_top1[0]:.1f}% and {seed_top1[1]:.1f}%, {abs(seed_top1[0] - seed_top1[1]):.1f} points apart "
    f"(part 11 measures every cell's)."))

# %% [markdown]
# **Reading it.** At one pre-training seed per cell, neither method loses anything measurable
# when its pre-training images shrink to a tenth: both drops are within two standard errors of
# zero, and so is their difference. The verdict is therefore the second kind of sentence the
# study can write, a bound: no difference between the two drops larger than its 95% interval's
# edge, and a difference the size of the paper's (DINO losing 5.3 points more than SplitMask)
# lies outside that interval. So this miniature does not reproduce the paper's small-data effect,
# and it has the power to say that an effect of the paper's size is absent *here*. Three
# cautions keep that from being more than a miniature's answer:
# - **One pre-training seed per cell.** The interval counts the held-out images and the
#   fine-tuning seeds; a second pre-training seed of every cell (the study's default
#   `--seeds 0,1`) is part 11, and DINO's two seeds at 100% (above) suggest that spread is
#   small, not that it is zero.
# - **SplitMask adds little here.** Its encoders fine-tune level with random init at both
#   fractions (parts 9 and 10), so its flat line is partly the flat line of a pre-training that
#   adds little: a method that adds little has little to lose. The paper's claim is about
#   pre-trainings that help.
# - **A miniature is not ImageNet**: 1,000 or 10,000 photos of 20 classes for a 4-block ViT, where
#   the paper's 10% is 128,000 images for a far larger network.

# %% [markdown]
# ## 11 · Every cell at two pre-training seeds: the verdict with the seeds' spread
# Part 10's interval counts the held-out images and the fine-tuning seeds, not the pre-training
# seed: pre-training the same cell again (another initialisation, another order of crops) lands
# somewhere else, and that spread belongs in a drop's error. So each of the four cells was
# pre-trained again with seed 1 (same 8,000 steps, same learning rate, fine-tuning seeds 0 and 1).
# The study's command with `--seeds 0,1` re-trains nothing: it reuses parts 8-10's seed-0 cells
# and the four seed-1 ones:
#
#     python -m dino_lite smalldata --preset tinyimagenet --methods dino,splitmask \
#         --fractions 0.1,1 --seeds 0,1 --finetune-epochs 30 --finetune-seeds 0,1 \
#         --finetune-layer-decay 1.0 --no-baseline --json
#
# A cell's top-1 is now the mean over its two pre-training seeds (each the mean of two
# fine-tunings), and its seed error is the standard error of those two means
# (`smalldata.aggregate`). The drops and their difference stay paired image by image (each
# image's hit averaged over the cell's four fine-tunings), with the four cells' seed errors added
# in quadrature. Two seeds measure a spread only roughly (one degree of freedom per cell), which
# the interval's Student's t takes into account, as in part 10. Left: every fine-tuning's top-1 (circles: pre-training
# seed 0, squares: seed 1) and each cell's mean with 2 SE; right: the two drops and their
# difference with one pre-training seed per cell (part 10) and with two.

# %%
eight = at_fair_protocol("smalldata-8000-frac-2seeds-bf16.json", 8000, [0, 1])
assert eight["mim_sets"] == four["mim_sets"] and not eight["left_out"], eight["left_out"]
run_key = lambda r: (r["method"], r["fraction"], r["seed"])   # noqa: E731


def reused(earlier, later):
    """Every run of ``earlier`` is in ``later`` with the same fine-tunings: reused, not re-trained."""
    for r in earlier:
        again = next(x for x in later if run_key(x) == run_key(r))
        assert again["finetune_top1_seeds"] == r["finetune_top1_seeds"], run_key(r)


def pretraining_seeds(runs, keys):
    """Each cell's fine-tuned top-1 (points) per pre-training seed, and the standard error of
    those seed means: one degree of freedom per cell of two seeds."""
    means = {k: [100 * r["finetune_top1"] for r in runs if (r["method"], r["fraction"]) == k] for k in keys}
    assert all(len(v) == 2 for v in means.values()), means
    return means, [np.std(v, ddof=1) / np.sqrt(len(v)) for v in means.values()]


eight_cells = {(c["method"], c["fraction"]): c for c in eight["cells"]}
assert sorted(eight_cells) == sorted(four_cells), sorted(eight_cells)
reused(four["runs"], eight["runs"])     # seed 0's runs are part 10's
eight_drops = drops(eight["cells"], eight["runs"])


# the difference of the two drops counted here without the package: per image, plus the four
# cells' pre-training-seed errors (the standard error of each cell's two seed means)
hit2 = {k: cell_hits(eight["runs"], k) for k in eight_cells}
seed_means, seed_se2 = pretraining_seeds(eight["runs"], eight_cells)
diff2, diff2_se, nu2, q2, (lo2, hi2) = drop_difference(hit2, [(s, 1) for s in seed_se2])
seed_apart = {k: abs(v[0] - v[1]) for k, v in seed_means.items()}

fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [3, 2]})
order = [("dino", 1.0), ("dino", 0.1), ("splitmask", 1.0), ("splitmask", 0.1)]
# each SplitMask cell over random init, paired, both seeds' spreads added (the text: "level with")
sm_over = {f: over_random_init(eight_cells[(m, f)], eight["runs"], fair_base) for m, f in order if m == "splitmask"}
names = {"dino": "DINO", "splitmask": "SplitMask"}
for i, key in enumerate(order):
    colour = "tab:green" if key[0] == "dino" else "tab:blue"
    for r in (r for r in eight["runs"] if (r["method"], r["fraction"]) == key):
        ax.scatter([i + (r["seed"] - 0.5) * 0.3] * len(r["finetune_top1_seeds"]),
                   100 * np.array(r["finetune_top1_seeds"]), marker="os"[r["seed"]], color=colour,
                   alpha=0.6, zorder=3)
    c = eight_cells[key]
    ax.errorbar(i, 100 * c["finetune_top1"], yerr=200 * c["finetune_se"], fmt="_", markersize=24,
                capsize=8, color="k", zorder=4)
rand = 100 * fair_base["finetune_top1"]
ax.axhline(rand, color="tab:orange", ls="--", label=f"random init, 30 epochs ({rand:.1f}%)")
ax.scatter([], [], marker="o", color="gray", label="pre-training seed 0 (one dot per fine-tuning)")
ax.scatter([], [], marker="s", color="gray", label="pre-training seed 1")
ax.errorbar([], [], yerr=[], fmt="_", color="k", capsize=8, label="cell mean (bars: 2 SE)")
ax.set_xticks(range(4), [f"{names[m]} on {f:.0%}" for m, f in order])
ax.set_ylabel("held-out top-1 after fine-tuning (%)")
ax.set_title(f"the four cells, {eight['steps']:,} pre-training steps, 30-epoch fine-tuning ({eight['precision']})",
             fontsize=9)
ax.grid(axis="y", alpha=0.3)
ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
# whiskers: 2 SE for each drop; for their difference its 95% interval, Student's t (the verdict's)
rows = [("DINO's drop", four_drops["dino"] | {"q": 2}, eight_drops["dino"] | {"q": 2}),
        ("SplitMask's drop", four_drops["splitmask"] | {"q": 2}, eight_drops["splitmask"] | {"q": 2}),
        ("DINO's drop minus\nSplitMask's", {"drop": diff, "se": diff_se, "q": q95},
         {"drop": diff2, "se": diff2_se, "q": q2})]
y = np.arange(len(rows))
for shift, label, colour, pick in ((-0.18, "one pre-training seed (part 10)", "tab:gray", 1),
                                   (0.18, "two pre-training seeds", "tab:purple", 2)):
    bx.barh(y + shift, [r[pick]["drop"] for r in rows], height=0.34, xerr=[r[pick]["q"] * r[pick]["se"] for r in rows],
            capsize=4, color=colour, label=label)
bx.axvline(0, color="k", lw=0.8)
bx.axvline(paper_diff, color="tab:red", ls=":", label=f"the paper's difference ({paper_diff:.1f}, iNat-19)")
bx.set_yticks(y, [r[0] for r in rows])
bx.invert_yaxis()
bx.set_xlabel("top-1 lost from 100% to 10% (points, paired)\nbars: 2 SE; for the difference, its 95% interval (t)")
bx.set_title("the drops and their difference, here (tinyimagenet-dev20)", fontsize=9)
bx.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=1)
fig.tight_layout()
plt.show()
d2, s2 = eight_drops["dino"], eight_drops["splitmask"]
where = {m: "within" if abs(eight_drops[m]["drop"]) < 2 * eight_drops[m]["se"] else "beyond" for m in eight_drops}
diff2_pkg = d2["drop"] - s2["drop"]                 # the package's difference, from the cells' means
display(Markdown(
    "With two pre-training seeds per cell, fine-tuned top-1: " +
    "; ".join(f"{names[m]} on {f:.0%} **{100 * eight_cells[(m, f)]['finetune_top1']:.1f}%** (seeds "
              f"{seed_means[(m, f)][0]:.1f} and {seed_means[(m, f)][1]:.1f}, {seed_apart[(m, f)]:.1f} apart)"
              for m, f in order) +
    f". DINO's drop from 100% to 10%: **{d2['drop']:+.1f} +- {d2['se']:.1f}** points (one seed: "
    f"{four_drops['dino']['drop']:+.1f} +- {four_drops['dino']['se']:.1f}); SplitMask's: "
    f"**{s2['drop']:+.1f} +- {s2['se']:.1f}** (one seed: {sm_drop:+.1f} +- {sm_drop_se:.1f}); " +
    (f"both {where['dino']} two standard errors of zero. " if where["dino"] == where["splitmask"] else
     f"DINO's {where['dino']}, SplitMask's {where['splitmask']} two standard errors of zero. ") +
    f"**DINO's drop minus SplitMask's: {diff2_pkg:+.1f} +- {diff2_se:.1f} points** (95% interval, "
    f"Student's t with {nu2:.0f} degrees of freedom, {q2:.2f} standard errors each side: {lo2:+.1f} "
    f"to {hi2:+.1f}; one seed: {diff:+.1f} +- {diff_se:.1f}, {dlo:+.1f} to {dhi:+.1f}); the paper's "
    f"{paper_diff:.1f} points is **{'inside' if lo2 <= paper_diff <= hi2 else 'outside'}** the "
    f"interval. The pre-training seeds' share of that error: "
    f"{float(np.hypot.reduce(seed_se2)):.1f} points of the {diff2_se:.1f}."
    f" SplitMask's cells fine-tune " + " and ".join(
        f"{g['over_random_init']:+.1f} +- {g['over_random_init_se']:.1f} ({f:.0%})" for f, g in sm_over.items()) +
    " points over random init (paired).\n\n"
    f"The study's verdict, as `smalldata` wrote it: *{eight['verdict']}*"))

# %% [markdown]
# **Reading it.** With every cell at two pre-training seeds the answer keeps its form: neither
# method loses anything measurable when its pre-training images shrink to a tenth, the
# difference of the two drops is within its interval of zero, and a difference the size of the
# paper's (DINO losing 5.3 points more than SplitMask) lies outside that interval. What changed
# is what the interval holds:
# - **The pre-training seeds' spread is in it now**, beside the held-out images and the
#   fine-tuning seeds, and the rendered share above says how much of the error it is.
# - **Two seeds measure a spread roughly**: each cell's has one degree of freedom, so the
#   interval is Student's t with few degrees of freedom, wider than 1.96 standard errors. More
#   pre-training seeds would narrow both the standard error and the quantile.
# - **What two seeds do not change**: SplitMask's encoders still fine-tune level with random init
#   at this length, within two standard errors (a pre-training that adds little has little to
#   lose), and 1,000 or 10,000 photos of 20 classes are not ImageNet. BEiT's cells at this
#   length are part 13; the tokenizer comparison at this length is in
#   `docs/masked-image-modelling.md` (one pre-training and two fine-tuning seeds per tokenizer:
#   the three fine-tune level).

# %% [markdown]
# ## 12 · Fine-tuned until the curves flatten: is the lead kept over a converged random init?
# Every comparison so far fine-tunes for an equal 30 epochs, and 30 epochs need not be random
# init's plateau (the rule passes one of its two 30-epoch curves in part 6's fair test, not the
# other). The claim that pre-training *helps* needs the baseline at its plateau. So the seed-0
# encoder of DINO's 100% cell (8,000 steps) was fine-tuned again for 60 epochs, and random init
# (its seed-0 weights, fine-tuning seed 0) for 60 and for 90 epochs, with the study's own command
# and baseline:
#
#     python -m dino_lite smalldata --preset tinyimagenet --methods dino --fractions 1 --steps 8000 \
#         --seeds 0 --finetune-epochs 60 --finetune-seeds 0 --finetune-layer-decay 1.0 --json
#
# (90 epochs: the same baseline with `epochs=90`, see `docs/masked-image-modelling.md`). The
# rule the command prints decides "converged": the last 20% of the epochs raise the best
# held-out top-1 by less than 1 point. One fine-tuning seed per run, so each gap's error is the
# held-out images' (paired) only. Left: the curves; right: DINO's lead over each random init.

# %%
long60 = json.loads((STUDY.parent / "smalldata-dino8000-60ep-bf16.json").read_text())
assert long60["steps"] == 8000 and long60["precision"] == fair["precision"] and long60["seeds"] == [0]
assert {k: v for k, v in long60["finetune"].items() if k not in ("epochs", "seeds")} == \
    {k: v for k, v in fair["finetune"].items() if k not in ("epochs", "seeds")}, "not the fair recipe"
assert long60["finetune"]["epochs"] == 60 and long60["finetune"]["seeds"] == [0], long60["finetune"]
dino60 = next(r for r in long60["runs"] if (r["method"], r["fraction"], r["seed"]) == ("dino", 1.0, 0))
rand60 = long60["random_init"]
rand90_file = json.loads((STUDY.parent / "random-init-90ep-bf16.json").read_text())
assert rand90_file["key"]["finetune"]["epochs"] == 90, rand90_file["key"]["finetune"]
rand90 = rand90_file["result"]
dino30 = next(r for r in eight["runs"] if (r["method"], r["fraction"], r["seed"]) == ("dino", 1.0, 0))
curves = {"DINO, 30 epochs": (dino30["curves"][0], "tab:red", ":"),
          "DINO, 60 epochs": (dino60["curves"][0], "tab:red", "-"),
          "random init, 30 epochs": (fair_base["curves"][0], "tab:orange", ":"),
          "random init, 60 epochs": (rand60["curves"][0], "tab:orange", "--"),
          "random init, 90 epochs": (rand90["curves"][0], "tab:orange", "-")}
flat = {name: converged(c) for name, (c, _, _) in curves.items()}
long_gaps = [("DINO 30 − random init 30", *paired_gap([dino30["finetune_correct"][0]], [fair_base["finetune_correct"][0]])),
             ("DINO 60 − random init 60", *paired_gap(dino60["finetune_correct"], rand60["finetune_correct"])),
             ("DINO 60 − random init 90", *paired_gap(dino60["finetune_correct"], rand90["finetune_correct"]))]
g_cell90, e_cell90 = paired_gap([hit2[("dino", 1.0)]], rand90["finetune_correct"])   # DINO's 30-epoch cell (part 11)
rand_gain = paired_gap(rand90["finetune_correct"], rand60["finetune_correct"])
rand_gain_all = paired_gap(rand90["finetune_correct"], [fair_base["finetune_correct"][0]])   # 30 -> 90 epochs
dino_gain = paired_gap(dino60["finetune_correct"], [dino30["finetune_correct"][0]])

fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [3, 2]})
for name, (c, colour, style) in curves.items():
    ax.plot(range(1, len(c) + 1), [100 * v for v in c], style, color=colour,
            label=f"{name}: {100 * c[-1]:.1f}% ({'converged' if flat[name] else 'still rising'})")
ax.set_xlabel("fine-tuning epoch")
ax.set_ylabel("held-out top-1 (%)")
ax.set_title(f"DINO ({long60['steps']:,} steps, seed 0) and random init, fine-tuning seed 0 ({long60['precision']})",
             fontsize=9)
ax.grid(alpha=0.3)
ax.legend(fontsize=7, loc="lower right")
gap_bars(bx, long_gaps, ["tab:gray", "tab:olive", "tab:green"], "DINO minus random init (points, paired; bars: 2 SE)")
fig.tight_layout()
plt.show()
g90, e90 = long_gaps[2][1:]
bar_word = {1: "above", 0: "at", -1: "below"}[int(np.sign(round(g90, 1) - 3))]   # as printed, one decimal
display(Markdown(
    "Final top-1, fine-tuning seed 0: " + "; ".join(
        f"{name} **{100 * c[-1]:.1f}%** ({'converged' if flat[name] else 'not converged'} by the rule)"
        for name, (c, _, _) in curves.items()) +
    f". From 60 to 90 epochs random init gains {rand_gain[0]:+.1f} +- {rand_gain[1]:.1f} points (paired); "
    f"from 30 to 60 DINO gains {dino_gain[0]:+.1f} +- {dino_gain[1]:.1f}. DINO's lead: " +
    "; ".join(f"{name} **{g:+.1f} +- {e:.1f}**" for name, g, e in long_gaps) +
    f". Against the {'converged' if flat['random init, 90 epochs'] else 'longest'} random init "
    f"(90 epochs) the lead is **{'beyond' if g90 > 2 * e90 else 'within'} two standard errors** "
    f"and **{bar_word} the issue's 3-point bar**"
    f"{'' if g90 - 2 * e90 >= 3 else f' (its lower 2-SE edge, {g90 - 2 * e90:+.1f}, is under 3)'}. "
    f"DINO's 30-epoch cell (both pre-training seeds, four fine-tunings) against random init's 90 "
    f"epochs: {g_cell90:+.1f} +- {e_cell90:.1f}. Random init from 30 to 90 epochs: "
    f"{rand_gain_all[0]:+.1f} +- {rand_gain_all[1]:.1f}."))

# %% [markdown]
# **Reading it.** Three things hold in the figure (the check asserts each):
# - **Random init needs more epochs to flatten than DINO**: still rising at 60 epochs, it
#   passes the rule at 90, while DINO's curve passes it at 60. The rule passes random init's
#   30-epoch curve too, yet 90 epochs add several points more: with a cosine schedule the last
#   epochs run at a tiny learning rate, so a flat tail says the schedule ended, not that the
#   model could learn no more. Only a longer run shows a plateau.
# - **The lead shrinks as both fine-tune longer** (30, 60, then random init's plateau): much of
#   what pre-training buys at an equal 30 epochs is a head start that fine-tuning long enough
#   partly makes up. Put the other way: DINO's 30-epoch cell ends level with random init's
#   90-epoch run, so here pre-training saves about two thirds of the fine-tuning.
# - **What is left over the converged random init** is the number rendered above, against the
#   issue's bar of 3 points beyond two standard errors. It rests on one pre-training seed and one
#   fine-tuning seed per side, so read its interval, not its value: a second fine-tuning seed of
#   each would narrow it.

# %% [markdown]
# ## 13 · BEiT at the same length: the paper's third row, at two pre-training seeds
# The paper pre-trains three methods; BEiT (a tokenizer's codewords predicted at block-masked
# patches, part 4) is its other masked model, and it too stays flat from 100% to 10% of ImageNet
# (75.2 to 74.5 on iNaturalist-2019, a drop of 0.7). Its four runs here were pre-trained like
# SplitMask's (8,000 steps, pre-training seeds 0 and 1, `lr=0.0015` per 256, the default
# random-projection tokenizer) and fine-tuned like every cell (fine-tuning seeds 0 and 1), in
# bf16, on a 2-core AMD EPYC of a newer generation than parts 8-12's (the machine each result
# file records is printed below). The seed-0 runs came first; the command with `--seeds 0,1`
# reused them and trained seed 1:
#
#     python -m dino_lite smalldata --preset tinyimagenet --methods beit --fractions 1,0.1 \
#         --seeds 0,1 --finetune-epochs 30 --finetune-seeds 0,1 --finetune-layer-decay 1.0 \
#         --no-baseline --json
#
# Its drop is compared with DINO's and SplitMask's two-seed cells (part 11), image by image as
# there: $(d_{100} - d_{10}) - (b_{100} - b_{10})$ per held-out image, each term the mean hit over
# the cell's four fine-tunings, with the four cells' pre-training-seed errors added. Left: BEiT's
# fine-tuning curves; middle: the paper's drops; right: the three drops here, and DINO's minus
# BEiT's (95% interval, t).

# %%
from dino_lite.smalldata import difference

beit = at_fair_protocol("smalldata-beit8000-frac-2seeds-bf16.json", 8000, [0, 1])
assert beit["mim_sets"] == eight["mim_sets"] and not beit["left_out"], beit["left_out"]
beit_cells = {(c["method"], c["fraction"]): c for c in beit["cells"]}
assert sorted(beit_cells) == [("beit", 0.1), ("beit", 1.0)], sorted(beit_cells)
assert all(c["tokenizer"] == "random_projection" and c["seeds"] == [0, 1] for c in beit_cells.values())
reused(at_fair_protocol("smalldata-beit8000-frac-bf16.json", 8000, [0])["runs"], beit["runs"])   # seed 0's runs are the first command's
b_drop, b_drop_se = beit["drops"]["beit"]["drop"], beit["drops"]["beit"]["se"]
beit_over = {f: over_random_init(beit_cells[("beit", f)], beit["runs"], fair_base) for f in [1.0, 0.1]}
beit_frozen = {k: binomial_gap(beit_cells[("beit", 1.0)][k], fair_base[k]) for k in ("knn_top1", "linear_top1")}
# DINO's drop minus BEiT's over the eight runs of the four cells (two pre-training seeds each),
# counted here as in part 11, and by the package
runs_b = eight["runs"] + beit["runs"]
keys_b = [("dino", 1.0), ("dino", 0.1), ("beit", 1.0), ("beit", 0.1)]
hit_b = {k: cell_hits(runs_b, k) for k in [*eight_cells, *beit_cells]}   # the six cells' mean hits
seed_means_b, seed_se_b = pretraining_seeds(runs_b, keys_b)
spreads_b = [(s, 1) for s in seed_se_b]
diff_b, diff_b_se, nu_b, q_b, (blo, bhi) = drop_difference(hit_b, spreads_b, b="beit")
cells_b = eight["cells"] + beit["cells"]
pkg_b = difference(drops(cells_b, runs_b), "dino", "beit", cells_b, runs_b)
paper_diff_b = paper_drop["dino"] - paper_drop["beit"]

fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(13, 3.8), gridspec_kw={"width_ratios": [3, 1.4, 1.9]})
beit_colours = {(1.0, 0): "tab:brown", (1.0, 1): "tab:olive", (0.1, 0): "tab:pink", (0.1, 1): "tab:gray"}
curve_panel(ax, [(f"BEiT on {r['fraction']:.0%}, seed {r['seed']}", r["curves"], beit_colours[(r["fraction"], r["seed"])])
                 for r in beit["runs"]] +
            [("random init", fair_base["curves"], "tab:orange")],
            f"fine-tuning on all labelled images after {beit['steps']:,} BEiT steps", legend_size=6)
paper_panel(bx)
rows = [("DINO", eight_drops["dino"]["drop"], 2 * eight_drops["dino"]["se"], "tab:green"),
        ("SplitMask", eight_drops["splitmask"]["drop"], 2 * eight_drops["splitmask"]["se"], "tab:blue"),
        ("BEiT", b_drop, 2 * b_drop_se, "tab:brown"),
        ("DINO's drop -\nBEiT's", diff_b, q_b * diff_b_se, "tab:purple")]
cx.bar_label(cx.bar(range(4), [r[1] for r in rows], yerr=[r[2] for r in rows], capsize=5,
                    color=[r[3] for r in rows]), fmt="%+.1f", fontsize=8, label_type="center")
cx.set_xticks(range(4), [r[0] for r in rows], fontsize=8)
cx.set_ylabel("top-1 lost from 100% to 10%\n(points, paired; bars: 2 SE,\nthe difference: 95% t)")
cx.set_title(f"here, two pre-training seeds per cell ({beit['precision']})", fontsize=9)
cx.axhline(0, color="k", lw=0.8)
fig.tight_layout()
plt.show()
b100, b10 = beit_cells[("beit", 1.0)], beit_cells[("beit", 0.1)]
display(Markdown(
    "Pre-trained by BEiT, the encoder fine-tunes to " + " and ".join(
        f"**{100 * c['finetune_top1']:.1f}%** on {f:.0%} (pre-training seeds "
        f"{seed_means_b[('beit', f)][0]:.1f} and {seed_means_b[('beit', f)][1]:.1f}, each the mean of two "
        f"fine-tunings; {'converged' if c['converged'] else 'not converged'} by the rule; over random init "
        f"{beit_over[f]['over_random_init']:+.1f} +- {beit_over[f]['over_random_init_se']:.1f}, "
        f"{versus(beit_over[f]['over_random_init'], beit_over[f]['over_random_init_se'])} it)"
        for f, c in ((1.0, b100), (0.1, b10))) +
    f". Its drop from 100% to 10% is **{b_drop:+.1f} +- {b_drop_se:.1f} points**, "
    f"**{'beyond' if abs(b_drop) > 2 * b_drop_se else 'within'} two standard errors** of zero "
    f"(the paper's BEiT: {paper_drop['beit']:.1f}). DINO's and SplitMask's drops at two "
    f"pre-training seeds (part 11): {eight_drops['dino']['drop']:+.1f} +- {eight_drops['dino']['se']:.1f} and "
    f"{eight_drops['splitmask']['drop']:+.1f} +- {eight_drops['splitmask']['se']:.1f}. **DINO's drop minus BEiT's: "
    f"{diff_b:+.1f} +- {diff_b_se:.1f} points** (95% interval, Student's t with {nu_b:.0f} degrees of "
    f"freedom: {blo:+.1f} to {bhi:+.1f}); the paper's {paper_diff_b:.1f} points is "
    f"**{'inside' if blo <= paper_diff_b <= bhi else 'outside'}** it. Frozen, BEiT's 100% cell "
    "scores " + " and ".join(
        f"{name} {100 * b100[k]:.1f}% ({versus(*beit_frozen[k])} random init's {100 * fair_base[k]:.1f}%)"
        for name, k in (("k-NN", "knn_top1"), ("linear probe", "linear_top1"))) +
    f"; SplitMask's 100% cell scores k-NN {100 * eight_cells[('splitmask', 1.0)]['knn_top1']:.1f}% and linear "
    f"{100 * eight_cells[('splitmask', 1.0)]['linear_top1']:.1f}%.\n\nBEiT's cells ran on "
    f"{'another CPU than' if beit['machine'] != eight['machine'] else 'the same CPU as'} parts 8-11's "
    f"(same recipe and precision; another CPU is not bit for bit the same arithmetic). Machines as the "
    f"result files record them (CPU family / model / name, torch, ISA): BEiT's cells `{beit['machine']}`, "
    f"parts 8-11's `{eight['machine']}`; both fine-tune in {beit['precision']}."))

# %% [markdown]
# **Reading it.** BEiT behaves here as SplitMask does (parts 9-11):
# - **Its pre-training adds little after fine-tuning**: at both fractions the encoder
#   fine-tunes level with random init, within two standard errors, although its frozen features
#   did learn (k-NN and linear probe above random init's). A pre-training that adds little
#   has little to lose.
# - **Its drop from 100% to 10% is within two standard errors of zero**, as DINO's and
#   SplitMask's are, and DINO's drop minus BEiT's is within its interval of zero; a difference
#   the size of the paper's (DINO losing 4.6 points more than BEiT) lies outside that interval.
# - **The pre-training seeds' spread is in that interval now**, as in part 11 (two seeds per
#   cell, one degree of freedom each, hence Student's t). Cautions: the masked models' learning
#   rate was not tuned at this length, the machines differ as rendered above, and this is a
#   miniature of 20 classes.
#   The three tokenizers at this budget are compared in `docs/masked-image-modelling.md`.

# %% [markdown]
# ## 14 · The paper's DINO: the study's cells without iBOT's and KoLeo's terms
# Every DINO cell in parts 8-13 carries two additions of the `tinyimagenet` preset (part 6,
# "Which DINO"): iBOT's masked patch prediction, itself a masked-prediction objective, and
# KoLeo. So the four DINO cells were pre-trained again with both switched off, everything else as
# in part 11 (8,000 steps, pre-training seeds 0 and 1, fine-tuning seeds 0 and 1, bf16, on the
# EPYC of part 13):
#
#     python -m dino_lite smalldata --data ../shared/data/tinyimagenet-dev20 --methods dino \
#         --set koleo=0 --set ibot=0 --no-baseline --out OUT --json
#
# This is now the command's own DINO: `smalldata` gives DINO's cells `koleo=0 ibot=0` by default
# (`smalldata.DINO_SETS`; `--dino-set` changes it), so the study compares the paper's three
# methods. Here the four cells meet the masked models' cells (parts 11 and 13) and random init
# (part 6), image by image as before. Left: each DINO cell with and without the two terms, and
# random init; middle: the paper's drops; right: the drops here, and the paper's DINO's drop minus
# each masked model's (95% interval, t).

# %%
from dino_lite.smalldata import verdict

paper_dino = at_fair_protocol("smalldata-dino8000-paper-bf16.json", 8000, [0, 1])
assert sorted(paper_dino["sets"]) == ["ibot=0", "koleo=0"] and not paper_dino["left_out"], paper_dino["sets"]
pd_cells = {(c["method"], c["fraction"]): c for c in paper_dino["cells"]}
assert sorted(pd_cells) == [("dino", 0.1), ("dino", 1.0)], sorted(pd_cells)


def cell_apart(runs_a, runs_b, key, cell_a, cell_b):
    """Cell ``a`` minus cell ``b`` (points) over the same held-out images: the per-image mean hits
    paired, both cells' pre-training-seed errors added (two independent sets of encoders)."""
    per_image = cell_hits(runs_a, key) - cell_hits(runs_b, key)
    se = np.hypot.reduce([100 * per_image.std(ddof=1) / np.sqrt(len(per_image)),
                          100 * cell_a["seed_se"], 100 * cell_b["seed_se"]])
    return 100 * float(per_image.mean()), float(se)


# the paper's DINO beside the masked models' cells: one set of runs, one set of cells
masked_runs = [r for r in eight["runs"] if r["method"] == "splitmask"] + beit["runs"]
masked_cells = [c for c in eight["cells"] if c["method"] == "splitmask"] + beit["cells"]
runs_p, cells_p = paper_dino["runs"] + masked_runs, paper_dino["cells"] + masked_cells
drops_p = drops(cells_p, runs_p)
versus_p = {b: difference(drops_p, "dino", b, cells_p, runs_p) for b in ("splitmask", "beit")}
hand_p = {}                     # the same differences counted here, image by image (part 11's way)
for mim in ("splitmask", "beit"):
    keys_pb = [("dino", 1.0), ("dino", 0.1), (mim, 1.0), (mim, 0.1)]
    _, seed_se_pb = pretraining_seeds(runs_p, keys_pb)
    hand_p[mim] = drop_difference({k: cell_hits(runs_p, k) for k in keys_pb}, [(s, 1) for s in seed_se_pb], b=mim)
lead_p = {f: over_random_init(pd_cells[("dino", f)], paper_dino["runs"], fair_base) for f in [1.0, 0.1]}
names_mim = {"splitmask": "SplitMask", "beit": "BEiT"}
terms = {f: cell_apart(eight["runs"], paper_dino["runs"], ("dino", f), eight_cells[("dino", f)],
                       pd_cells[("dino", f)]) for f in [1.0, 0.1]}          # with the terms minus without

fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(13, 3.9), gridspec_kw={"width_ratios": [2.0, 1.2, 2.8]})
for i_f, frac in enumerate((1.0, 0.1)):
    for dx, pd_c, colour, pd_label in ((-0.15, eight_cells[("dino", frac)], "tab:green", "DINO + iBOT + KoLeo (parts 8-11)"),
                                       (0.15, pd_cells[("dino", frac)], "tab:olive", "the paper's DINO")):
        ax.errorbar(i_f + dx, 100 * pd_c["finetune_top1"], yerr=200 * pd_c["finetune_se"], fmt="o", capsize=4,
                    color=colour, label=pd_label if i_f == 0 else None)
ax.axhline(100 * fair_base["finetune_top1"], color="tab:orange", ls="--",
           label=f"random init ({100 * fair_base['finetune_top1']:.1f}%)")
ax.set_xticks([0, 1], ["100% of the images", "10%"])
ax.set_xlim(-0.6, 1.6)
ax.set_ylabel("held-out top-1 after fine-tuning (%)")
ax.set_title(f"DINO's cells, {paper_dino['steps']:,} steps, 30 epochs ({paper_dino['precision']}; bars: 2 SE)", fontsize=9)
ax.grid(axis="y", alpha=0.3)
ax.set_ylim(100 * fair_base["finetune_top1"] - 5, None)   # room for the legend below the cells
ax.legend(fontsize=7, loc="lower center")
paper_panel(bx)
rows = [("paper's\nDINO", drops_p["dino"]["drop"], 2 * drops_p["dino"]["se"], "tab:olive"),
        ("DINO +\niBOT, KoLeo", eight_drops["dino"]["drop"], 2 * eight_drops["dino"]["se"], "tab:green"),
        ("SplitMask", drops_p["splitmask"]["drop"], 2 * drops_p["splitmask"]["se"], "tab:blue"),
        ("BEiT", drops_p["beit"]["drop"], 2 * drops_p["beit"]["se"], "tab:brown")]
rows += [(f"paper's\nDINO -\n{names_mim[b]}", d["difference"], d["quantile"] * d["se"], "tab:purple")
         for b, d in versus_p.items()]
cx.bar_label(cx.bar(range(len(rows)), [r[1] for r in rows], yerr=[r[2] for r in rows], capsize=5,
                    color=[r[3] for r in rows]), fmt="%+.1f", fontsize=8, label_type="center")
cx.set_xticks(range(len(rows)), [r[0] for r in rows], fontsize=6.5)
cx.set_ylabel("top-1 lost from 100% to 10%\n(points, paired; bars: 2 SE,\nthe differences: 95% t)")
cx.set_title("here: the drops and their differences", fontsize=9)
cx.axhline(0, color="k", lw=0.8)
fig.tight_layout()
plt.show()
dp = drops_p["dino"]
display(Markdown(
    "Without iBOT's and KoLeo's terms, DINO fine-tunes to " + " and ".join(
        f"**{100 * pd_cells[('dino', f)]['finetune_top1']:.1f}%** on {f:.0%} ({lead_p[f]['over_random_init']:+.1f} +- "
        f"{lead_p[f]['over_random_init_se']:.1f} over random init, {versus(lead_p[f]['over_random_init'], lead_p[f]['over_random_init_se'])} it; "
        f"the two terms add {terms[f][0]:+.1f} +- {terms[f][1]:.1f} points, {'beyond' if abs(terms[f][0]) > 2 * terms[f][1] else 'within'} "
        f"two standard errors of zero)" for f in (1.0, 0.1)) +
    f". Frozen, its 100% cell scores k-NN {100 * pd_cells[('dino', 1.0)]['knn_top1']:.1f}% and linear "
    f"{100 * pd_cells[('dino', 1.0)]['linear_top1']:.1f}% (with the terms: {100 * eight_cells[('dino', 1.0)]['knn_top1']:.1f}% "
    f"and {100 * eight_cells[('dino', 1.0)]['linear_top1']:.1f}%). Its drop from 100% to 10%: **{dp['drop']:+.1f} +- "
    f"{dp['se']:.1f} points**, {'beyond' if abs(dp['drop']) > 2 * dp['se'] else 'within'} two standard errors of zero "
    f"(the paper's DINO: {paper_drop['dino']:.1f}). " + ". ".join(
        f"Its drop minus {names_mim[b]}'s: **{d['difference']:+.1f} +- {d['se']:.1f}** (95% interval {d['low']:+.1f} to "
        f"{d['high']:+.1f}, t with {d['df']:.0f} degrees of freedom; the paper's {paper_drop['dino'] - paper_drop[b]:.1f} "
        f"is {'inside' if d['low'] <= paper_drop['dino'] - paper_drop[b] <= d['high'] else 'outside'} it)"
        for b, d in versus_p.items()) + ".\n\n**The package's verdict** on these four cells and SplitMask's: "
    + verdict(drops_p, "dino", "splitmask", cells_p, runs_p)))

# %% [markdown]
# **Reading it.** This is the comparison the paper makes: its DINO against the two masked
# models, on the same images, fine-tuned the same way. The sentences above are rendered from the
# result files, so they hold for these runs whatever they show; what is fixed is the setting:
# a miniature of 20 classes and 10,000 images, 8,000 pre-training steps, two pre-training seeds
# per cell, and the masked models' learning rate not tuned at this length. "With the terms minus
# without" says whether iBOT's and KoLeo's terms carried DINO's cells in parts 8-13; the drop
# and its differences say whether the paper's DINO loses more than the masked models when its
# images shrink tenfold.

# %% [markdown]
# ## 15 · The whole study from one command
# Parts 6-13 measured the cells one command at a time while the budget was being found. The
# package's study is meant to be one resumable command; with every option at its default it is
# the paper's table in miniature (8,000 pre-training steps per cell; DINO, BEiT and SplitMask on
# 10% and 100% of the images; pre-training seeds 0 and 1; every encoder fine-tuned 30 epochs
# with seeds 0 and 1; random init fine-tuned the same way as the baseline):
#
#     python -m dino_lite smalldata --data ../shared/data/tinyimagenet-dev20 --out OUT --json
#
# It ran from one fixed commit on one 2-core CPU in bf16, started again after each interruption
# (it resumes). It reuses every finished cell of its folder, and four of the six cells' runs were
# already there: DINO's are part 14's (the
# paper's DINO is the command's own since then, so the same settings: copied in and reused),
# BEiT's part 13's (trained into that folder by the BEiT command, same commit and machine).
# SplitMask's cells and random init were trained again (parts 11-12 ran on another machine,
# whose checkpoints are gone). So besides the study's own table and verdict, this part asks
# whether a re-trained run repeats the earlier command's: same seeds and recipe, bf16 on another
# EPYC (the earlier runs on a family 25, these on a family 26), at a later commit. A run need not
# repeat to the last digit: the trainer gives cores to other processes (`dino_lite.threads`,
# unless `OMP_NUM_THREADS` fixes the count, as it did here), and a run that dropped to one thread
# for a while summed in another order from then on, which makes it another run, as another seed
# would; so the question is whether the cells agree within their noise. Left: each
# cell's fine-tuned top-1 here and by the earlier commands; middle: the paper's drops; right:
# the three drops here, and DINO's drop minus each masked model's (95% interval, t).

# %%
whole = at_fair_protocol("smalldata-default-bf16.json", 8000, [0, 1])
assert whole["mim_sets"] == eight["mim_sets"] and not whole["left_out"], whole["left_out"]
assert whole["dino_sets"] == paper_dino["sets"] and not whole["sets"], whole["dino_sets"]   # part 14's DINO
whole_cells = {(c["method"], c["fraction"]): c for c in whole["cells"]}
earlier_cells = {**pd_cells, **beit_cells,                   # the same cells, earlier commands
                 **{k: c for k, c in eight_cells.items() if k[0] == "splitmask"}}
assert sorted(whole_cells) == sorted(earlier_cells), sorted(whole_cells)
reused(beit["runs"], whole["runs"])                           # BEiT's runs are part 13's,
reused(paper_dino["runs"], whole["runs"])                     # DINO's part 14's
whole_base = whole["random_init"]
whole_drops = whole["drops"]
versus_beit = difference(whole_drops, "dino", "beit", whole["cells"], whole["runs"])
versus_sm = whole["difference"]
assert (versus_sm["a"], versus_sm["b"]) == ("dino", "splitmask"), versus_sm
retrained = [k for k in whole_cells if k[0] == "splitmask"]


shift = {k: cell_apart(whole["runs"], eight["runs"], k, whole_cells[k], earlier_cells[k]) for k in retrained}
base_shift = paired_gap(whole_base["finetune_correct"], fair_base["finetune_correct"])
lead = over_random_init(whole_cells[("dino", 1.0)], whole["runs"], whole_base)
cell_order = [("dino", 1.0), ("dino", 0.1), ("splitmask", 1.0), ("splitmask", 0.1), ("beit", 1.0), ("beit", 0.1)]
method_colour = {"dino": "tab:green", "splitmask": "tab:blue", "beit": "tab:brown"}
label = {"dino": "DINO", "splitmask": "SplitMask", "beit": "BEiT"}

fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(13, 4.2), gridspec_kw={"width_ratios": [3, 1.3, 2.1]})
for i, key in enumerate(cell_order):
    for dx, c, style in ((-0.12, whole_cells[key], "o"), (0.12, earlier_cells[key], "s")):
        ax.errorbar(i + dx, 100 * c["finetune_top1"], yerr=200 * c["finetune_se"], fmt=style, capsize=4,
                    color=method_colour[key[0]], mfc="white" if style == "s" else None)
ax.axhline(100 * whole_base["finetune_top1"], color="tab:orange", ls="--",
           label=f"random init, this run ({100 * whole_base['finetune_top1']:.1f}%)")
ax.axhline(100 * fair_base["finetune_top1"], color="tab:orange", ls=":",
           label=f"random init, part 6's command ({100 * fair_base['finetune_top1']:.1f}%)")
ax.errorbar([], [], yerr=[], fmt="o", color="gray", capsize=4, label="this run (bars: 2 SE)")
ax.errorbar([], [], yerr=[], fmt="s", color="gray", mfc="white", capsize=4,
            label="the earlier commands, parts 11, 13 and 14")
ax.set_xticks(range(len(cell_order)), [f"{label[m]}\non {f:.0%}" for m, f in cell_order], fontsize=8)
ax.set_ylabel("held-out top-1 after fine-tuning (%)")
ax.set_title(f"the six cells, {whole['steps']:,} steps, 30-epoch fine-tuning ({whole['precision']})", fontsize=9)
ax.grid(axis="y", alpha=0.3)
ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2)
paper_panel(bx)
rows = [(label[m], whole_drops[m]["drop"], 2 * whole_drops[m]["se"], method_colour[m]) for m in paper_drop]   # the paper's order
rows += [(f"DINO's -\n{label[d['b']]}'s", d["difference"], d["quantile"] * d["se"], "tab:purple")
         for d in (versus_sm, versus_beit)]
cx.bar(range(len(rows)), [r[1] for r in rows], yerr=[r[2] for r in rows], capsize=5, color=[r[3] for r in rows])
for i, r in enumerate(rows):                                  # the value beside its error bar, not under it
    cx.annotate(f"{r[1]:+.1f}", (i + 0.08, r[1] / 2), fontsize=8, ha="left", va="center")
cx.set_xticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
cx.set_ylabel("top-1 lost from 100% to 10%\n(points, paired; bars: 2 SE,\nthe differences: 95% t)")
cx.set_title("this run: the drops and their differences", fontsize=9)
cx.axhline(0, color="k", lw=0.8)
fig.tight_layout()
plt.show()

# the study's fine-tuning curves: every encoder's two fine-tunings, by method, beside random init's
fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), sharey=True)
for ax, m in zip(axes, ("dino", "splitmask", "beit")):
    for r in (r for r in whole["runs"] if r["method"] == m):
        for curve, style in zip(r["curves"], ["-", "--"]):
            ax.plot(range(1, len(curve) + 1), [100 * v for v in curve], style, lw=1,
                    color=method_colour[m], alpha=1.0 if r["fraction"] == 1 else 0.45)
    for curve, style in zip(whole_base["curves"], ["-", "--"]):
        ax.plot(range(1, len(curve) + 1), [100 * v for v in curve], style, lw=1, color="tab:orange")
    ax.plot([], [], color=method_colour[m], label=f"{label[m]} on 100% (2 pre-training seeds)")
    ax.plot([], [], color=method_colour[m], alpha=0.45, label=f"{label[m]} on 10%")
    ax.plot([], [], color="tab:orange", label="random init")
    ax.plot([], [], "k--", lw=1, label="dashed: fine-tuning seed 1")
    ax.set_xlabel("fine-tuning epoch")
    ax.set_title(f"{label[m]}: every fine-tuning of the study", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="lower right")
axes[0].set_ylabel("held-out top-1 (%)")
fig.tight_layout()
plt.show()

hours = lambda s: s / 3600                                    # noqa: E731
table = ["| cell | k-NN | linear | fine-tuned (2 SE) | over random init (paired) | converged |",
         "| --- | ---: | ---: | ---: | ---: | --- |"]
for key in cell_order:
    c = whole_cells[key]
    table.append(f"| {label[key[0]]} on {key[1]:.0%} | {100 * c['knn_top1']:.1f}% | {100 * c['linear_top1']:.1f}% | "
                 f"{100 * c['finetune_top1']:.1f}% (+- {200 * c['finetune_se']:.1f}) | "
                 f"{c['over_random_init']:+.1f} +- {c['over_random_init_se']:.1f} | {'yes' if c['converged'] else 'no'} |")
table.append(f"| random init | {100 * whole_base['knn_top1']:.1f}% | {100 * whole_base['linear_top1']:.1f}% | "
             f"{100 * whole_base['finetune_top1']:.1f}% (+- {200 * whole_base['finetune_se']:.1f}) | | "
             f"{'yes' if whole_base['converged'] else 'no'} |")
far = [k for k, (g, e) in shift.items() if abs(g) > 2 * e]
run_scores = lambda r: (r["knn_top1"], r["linear_top1"], r["finetune_top1_seeds"])   # noqa: E731
earlier_runs = {run_key(r): r for r in eight["runs"]}
identical = [run_key(r) for r in whole["runs"]
             if r["method"] == "splitmask" and run_scores(r) == run_scores(earlier_runs[run_key(r)])]
base_identical = whole_base["finetune_top1_seeds"] == fair_base["finetune_top1_seeds"]
display(Markdown(
    "\n".join(table) + "\n\n"
    f"The study's verdict, as the command wrote it: *{whole['verdict']}* DINO's drop minus BEiT's: "
    f"{versus_beit['difference']:+.1f} +- {versus_beit['se']:.1f} points (95% interval {versus_beit['low']:+.1f} to "
    f"{versus_beit['high']:+.1f}). " + "; ".join(
        f"the paper's DINO loses {paper_drop['dino'] - paper_drop[d['b']]:.1f} points more than its {label[d['b']]}: "
        f"{'inside' if d['low'] <= paper_drop['dino'] - paper_drop[d['b']] <= d['high'] else 'outside'} the interval"
        for d in (versus_sm, versus_beit)).replace("the", "The", 1) +
    f". DINO on 100% fine-tunes **{lead['over_random_init']:+.1f} +- {lead['over_random_init_se']:.1f} "
    f"points** over this run's random init ({versus(lead['over_random_init'], lead['over_random_init_se'])} it, "
    f"both fine-tuned 30 epochs).\n\n"
    f"Of the {sum(k[0] == 'splitmask' for k in map(run_key, whole['runs']))} re-trained runs (a cell at one "
    f"pre-training seed), **{len(identical) or 'none'} repeat{'s' if not identical else ''} the earlier command's "
    f"to the last digit** (k-NN, linear probe and both fine-tunings)" +
    (": " + ", ".join(f"{label[m]} on {f:.0%} seed {s}" for m, f, s in identical) if identical else "") +
    f"; random init's two fine-tunings {'repeat part 6' if base_identical else 'do not repeat part 6'}'s "
    f"to the last digit{' (so the fine-tuning kernels agree on the two CPUs)' if base_identical else ''}. "
    f"Each cell minus the earlier command's (paired over the images, both cells' seed errors added): " +
    "; ".join(f"{label[m]} on {f:.0%} {g:+.1f} +- {e:.1f}" for (m, f), (g, e) in shift.items()) +
    (f"; random init identical. " if base_identical else
     f"; random init {base_shift[0]:+.1f} +- {base_shift[1]:.1f} (one encoder, two fine-tunings each side). ") +
    (f"{len(far)} of the {len(shift)} re-trained cells moved by more than two standard errors." if far else
     f"None of the {len(shift)} re-trained cells moved by more than two standard errors: the run reproduces "
     "the earlier commands' table within its noise.") +
    f"\n\nMachine (CPU family / model / name, torch, ISA): `{whole['machine']}`; commit `{whole['commit'][:7]}`; "
    f"the CPU time the file counts, as each cell was computed (the reused cells included): pre-training "
    f"{hours(whole['compute']['pretrain_cpu_s']):.1f} CPU-h, scoring and fine-tuning "
    f"{hours(whole['compute']['score_cpu_s']):.1f} CPU-h."))

# %% [markdown]
# **Reading the curves.** DINO's encoders pre-trained on 100% begin their fine-tuning far *below*
# random init after the first epoch (more than 5 points; the cell below prints the numbers; with
# KoLeo and iBOT the same cells started above it; `docs/masked-image-modelling.md`, "Why the
# paper's DINO lags on 100%", finds their features varying along almost one direction), pass it from the
# second epoch on, and lead by more at epoch 5 than at the end. The 10% encoders start above
# random init. Every cell, DINO's and the masked models', leads random init more at epoch 5 than
# at epoch 30: a head start that the fine-tuning gives back, the pattern of part 12, now at the
# command's defaults.

# %%
ri_mean = np.mean(whole_base["curves"], axis=0)
start = {k: np.mean([np.mean(r["curves"], axis=0) for r in whole["runs"] if (r["method"], r["fraction"]) == k], axis=0)
         for k in (("dino", 1.0), ("dino", 0.1))}
terms_start = np.mean([c[0] for r in eight["runs"] if (r["method"], r["fraction"]) == ("dino", 1.0) for c in r["curves"]])
print("mean top-1 (%) at fine-tuning epochs 1, 2, 5 and 30:")
for name, curve in [("random init", ri_mean), ("DINO on 100%", start[("dino", 1.0)]), ("DINO on 10%", start[("dino", 0.1)])]:
    print(f"  {name:>13}: " + "  ".join(f"{100 * curve[e - 1]:5.1f}" for e in (1, 2, 5, 30)))
print(f"DINO on 100% with KoLeo and iBOT (part 11), epoch 1: {100 * terms_start:.1f}")

# %% [markdown]
# ## Summary
# - BEiT hides ~40% of the patches in blocks, so a hidden patch's neighbours are mostly hidden
#   too; uniform masking leaves most neighbours visible.
# - SplitMask splits the patches into two disjoint halves; each branch's encoder sees only its
#   half (a sequence half as long), and the halves predict each other's tokens.
# - The targets are codeword indices of a fixed codebook; random vectors work as codewords.
# - The hand-written losses match the package's, so the code does what the papers describe.
# - The small-data study's first runs (DINO on 100% of tinyimagenet-dev20 and random init, on a
#   2-core AVX2 CPU): 2,000 pre-training steps give far better frozen features and a head start
#   in fine-tuning, but random init catches up within 6 epochs; without layer decay and fine-tuned
#   for 15 epochs, random init draws level with it. Pre-trained for 4,000 steps, every score is
#   higher than at 2,000 (by less than two standard errors each, one seed), and its fine-tuned
#   lead over random init grows to about 3 points. Unpaired that lead is inside two standard
#   errors; compared image by image over the same held-out images, with two fine-tuning seeds,
#   it is beyond two: at an equal 15-epoch budget, 4,000 steps is the shortest length measured
#   at which DINO fine-tunes clearly above random init. But 15 epochs is not random init's
#   plateau: fine-tuned for 30 epochs it gains about 5 points and ends above DINO's 15-epoch
#   result. So DINO was fine-tuned for 30 epochs too (a new 4,000-step encoder, on a bf16
#   CPU): against random init fine-tuned the same way, its lead is positive but under two
#   standard errors and under the 3-point bar. At an equal 30 epochs, 4,000 steps is not yet
#   a length at which pre-training clearly helps. Pre-trained for 8,000 steps (two
#   pre-training seeds, two fine-tuning seeds each), DINO fine-tunes about 5 points above
#   random init, beyond two standard errors and above the 3-point bar: 8,000 steps is the
#   shortest length measured at which pre-training clearly helps after fine-tuning, and the
#   study's default. Neither is at its plateau at 30 epochs, though: fine-tuned until the rule
#   says their curves have flattened (DINO 60 epochs, random init 90, one seed each), the lead
#   shrinks to about 3 points, beyond two standard errors: pre-training still helps, but
#   much of its 30-epoch lead is a head start.
# - The paper's question at that length, first half: pre-trained on 10% of the images (same
#   8,000 steps, one pre-training seed), DINO fine-tunes level with its 100% cell, within two
#   standard errors (paired over the images), and a drop as large as the paper's 5.3 points is
#   outside the interval. Whether DINO loses *more than SplitMask* needs SplitMask's cells at
#   this length. Its 100% cell (one pre-training seed) fine-tunes level with random init,
#   within two standard errors and under 3 points, and below DINO's 100% cell by more than
#   two: at this length SplitMask's pre-training adds little. Its 10% cell fine-tunes level
#   with its 100% cell too, and the study's verdict over the four cells (one pre-training seed
#   each) is a bound: no difference between DINO's drop and SplitMask's beyond the edge of its
#   95% interval, which leaves out a difference the size of the paper's 5.3 points. With a
#   second pre-training seed of every cell the verdict is still a bound, now with the seeds'
#   spread in its interval (Student's t, since two seeds measure a spread roughly), and the
#   paper's 5.3 points stay outside it: the paper's effect does not show in this miniature,
#   with DINO as trained here (with iBOT's masked patch prediction and KoLeo, part 6; the
#   paper's DINO without them: next bullet).
#   `smalldata --dry-run` prints what the cells cost on your machine.
# - BEiT at the same length (two pre-training seeds) behaves as SplitMask does: level with random
#   init after fine-tuning at both fractions, a drop within two standard errors of zero, and no
#   difference from DINO's drop beyond its interval, which leaves out the paper's 4.6 points.
# - The paper's DINO (part 14), without iBOT's and KoLeo's terms, now the command's default:
#   the two terms had carried DINO's cells (they add points at both fractions, beyond two
#   standard errors). Without them DINO's 100% cell fine-tunes level with random init and its
#   10% cell above it; its drop from 100% to 10% is within two standard errors of zero, and the
#   paper's DINO-minus-SplitMask and DINO-minus-BEiT differences (5.3 and 4.6 points) are
#   outside both intervals: the paper's effect does not show with the paper's DINO either.
# - The whole study as one run of the one command at its defaults (part 15; DINO's and BEiT's
#   cells reused, SplitMask's and random init trained again): its re-trained cells land within
#   two standard errors of the earlier commands', its verdict is a bound that leaves out the
#   paper's 5.3 points (and 4.6 against BEiT), and its DINO on 100% is level with its random init.
# - On real photos the AVX2 run's DINO encoders' head-mean maps overlap the pet far better than
#   random init's (Jaccard), though they put only a few points more of their attention on it,
#   and they do not beat a centre prior of the same area. On the bf16 CPU the 8,000-step
#   encoder of pre-training seed 0 has a head-mean map below random init's (seed 1's is not):
#   one head looks at the top row of patches, so fine-tuning gains and attention maps need not
#   move together.
#   The 10% encoder's head-mean map is above both the 100% encoder's and random init's, and
#   still below the centre prior. SplitMask's objective never reads its CLS token's output,
#   and its CLS attention on the pets is below random init's and the prior, on a corner.
#
# **Exercises.**
# 1. Set `uniform_masks(..., 0.75)` and re-draw the neighbour histogram: why does MAE need to hide
#    far more patches than BEiT when its masks are uniform?
# 2. Run `build_tokenizer("kmeans", 16, 8, 0, shapes, 64)` and redraw an image: how few codewords
#    still keep the shapes recognisable?
# 3. Re-run the study's cells for SplitMask with `--set split=uniform` (the paper's small-data
#    variant, each branch seeing 25%): does it help at 10%?
# 4. Run `python -m dino_lite smalldata --dry-run` and read how long the full study would take
#    on your machine; which part costs most, pre-training or fine-tuning?

# %% [markdown]
# ## Check: the claims above hold
# Each assertion fails if its claim is false: a block mask passing the target or a split that
# overlaps or leaves a patch out (masking bugs); a hand loss differing from the package's by more
# than float rounding (the package's objective is not what the text says; the hand version feeds
# each SplitMask branch's encoder its 32 visible patches only, so a package encoder that saw mask
# tokens would give another loss); the package's SplitMask loss changing when its halves swap
# (asymmetry); the AVX2 DINO encoders putting no more, or 10 points or more, of their attention
# on the pet than random init (the summary's "a few points more"); the 8,000-step encoder of
# pre-training seed 1 below random init's head-mean map by two standard errors; a short run
# whose loss (for DINO: its KL term) did not fall; and the study's statements, read from its result file: DINO's frozen k-NN and
# linear probe, and its top-1 after the first fine-tuning epoch, not above random init's by two
# standard errors; its lead not shrinking epoch after epoch; a fine-tuned gap over random init
# outside two standard errors (then the text's "level" is wrong); a curve marked converged; DINO
# fine-tuning above its own linear probe; drops and a verdict present (then the text's "no
# 10% cells" is stale); the no-decay fine-tuning behind random init at some epoch, or its final
# lead negative or beyond two standard errors; a longer run that is not 15 epochs, or in which
# the two end more than two standard errors apart (then "draws level" and "does not confirm it" are
# wrong); at 4,000 pre-training steps a score not above 2,000 steps' or above it by two standard
# errors, or a fine-tuned lead over random init that does not grow; the paired gap at 4,000 steps
# (two fine-tuning seeds) not beyond two standard errors, not about 3 points, or either seed's
# gap not positive, or the unpaired gap beyond two standard errors (then the summary's "unpaired
# inside, paired beyond" is wrong); random init's 30-epoch fine-tuning not above its 15-epoch
# one by two standard errors, not about 5 points, or not above DINO's 15-epoch mean (then "not
# its plateau" is wrong); at 30 epochs each, a gap beyond two standard errors or above 3
# points, or not positive (then "under two standard errors" is wrong); at 8,000 steps (two
# pre-training seeds), a gap over random init within two standard errors, under 3 points or not
# about 5, or either pre-training seed's gap not positive (then "clearly helps" is wrong); and on pets, the 4,000-step encoder's attention not above
# random init's, either DINO encoder's head-mean map not below the centre prior, or random init
# not below it, each by two standard errors of the paired differences; on the bf16 CPU, the
# 8,000-step encoder's head-mean map not below the 4,000-step one's and random init's (then
# "falls below random init's" is wrong); at 10% of the images, a drop from the 100% cell beyond
# two standard errors, or an interval that contains the paper's 5.3 points, or the package's
# drop differing from the one counted image by image, or a verdict present (then "level" and
# "no verdict yet" are wrong); the 10% encoder's head-mean map not above the 100% one's and
# random init's, or not below the centre prior, by two standard errors; SplitMask's 100% cell
# beyond two standard errors or 3 points over random init, or not below DINO's 100% cell by two
# (then "adds little" and "below DINO's" are wrong), its frozen k-NN or linear probe not above
# random init's or its k-NN not below DINO's by two, or a verdict in its file; its CLS attention
# not below random init's and the centre prior by two standard errors, or not below the pet's
# area in mass; over the four cells, SplitMask's drop or the difference of the two drops beyond
# two standard errors, the paper's 5.3 points inside the interval, SplitMask's 10% cell or its
# frozen scores not level with random init and its 100% cell (then "adds little" and "level" are
# wrong), DINO's two pre-training seeds at 100% further apart than the difference's standard
# error (then "small" is wrong), or the difference counted image by image here (or its t
# interval) not the one in the package's verdict; with two pre-training seeds per cell, the
# difference counted here not the package's (its value, error or degrees of freedom), a cell
# of one pre-training seed left, either drop or the difference beyond two standard errors, the
# paper's 5.3 points inside the interval (then "level" and "left out" are wrong), or a
# SplitMask cell beyond two standard errors of random init (then "level with" is wrong); fine-tuned
# to the plateau, random init converged at 60 epochs or not at 90, or DINO not at 60 (then "needs
# more epochs" is wrong), random init's 30-epoch curve not passing the rule or its 90 epochs not
# above it by two standard errors (then "a flat tail says the schedule ended" is wrong), the lead not shrinking from 30 to 60 epochs to random init's plateau,
# DINO's 30-epoch cell not level with random init's 90 epochs (then "saves about two thirds" is
# wrong), or the lead over the converged random init within two standard errors or not at least
# the 3 points the text renders; for BEiT, a cell beyond two standard errors of random init or
# frozen scores not above random init's (then "adds little" and "did learn" are wrong), its drop
# beyond two standard errors, DINO's drop minus BEiT's beyond its interval of zero or the paper's
# 4.6 points inside it (then "level" and "lies outside" are wrong), or that difference counted
# here not the package's (its value, error or degrees of freedom); for the paper's DINO (part 14),
# the command's DINO overrides not `koleo=0 ibot=0`, its file not part 11's protocol or held-out
# images, its differences counted here not the package's, the two terms adding nothing beyond two
# standard errors at either fraction, its 100% cell beyond two standard errors of random init or
# its 10% cell not above it, its drop beyond two standard errors, or the paper's 5.3 or 4.6 points
# inside their intervals (then the summary's bullet is wrong); for the one command (part 15), its
# DINO not the paper's, a cell of one pre-training seed, DINO's or BEiT's runs not the earlier
# commands', a re-trained cell beyond two standard errors of the earlier command's (then "within
# two standard errors" is wrong), the paper's 5.3 or 4.6 points inside their intervals, or DINO's
# 100% cell beyond two standard errors of this run's random init (then "level" is wrong).

# %%
assert int(block.sum(1).max()) <= target and block.sum(1).float().mean() > 0.8 * target
assert share["block"].mean() < share["uniform"].mean()
assert not (a & b).any() and (a | b).all() and (a.sum(1) == 32).all()
assert not (qa & qb).any() and (qa.sum(1) == 16).all() and (qb.sum(1) == 16).all()
assert torch.allclose(beit_package, beit_hand, rtol=1e-4, atol=1e-4), (beit_package, beit_hand)
assert torch.allclose(split_package, split_hand, rtol=1e-4, atol=1e-4), (split_package, split_hand)
assert abs(split_stats["infonce"] - nce_hand.item()) < 1e-4
assert seq_a == 32 and torch.allclose(swapped, split_package, rtol=1e-5, atol=1e-5)
for method, log in runs.items():          # the student's part of each objective falls
    key = "kl" if method == "dino" else "loss"
    first, last = np.mean([r[key] for r in log[:5]]), np.mean([r[key] for r in log[-5:]])
    assert last < first, (method, key, first, last)
dino = cells[("dino", 1.0)]
for key in ("knn_top1", "linear_top1"):                  # frozen: clearly better features
    d, e = binomial_gap(dino[key], base[key])
    assert d > 2 * e, (key, d, e)
dino_curve, base_curve = study["runs"][0]["curves"][0], base["curves"][0]
d, e = binomial_gap(dino_curve[0], base_curve[0])
assert d > 2 * e, (d, e)                                   # ahead after the first epoch
gaps = np.subtract(dino_curve, base_curve)
assert (np.diff(gaps) < 0).all(), gaps                     # the lead shrinks every epoch
assert abs(dino["over_random_init"]) < 2 * dino["over_random_init_se"], dino   # level at the end
assert dino["converged"] is False and base["converged"] is False
assert dino["finetune_top1"] < dino["linear_top1"]
assert not study["drops"] and study["verdict"] is None     # no 10% cells: no answer yet
nd_curve = [c["top1"] for c in no_decay["curve"]]          # without layer decay:
assert all(a > b for a, b in zip(nd_curve, base_curve))    # ahead at every epoch,
d, e = binomial_gap(no_decay["finetune_top1"], base["finetune_top1"])
assert 0 < d < 2 * e, (d, e)                               # a final lead inside 2 SEs
for run in (long_base, long_dino):                         # the longer runs: 15 epochs each,
    assert run["epochs"] == 15 and len(run["curve"]) == 15, run["epochs"]
assert abs(long_gap) < 2 * long_se, (long_gap, long_se)     # where random init draws level
scores = ("knn_top1", "linear_top1", "finetune_top1")  # pre-training length: at 4,000 steps
for key in scores:                                         # every score above 2,000 steps
    d, e = binomial_gap(length[4000][key], length[2000][key])
    assert 0 < d < 2 * e, (key, d, e)                      # by less than two SEs each,
assert 0 < length_gap[2000][0] < length_gap[4000][0]       # the fine-tuned lead grows,
assert np.allclose([c["top1"] for c in tuned["dino-4000"][0]["curve"]], length[4000]["curve"],
                   atol=1e-6)                                # seed 0 re-run: the study's own curve,
assert clear == [4000], (clear, g_pair, e_pair)             # paired, 4,000 steps is beyond two SEs,
assert abs(g_pair - 3) < 0.5 and g_pair < 2 * e_unpaired    # about 3 points, inside 2 SEs unpaired,
for dino_run, base_run in zip(*tuned.values()):             # and each fine-tuning seed agrees
    assert paired_gap([dino_run["correct"]], [base_run["correct"]])[0] > 0, dino_run["seed"]
assert g30 > 2 * e30 and abs(g30 - 5) < 1.5, (g30, e30)   # 15 epochs: not random init's plateau,
assert 100 * long30["finetune_top1"] > dino15              # 30 epochs of it beat DINO's 15
assert 0 < g_fair < min(3, 2 * e_fair), (g_fair, e_fair)  # 30 epochs each: a lead under 2 SE
assert g_twice > max(3, 2 * e_twice) and abs(g_twice - 5) < 1.5, (g_twice, e_twice)  # 8,000: clear, ~5 points,
assert sum(map(converged, fair_base["curves"])) == 1       # part 12: one of random init's two 30-epoch curves passes the rule
assert all(g > 0 for g, _ in twice_seed_gaps) and shortest == 8000   # at both pre-training seeds
assert g_rand > 2 * e_rand                                 # attention: DINO beats random init,
assert g_prior < -2 * e_prior                              # not the centre prior (head mean),
d, e = paired(pets["dino2000"]["per_image"], pets["dino2000"]["per_image_centre_prior"])
assert d < -2 * e, (d, e)                                  # nor does the 2,000-step encoder,
assert g_rp < -2 * e_rp                                    # random init is far below it
mass_gain = [p["object_mass"] - pets["random-init"]["object_mass"] for n, p in pets.items() if n != "random-init"]
assert all(0 < g < 0.1 for g in mass_gain), mass_gain       # a few points more attention mass on the pet
d, e = paired(d8s1["per_image"], r16["per_image"])
assert d > -2 * e, (d, e)                                  # seed 1's 8,000-step map is not below random init's
assert g84 < -2 * e84 and g8r < -2 * e8r, (g84, e84, g8r, e8r)   # bf16: 8,000 steps' map falls
assert abs(drop - small_drops["dino"]["drop"]) < 1e-3, (drop, small_drops)   # 10%: the drop counted
assert abs(drop) < 2 * drop_se and not lo <= paper_drop["dino"] <= hi, (drop, drop_se)   # level, not 5.3,
assert small["verdict"] is None and "splitmask" not in small_drops        # and no verdict yet
assert g10_100 > 2 * e10_100 and g10r > 2 * e10r and g10p < -2 * e10p, (g10_100, g10r, g10p)
assert abs(g_sm) < 2 * e_sm and g_sm < 3 and g_sd < -2 * e_sd, (g_sm, e_sm, g_sd, e_sd)   # SplitMask: little,
assert all(d > 2 * e for (d, e), _ in frozen_sm.values()), frozen_sm      # its frozen features learned,
assert all(frozen_sm[k][1][0] > 2 * frozen_sm[k][1][1] for k in frozen_sm)   # less than DINO's, both probes,
assert sm["verdict"] is None and not sm["drops"]                         # no 10% cell yet
assert gsr < -2 * esr and gsp < -2 * esp and psm["object_mass"] < psm["object_area"], (gsr, gsp)
assert abs(sm_drop) < 2 * sm_drop_se and abs(diff) < 2 * diff_se, (sm_drop, diff, diff_se)   # four cells: level,
assert not dlo <= paper_diff <= dhi, (dlo, dhi)                           # the paper's 5.3 left out,
assert abs(g_sm10) < 2 * e_sm10 and all(abs(d) < 2 * e for d, e in sm_frozen.values()), (g_sm10, sm_frozen)
assert abs(seed_top1[0] - seed_top1[1]) < diff_se, seed_top1            # DINO's seed spread: small
assert four["verdict"].startswith("No difference larger than")           # the package's sentence,
assert f"{diff:+.1f} +- {diff_se:.1f}" in four["verdict"], (diff, diff_se, four["verdict"])   # counted alike,
assert abs(four["difference"]["df"] - nu) < 1e-6 and abs(four["difference"]["high"] - dhi) < 1e-4   # t's interval too
assert abs(diff2_pkg - diff2) < 1e-3, (diff2_pkg, diff2)                 # two pre-training seeds: counted alike,
assert f"{diff2_pkg:+.1f} +- {diff2_se:.1f}" in eight["verdict"] and abs(eight["difference"]["df"] - nu2) < 1e-6
assert all(len(c["seeds"]) == 2 for c in eight_cells.values()) and "one pre-training seed" not in eight["verdict"]
assert all(w == "within" for w in where.values()) and abs(diff2) < 2 * diff2_se, (eight_drops, diff2, diff2_se)
assert not lo2 <= paper_diff <= hi2 and eight["verdict"].startswith("No difference larger than"), (lo2, hi2)
assert all(abs(g["over_random_init"]) < 2 * g["over_random_init_se"] for g in sm_over.values()), sm_over
assert flat["random init, 90 epochs"] and flat["DINO, 60 epochs"] and not flat["random init, 60 epochs"], flat
assert flat["random init, 30 epochs"] and rand_gain_all[0] > 2 * rand_gain_all[1], rand_gain_all   # rule fooled
assert long_gaps[0][1] > long_gaps[1][1] > long_gaps[2][1], long_gaps     # the lead shrinks,
assert abs(g_cell90) < 2 * e_cell90, (g_cell90, e_cell90)                 # 30 epochs of DINO ~ 90 of random init,
assert g90 > 2 * e90 and bar_word != "below" and abs(g90 - 3) < 1, (g90, e90)   # the converged lead: beyond 2 SE, about 3
assert all(abs(g["over_random_init"]) < 2 * g["over_random_init_se"] for g in beit_over.values()), beit_over   # BEiT: little,
assert all(d > 2 * e for d, e in beit_frozen.values()), beit_frozen                 # its frozen features learned,
assert abs(b_drop) < 2 * b_drop_se and blo < 0 < bhi and not blo <= paper_diff_b <= bhi, (b_drop, blo, bhi)   # level, not 4.6,
assert abs(pkg_b["difference"] - diff_b) < 1e-3 and abs(pkg_b["se"] - diff_b_se) < 1e-6 and abs(pkg_b["df"] - nu_b) < 1e-6, (pkg_b, diff_b)
from dino_lite import smalldata as _sd                                     # part 14: the command's DINO
assert _sd.DINO_SETS == ("koleo=0", "ibot=0"), _sd.DINO_SETS              # is the paper's (no KoLeo, no iBOT),
paper_cfg = make_config("tinyimagenet", {}, list(_sd.DINO_SETS))          # whatever the preset adds
assert (paper_cfg.koleo, paper_cfg.ibot) == (0, 0), (paper_cfg.koleo, paper_cfg.ibot)
assert all(paper_dino[k] == eight[k] for k in ("finetune", "steps", "seeds")) and Path(paper_dino["data"]).name == Path(eight["data"]).name   # as in part 11,
assert {r["test_images"] for r in runs_p} == {eight["runs"][0]["test_images"]}        # on the same held-out images,
for mim, (d_h, e_h, nu_h, _, _) in hand_p.items():                       # its differences counted alike
    assert abs(versus_p[mim]["difference"] - d_h) < 1e-3 and abs(versus_p[mim]["se"] - e_h) < 1e-6 and abs(versus_p[mim]["df"] - nu_h) < 1e-6, (mim, versus_p[mim], d_h)
assert all(terms[f][0] > 2 * terms[f][1] for f in terms), terms               # the two terms carried DINO,
assert abs(lead_p[1.0]["over_random_init"]) < 2 * lead_p[1.0]["over_random_init_se"], lead_p[1.0]   # 100%: level,
assert lead_p[0.1]["over_random_init"] > 2 * lead_p[0.1]["over_random_init_se"], lead_p[0.1]         # 10%: above,
assert abs(drops_p["dino"]["drop"]) < 2 * drops_p["dino"]["se"], drops_p["dino"]     # its drop: level,
assert all(not d["low"] <= paper_drop["dino"] - paper_drop[m] <= d["high"] for m, d in versus_p.items()), versus_p   # 5.3, 4.6 outside
assert all(len(c["seeds"]) == 2 for c in whole_cells.values()), whole_cells               # part 15: two seeds per cell,
assert not far, shift                                                                       # re-trained cells within 2 SE,
assert whole["verdict"].startswith("No difference larger than") and all(
    not d["low"] <= paper_drop["dino"] - paper_drop[d["b"]] <= d["high"] for d in (versus_sm, versus_beit)), (versus_sm, versus_beit)
assert abs(lead["over_random_init"]) < 2 * lead["over_random_init_se"], lead               # DINO 100%: level
d100, d10 = start[("dino", 1.0)], start[("dino", 0.1)]                                    # the curves: 100% starts below,
assert d100[0] < ri_mean[0] - 0.05 and (d100[1:] > ri_mean[1:]).all() and d10[0] > ri_mean[0], (d100, ri_mean)
assert terms_start > ri_mean[0], terms_start                                              # with the terms: above
early_late = {k: (np.mean([c[4] for r in whole["runs"] if (r["method"], r["fraction"]) == k for c in r["curves"]]) - ri_mean[4],
                  np.mean([c[-1] for r in whole["runs"] if (r["method"], r["fraction"]) == k for c in r["curves"]]) - ri_mean[-1])
              for k in whole_cells}
assert all(e > l > 0 for e, l in early_late.values()), early_late                         # every cell leads most early
