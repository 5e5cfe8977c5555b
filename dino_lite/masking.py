"""Which patches a masked image model hides: BEiT's blocks, MAE-style uniform masks, SplitMask's split.

Masks are bool tensors over an image's patches in row-major order (``[patches]`` for one image,
``[batch, patches]`` for a batch); True marks a masked patch. Every draw comes from a
``torch.Generator``, so a seed fixes the masks on any number of processes.

Block-wise masking (BEiT, Bao et al. 2021) hides a target number of patches as a union of
rectangles: each new rectangle has an area drawn uniformly between a minimum block size and the
number still to mask, an aspect ratio drawn log-uniformly in [0.3, 1/0.3], and a random position;
it is kept only if it adds at least one and at most the remaining number of new patches (up to 10
attempts per block). Masking stops when the target is reached or no block fits, so the count never
exceeds the target and may fall short of it.
"""

from __future__ import annotations

import math
import random

import torch

BEIT_GRID = 14 * 14          # BEiT's grid (224 px, 16 px patches) ...
BEIT_MIN_BLOCK = 16          # ... on which a block holds at least 16 patches
ASPECT = (0.3, 1 / 0.3)
ATTEMPTS = 10


def min_block_patches(patches: int) -> int:
    """BEiT's minimum block of 16 patches on a 14 x 14 grid, scaled by the grid's area: a block
    covers at least the same share of the image (8 x 8 grid: 5 patches; 4 x 4: 1)."""
    return max(1, round(BEIT_MIN_BLOCK * patches / BEIT_GRID))


def _python_rng(generator: torch.Generator) -> random.Random:
    """A Python RNG seeded from ``generator``: the rejection loop below draws many scalars, and
    Python's are far cheaper than one-element tensors."""
    return random.Random(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))


def _block_mask(rng: random.Random, h: int, w: int, target: int, min_patches: int,
                aspect=ASPECT, attempts=ATTEMPTS, blocks: list | None = None) -> torch.Tensor:
    """The rejection loop; ``blocks``, if given, collects each accepted ``(top, left, bh, bw)``."""
    mask = torch.zeros(h, w, dtype=torch.bool)
    count, log_lo, log_hi = 0, math.log(aspect[0]), math.log(aspect[1])
    while count < target:
        left_to_mask, added = target - count, 0
        for _ in range(attempts):
            area = rng.uniform(min(min_patches, left_to_mask), left_to_mask)
            ratio = math.exp(rng.uniform(log_lo, log_hi))
            bh, bw = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            # rounding to whole patches can push a block below the minimum or out of the
            # aspect range; such a block counts as a failed attempt, so every block is in bounds
            if not (1 <= bh <= h and 1 <= bw <= w) or bh * bw < min(min_patches, left_to_mask) \
                    or not aspect[0] <= bh / bw <= aspect[1]:
                continue
            top, left = rng.randint(0, h - bh), rng.randint(0, w - bw)
            new = bh * bw - int(mask[top:top + bh, left:left + bw].sum())
            if 0 < new <= left_to_mask:
                mask[top:top + bh, left:left + bw] = True
                added = new
                if blocks is not None:
                    blocks.append((top, left, bh, bw))
                break
        if added == 0:               # no block fits any more: stop short of the target
            break
        count += added
    return mask.flatten()


def block_mask(generator: torch.Generator, grid: tuple[int, int], target: int,
               min_patches: int | None = None, aspect=ASPECT, attempts=ATTEMPTS,
               blocks: list | None = None) -> torch.Tensor:
    """One image's block-wise mask over a ``grid = (rows, cols)`` of patches: at most ``target``
    patches, in blocks of at least ``min_patches`` (default :func:`min_block_patches`; fewer only
    for a last block when fewer patches remain to be masked). ``blocks`` collects the rectangles."""
    h, w = grid
    if not 0 <= target <= h * w:
        raise ValueError(f"target must be between 0 and {h * w} patches, got {target}")
    if min_patches is None:
        min_patches = min_block_patches(h * w)
    return _block_mask(_python_rng(generator), h, w, target, min_patches, aspect, attempts, blocks)


def block_masks(generator: torch.Generator, batch: int, grid: tuple[int, int], ratio: float = 0.4,
                exact: bool = False, min_patches: int | None = None) -> torch.Tensor:
    """``[batch, patches]`` block-wise masks, each aiming at ``round(ratio * patches)`` patches
    (BEiT: 40%). With ``exact`` a mask that fell short is topped up with uniformly drawn single
    patches, so every row holds exactly the target (SplitMask needs equal halves to batch them)."""
    if not 0 <= ratio <= 1:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    h, w = grid
    n = h * w
    target = round(ratio * n)
    rng = _python_rng(generator)
    min_patches = min_block_patches(n) if min_patches is None else min_patches
    rows = []
    for _ in range(batch):
        mask = _block_mask(rng, h, w, target, min_patches)
        if exact and int(mask.sum()) < target:
            free = [i for i in range(n) if not mask[i]]
            mask[rng.sample(free, target - int(mask.sum()))] = True
        rows.append(mask)
    return torch.stack(rows) if rows else torch.zeros(0, n, dtype=torch.bool)


def uniform_masks(generator: torch.Generator, batch: int, patches: int, ratio: float) -> torch.Tensor:
    """``[batch, patches]`` masks hiding exactly ``round(ratio * patches)`` uniformly drawn patches
    per image (MAE-style)."""
    if not 0 <= ratio <= 1:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    k = round(ratio * patches)
    order = torch.rand(batch, patches, generator=generator).argsort(dim=1)
    mask = torch.zeros(batch, patches, dtype=torch.bool)
    mask.scatter_(1, order[:, :k], True)
    return mask


def split_masks(generator: torch.Generator, batch: int, grid: tuple[int, int],
                mode: str = "block") -> tuple[torch.Tensor, torch.Tensor]:
    """SplitMask's two branches: ``(visible_a, visible_b)``, ``[batch, patches]`` bool each, the
    patches each branch's encoder sees. Branch a predicts every patch it does not see, and so does b.

    ``block`` (the paper's default): a 50% block mask (exactly half the patches) and its
    complement, two disjoint halves covering the image. ``uniform`` (the paper's small-data
    variant, 75% uniform masking): two disjoint uniformly drawn quarters, so each branch sees 25%
    of the patches and predicts the other 75%.
    """
    h, w = grid
    n = h * w
    if n % (2 if mode == "block" else 4):
        raise ValueError(f"a {mode} split needs a patch count divisible by "
                         f"{2 if mode == 'block' else 4}, got {h} x {w}")
    if mode == "block":
        a = block_masks(generator, batch, grid, 0.5, exact=True)
        return a, ~a
    if mode == "uniform":
        order = torch.rand(batch, n, generator=generator).argsort(dim=1)
        a = torch.zeros(batch, n, dtype=torch.bool).scatter_(1, order[:, :n // 4], True)
        b = torch.zeros(batch, n, dtype=torch.bool).scatter_(1, order[:, n // 4:n // 2], True)
        return a, b
    raise ValueError(f"split mode must be 'block' or 'uniform', got {mode!r}")
