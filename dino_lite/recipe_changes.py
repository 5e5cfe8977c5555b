"""What a preset changes from the paper's recipe, and why: a table built from the configs.

The values come from :data:`dino_lite.config.PRESETS` (resolved through ``make_config``, so the
dataclass defaults count too); only the reasons are written here. A field that a preset changes
and that has no reason below shows up as "no reason recorded" (and fails
tests/test_recipe_changes.py), so the table cannot silently drift from the code.
"""

from __future__ import annotations

from pathlib import Path

from .config import make_config

PAPER = "imagenet-vits16"       # the reference ViT-S/16 defaults, kept unchanged in the configs

# Fields that say where and how long a run goes, not what it learns; left out of the table.
MACHINERY = {"name", "notes", "num_workers", "minutes", "max_steps", "fp32_variant", "bf16",
             "fused_attention", "compile", "seed"}

# Why the CPU presets depart from the paper (docs/RESULTS.md, "Design decisions", holds the runs).
WHY = {
    "data": "a 2-core CPU: the embedded shapes (cpu-demo) or 20 Tiny-ImageNet classes, not ImageNet",
    "image_size": "64 px images",
    "global_size": "64 px images: global crops at full size",
    "local_size": "half the global crop, as 96 is to 224",
    "n_local": "every crop costs CPU time (a cost choice, not an ablation)",
    "local_scale": "on 64 px images a local crop should often hold part of the object",
    "colour_jitter": "shapes: the object's hue is random, so the views must not share it (hue 0.5)",
    "arch": "a ViT-mini (width 128) trains in minutes on 2 cores",
    "patch_size": "patch 8 on 64 px crops gives an 8 x 8 grid of tokens",
    "depth": "4 blocks: small enough for minutes on 2 cores",
    "stem": "a convolutional stem optimises far faster on small data (Xiao et al. 2021)",
    "qk_norm": "keeps attention heads from collapsing onto one patch in longer CPU runs",
    "drop_path": "a regulariser for 100+ epoch runs; off for runs of minutes (not measured)",
    "out_dim": "fewer prototypes for a small data set (K = 4096 scored best on the shapes)",
    "head_hidden": "a narrower head for a 128-wide backbone (not measured)",
    "head_bn": "a BatchNorm head kept short runs from collapsing",
    "batch_size": "what one CPU step can hold; the lr scales with it",
    "epochs": "the schedules' length; a time budget compresses them into the steps that fit",
    "lr": "short runs need a higher peak (scaled by batch / 256 as in the paper)",
    "warmup_epochs": "a shorter warm-up for short runs",
    "momentum_teacher": "a few hundred to a few thousand steps: the teacher must move faster",
    "freeze_last_layer": "off in the short CPU runs (not measured)",
    "koleo": "DINOv2's KoLeo term (not in DINO): spreads features for k-NN on photos",
    "ibot": "iBOT's masked patch prediction (not in DINO): a denser signal for short runs",
}


def _show(value):
    if isinstance(value, str) and "/" in value:        # a resolved data folder: its name
        return Path(value).name
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    return str(value)


def recipe_changes(preset: str, reference: str = PAPER) -> list[dict]:
    """One row per config field where ``preset`` differs from ``reference``:
    ``{"field", "paper", "preset", "why"}``, in the order of the Config fields."""
    ref, cfg = make_config(reference).to_dict(), make_config(preset).to_dict()
    rows = []
    for name, value in cfg.items():
        if name in MACHINERY or value == ref[name]:
            continue
        rows.append({"field": name, "paper": _show(ref[name]), "preset": _show(value),
                     "why": WHY.get(name, "no reason recorded")})
    return rows


def changes_markdown(presets=("cpu-demo", "tinyimagenet"), reference: str = PAPER) -> str:
    """A markdown table: one row per field that any of ``presets`` changes from ``reference``."""
    per = {p: {r["field"]: r for r in recipe_changes(p, reference)} for p in presets}
    names = [n for n in make_config(reference).to_dict() if any(n in per[p] for p in presets)]
    ref = make_config(reference).to_dict()
    lines = [f"| field | paper (`{reference}`) | " + " | ".join(f"`{p}`" for p in presets) + " | why |",
             "| --- " * (len(presets) + 3) + "|"]
    for n in names:
        cells = [per[p][n]["preset"] if n in per[p] else "= paper" for p in presets]
        lines.append(f"| `{n}` | {_show(ref[n])} | " + " | ".join(cells)
                     + f" | {WHY.get(n, 'no reason recorded')} |")
    return "\n".join(lines)
