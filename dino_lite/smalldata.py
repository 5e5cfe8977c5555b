"""The small-data study of El-Nouby et al. 2021 in miniature: does pre-training on less data hurt
DINO more than the masked image models?

Each method is pre-trained on each fraction of the training images (a seeded subset) for the
*same number of iterations*, so a smaller subset is seen for more epochs, as in the paper. Every
encoder is then fine-tuned on the full labelled training set with one fixed recipe and budget,
and scored by k-NN and a linear probe too (the paper finds those weak for masked models); a
randomly initialised encoder fine-tuned the same way is the baseline. Finished cells are kept in
``OUT/<method>-<fraction>/result.json`` and reused when the command runs again with the same
settings, as ``ablate`` does.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from .ablate import _write_json, as_json, cached_result
from .checkpoint import backbone_from_checkpoint
from .config import make_config
from .data import build_dataset
from .evaluate import finetune_accuracy, knn_and_linear_accuracy, random_init_backbone

# iNaturalist-2019 fine-tuning top-1 (%) after pre-training on 1% / 10% / 100% of ImageNet
PAPER_INAT19 = {"dino": {0.01: 70.1, 0.1: 73.1, 1.0: 78.4},
                "beit": {0.01: 74.1, 0.1: 74.5, 1.0: 75.2},
                "splitmask": {0.01: 74.8, 0.1: 75.4, 1.0: 75.4}}
PAPER_TOKENIZERS = {"random_projection": 75.2, "random_patches": 75.3, "kmeans": 75.0}


def parse_list(text: str, kind, name: str) -> list:
    try:
        items = [kind(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--{name} expects a comma-separated list, got {text!r}") from None
    if not items:
        raise ValueError(f"--{name} is empty")
    return items


def cell_config(preset, method, fraction, steps, data=None, seed=None, sets=()):
    """A cell's pre-training config: the preset and the method's defaults, ``steps`` iterations
    on ``fraction`` of the images; epochs cover the steps, and the warm-up keeps its share."""
    given = {"method": method, "data_fraction": fraction, "max_steps": steps, "minutes": None}
    if data is not None:
        given["data"] = data
    if seed is not None:
        given["seed"] = seed
    cfg = make_config(preset, given, list(sets))
    images = max(1, round(fraction * len(build_dataset(cfg.data, train=True, image_size=cfg.image_size))))
    per_epoch = max(1, images // cfg.batch_size)
    epochs = max(1, math.ceil(steps / per_epoch))
    cfg.warmup_epochs = cfg.warmup_epochs * epochs / cfg.epochs
    cfg.epochs = epochs
    return cfg.validate()


def _key(cfg, finetune: dict) -> dict:
    """What identifies a cell, as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps({"config": cfg.to_dict(), "finetune": finetune}))


def _scores(backbone, cfg, finetune: dict, progress) -> dict:
    """k-NN and linear probe of the frozen encoder, then one fine-tuning per seed in
    ``finetune["seeds"]`` (each from a copy of the pre-trained weights): ``finetune_top1`` is
    their mean, ``finetune_top1_seeds`` the single runs."""
    scores = knn_and_linear_accuracy(backbone, cfg)
    recipe = {k: v for k, v in finetune.items() if k != "seeds"}
    runs = [finetune_accuracy(copy.deepcopy(backbone), cfg, progress=progress, seed=s, **recipe)
            for s in finetune.get("seeds", [0])]
    scores["finetune_top1_seeds"] = runs
    scores["finetune_top1"] = sum(runs) / len(runs)
    return scores


def _pretrained(cfg, cell_dir: Path) -> bool:
    """Whether ``cell_dir`` holds a finished pre-training run of exactly ``cfg``."""
    from .train import CHECKPOINT, read_log
    saved = cell_dir / "config.json"
    if not (saved.exists() and (cell_dir / CHECKPOINT).exists()):
        return False
    ran = json.loads(saved.read_text())
    ran.pop("resolved_precision", None)
    return ran == as_json(cfg.to_dict()) and len(read_log(cell_dir)) == cfg.max_steps


def _run_cell(cfg, cell_dir: Path, finetune: dict, progress) -> dict:
    """Pre-train one cell and score it, or reuse its saved result while its key is unchanged."""
    from .train import train

    def pretrain_and_score():
        if _pretrained(cfg, cell_dir):   # only the evaluation changed: keep the pre-training
            print(f"{cell_dir.name}: reusing the finished pre-training in {cell_dir}")
        else:
            print(f"{cell_dir.name}: {cfg.max_steps} steps on {cfg.data_fraction:g} of the images")
            train(cfg, cell_dir, progress=progress, overwrite=True)   # a stale cell: replaced
        backbone, _ = backbone_from_checkpoint(cell_dir / "checkpoint.pt")
        return _scores(backbone, cfg, finetune, progress)
    return cached_result(cell_dir / "result.json", _key(cfg, finetune), pretrain_and_score,
                         name=cell_dir.name)


def run_smalldata(preset, methods, fractions, out_dir, steps, finetune: dict, data=None, seed=None,
                  sets=(), progress=True, tokenizers=(), tokenizer_fraction=None,
                  baseline=True, mim_sets=()) -> dict:
    """Every (method, fraction) cell and the random-init baseline; returns the summary (also in
    ``OUT/smalldata.json`` and ``OUT/smalldata.md``).

    ``tokenizers`` adds the tokenizer comparison: BEiT pre-trained on ``tokenizer_fraction`` of
    the images (default: the last fraction) once per tokenizer, in ``OUT/beit-F-TOKENIZER``; the
    data-driven tokenizers are fitted on that cell's subset. ``baseline=False`` skips the random-
    init baseline (to run the cells one at a time); the summary then has ``random_init: None``.
    ``mim_sets`` are ``KEY=VALUE`` overrides for the masked models' cells only (after ``sets``),
    for example a learning rate for short runs, where BEiT's is far too small."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = []
    for method in methods:
        for fraction in fractions:
            cfg = cell_config(preset, method, fraction, steps, data, seed,
                              list(sets) + (list(mim_sets) if method != "dino" else []))
            result = _run_cell(cfg, out_dir / f"{method}-{fraction:g}", finetune, progress)
            cells.append({"method": method, "fraction": fraction, "tokenizer": cfg.tokenizer,
                          **result, "paper_inat19": PAPER_INAT19[method].get(fraction)})
    tokenizer_cells = []
    if tokenizers:
        fraction = fractions[-1] if tokenizer_fraction is None else tokenizer_fraction
        for tokenizer in tokenizers:
            if tokenizer not in PAPER_TOKENIZERS:
                raise ValueError(f"unknown tokenizer {tokenizer!r}; choose from {list(PAPER_TOKENIZERS)}")
            beit_sets = list(sets) + list(mim_sets)
            cfg = cell_config(preset, "beit", fraction, steps, data, seed,
                              beit_sets + [f"tokenizer={tokenizer}"])
            default = cell_config(preset, "beit", fraction, steps, data, seed, beit_sets).tokenizer
            cell_dir = out_dir / (f"beit-{fraction:g}" if tokenizer == default
                                  else f"beit-{fraction:g}-{tokenizer}")
            result = _run_cell(cfg, cell_dir, finetune, progress)
            tokenizer_cells.append({"method": "beit", "fraction": fraction, "tokenizer": tokenizer,
                                    **result, "paper_inat19": PAPER_TOKENIZERS[tokenizer]})
    base = cell_config(preset, "dino", 1.0, steps, data, seed, sets)
    random_init = None
    if baseline:
        random_init = cached_result(out_dir / "random_init.json", _key(base, finetune),
                                    lambda: _scores(random_init_backbone(base), base, finetune, progress))
    summary = {"preset": preset, "data": base.data, "steps": steps, "finetune": finetune,
               "sets": list(sets), "mim_sets": list(mim_sets),
               "cells": cells, "tokenizer_cells": tokenizer_cells, "random_init": random_init}
    _write_json(out_dir / "smalldata.json", summary)
    (out_dir / "smalldata.md").write_text(markdown_table(summary))
    return summary


def markdown_table(summary: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    def finetune(c):
        runs = c.get("finetune_top1_seeds") or [c["finetune_top1"]]
        each = " / ".join(pct(r) for r in runs)
        return pct(c["finetune_top1"]) + (f" ({each})" if len(runs) > 1 else "")

    seeds = summary["finetune"].get("seeds", [0])
    recipe = {k: v for k, v in summary["finetune"].items() if k != "seeds"}
    sets = " ".join(summary.get("sets", [])) or "none"
    mim = " ".join(summary.get("mim_sets", [])) or "none"
    lines = [f"Pre-training: {summary['steps']} steps on each fraction of `{summary['data']}` "
             f"(overrides: {sets}; masked models also: {mim}); fine-tuning on all of it: "
             f"{recipe}, seeds {seeds} (mean, then each run).", "",
             "| method | fraction | fine-tune | k-NN | linear | paper iNat-19 fine-tune |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for c in summary["cells"]:
        paper = "-" if c["paper_inat19"] is None else f"{c['paper_inat19']:.1f}"
        lines.append(f"| {c['method']} | {c['fraction']:g} | {finetune(c)} | "
                     f"{pct(c['knn_top1'])} | {pct(c['linear_top1'])} | {paper} |")
    r = summary["random_init"]
    if r is not None:
        lines.append(f"| random init | - | {finetune(r)} | {pct(r['knn_top1'])} | "
                     f"{pct(r['linear_top1'])} | - |")
    if summary.get("tokenizer_cells"):
        lines += ["", "Tokenizers (BEiT; paper: iNat-19 fine-tune after ImageNet):", "",
                  "| tokenizer | fraction | fine-tune | k-NN | linear | paper |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for c in summary["tokenizer_cells"]:
            lines.append(f"| {c['tokenizer']} | {c['fraction']:g} | {finetune(c)} | "
                         f"{pct(c['knn_top1'])} | {pct(c['linear_top1'])} | {c['paper_inat19']:.1f} |")
    else:
        lines += ["", "Paper, tokenizers (iNat-19 fine-tune after ImageNet, BEiT): " +
                  ", ".join(f"{k} {v}" for k, v in PAPER_TOKENIZERS.items())]
    return "\n".join(lines) + "\n"
