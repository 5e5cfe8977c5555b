"""The small-data study of El-Nouby et al. 2021 in miniature: does pre-training on less data hurt
DINO more than the masked image models?

Each method is pre-trained on each fraction of the training images (a seeded subset) for the
*same number of iterations*, so a smaller subset is seen for more epochs, as in the paper. Every
encoder is then fine-tuned on the full labelled training set with one recipe (finetune.py), once
per fine-tuning seed, and scored by k-NN and a linear probe too (the paper finds those weak for
masked models); a randomly initialised encoder fine-tuned the same way (without layer decay) is
the baseline.

Every cell runs in the one precision this machine computes in (precision.py), decided before
the first cell and recorded in each cell's key, the JSON and the table. A cell is
``OUT/<method>-<fraction>-s<seed>``: its pre-training (``checkpoint.pt``) is kept while its config
is unchanged, and each fine-tuning recipe's scores are kept beside it in their own
``result-<recipe>.json``, so a new recipe never discards an old result; the frozen scores and
each seed's fine-tuning are kept as they finish (``frozen.json``,
``finetune-<recipe>-s<seed>.json``), so another fine-tuning seed runs only that seed. A folder
that holds a pre-training of other settings is refused unless ``overwrite``.

The summary computes each method's drop from the largest to the smallest fraction with its
standard error (the spread over seeds and the test set's error, paired image by image when the
fine-tunings kept their per-image hits) and a verdict sentence for the decisive comparison,
DINO's drop against SplitMask's. Its 95% interval is Student's t with the Welch-Satterthwaite
degrees of freedom: a seed spread measured from two seeds has one, so 1.96 standard errors
would claim more than the seeds show.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import statistics
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from .ablate import as_json, cached_result, is_cached, write_json
from .checkpoint import backbone_from_checkpoint
from .config import TOKENIZERS, make_config
from .data import build_dataset
from .evaluate import knn_and_linear_accuracy, random_init_backbone
from .finetune import convergence_rule, curve_figure, finetune
from .methods import get_method
from .precision import for_config, machine_id, seconds_per_image

# iNaturalist-2019 fine-tuning top-1 (%) after pre-training on 1% / 10% / 100% of ImageNet
PAPER_INAT19 = {"dino": {0.01: 70.1, 0.1: 73.1, 1.0: 78.4},
                "beit": {0.01: 74.1, 0.1: 74.5, 1.0: 75.2},
                "splitmask": {0.01: 74.8, 0.1: 75.4, 1.0: 75.4}}
PAPER_TOKENIZERS = {"random_projection": 75.2, "random_patches": 75.3, "kmeans": 75.0}
# the fine-tuning recipe (finetune.finetune's keywords) the study uses unless told otherwise.
# Every layer at the full learning rate (layer_decay 1.0): the recipe every measured length was
# compared with random init in (docs/masked-image-modelling.md); BEiT's layer-wise decay (0.75
# here) held a 2,000-step DINO encoder back within 6 epochs and is one --finetune-layer-decay away.
FINETUNE = dict(epochs=30, lr=1e-3, batch_size=64, warmup_epochs=3, drop_path=0.1,
                label_smoothing=0.1, layer_decay=1.0, seeds=[0, 1])
# pre-training seeds per cell: the power needs at least two for the decisive comparison
# (DINO's drop against SplitMask's), and two fine-tuning seeds per encoder (FINETUNE["seeds"])
SEEDS = (0, 1)
# pre-training steps per cell: the shortest length measured at which DINO on 100% of
# tinyimagenet-dev20 fine-tunes clearly above random init, both fine-tuned 30 epochs (4,000
# steps: +1.4 +- 1.2 points; 8,000: +5.2 +- 1.0 over two pre-training seeds; measured with the
# preset's KoLeo and iBOT terms, before DINO_SETS)
STEPS = 8000
# overrides for the masked models' cells: 1.5e-3 per 256, 8x BEiT's linearly scaled 1.875e-4, as
# the CPU presets give DINO 8x its paper lr (docs/masked-image-modelling.md, "BEiT's learning rate
# on a CPU": at the paper's rate the loss barely moves in a CPU-sized run)
MIM_SETS = ("lr=0.0015",)
# overrides for DINO's cells: the paper's DINO, without the two terms a preset may add (the
# tinyimagenet preset's KoLeo, and iBOT's masked patch prediction, itself a masked-prediction
# objective, which would blur the very contrast the study measures: docs/masked-image-modelling.md,
# "Which DINO")
DINO_SETS = ("koleo=0", "ibot=0")
PRETRAINING_COST = "pretraining_cost.json"     # beside each cell's checkpoint


def parse_list(text: str, kind, name: str) -> list:
    try:
        items = [kind(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--{name} expects a comma-separated list, got {text!r}") from None
    if not items:
        raise ValueError(f"--{name} is empty")
    return items


# the config fields counted in epochs of the recipe (learning rate, teacher temperature, frozen
# last layer); a cell rescales each to its own epochs
WARMUPS = ("warmup_epochs", "warmup_teacher_temp_epochs", "freeze_last_layer")


def cell_config(preset, method, fraction, steps, data=None, seed=None, sets=(), bf16=None):
    """A cell's pre-training config, as it runs: the preset and the method's defaults, ``steps``
    iterations on ``fraction`` of the images (epochs cover the steps, every warm-up of
    ``WARMUPS`` keeps its share), in precision ``bf16`` (None: this machine's decision) with the
    fp32 variant applied where it computes in fp32."""
    given = {"method": method, "data_fraction": fraction, "max_steps": steps, "minutes": None}
    if data is not None:
        given["data"] = data
    if seed is not None:
        given["seed"] = seed
    cfg = make_config(preset, given, list(sets))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = for_config(cfg, device).bf16 if bf16 is None else bf16
    cfg = cfg.for_precision(bf16, device)
    cfg.bf16 = bf16                     # decided once for the study; every cell records it
    images = max(1, round(fraction * len(build_dataset(cfg.data, train=True, image_size=cfg.image_size))))
    per_epoch = max(1, images // cfg.batch_size)
    epochs = max(1, math.ceil(steps / per_epoch))
    # every warm-up is given in epochs of the preset's recipe: rescaled to the cell's epochs, each
    # keeps its share of the run, whatever the fraction (a 10% cell runs ten times the epochs)
    for k in WARMUPS:
        setattr(cfg, k, getattr(cfg, k) * epochs / cfg.epochs)
    cfg.epochs = epochs
    return cfg.validate()


def recipe_id(finetune_recipe: dict) -> str:
    """A short stable name for a fine-tuning recipe (its result file's suffix)."""
    text = json.dumps(as_json(finetune_recipe), sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def _differences(saved: dict, wanted: dict) -> list[str]:
    keys = sorted(k for k in set(saved) | set(wanted)
                  if k not in ("resolved_precision", "notes") and saved.get(k) != wanted.get(k))
    return [f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in keys]


def _pretraining(cfg, cell_dir: Path, overwrite: bool) -> str:
    """What ``cell_dir`` holds of the pre-training of exactly ``cfg`` (config as run): "done",
    "partial" (interrupted: it resumes) or "none". A pre-training of other settings there is
    refused unless ``overwrite``."""
    from .train import CHECKPOINT, read_log
    saved = cell_dir / "config.json"
    if not saved.exists() or not (cell_dir / CHECKPOINT).exists():
        return "none"
    try:
        ran = json.loads(saved.read_text())
    except ValueError:
        raise ValueError(f"{saved} is not valid JSON; delete {cell_dir} to pre-train it again") from None
    diff = _differences(ran, as_json(cfg.to_dict()))
    if diff and not overwrite:
        raise ValueError(f"{cell_dir} holds a pre-training of other settings ({'; '.join(diff[:4])}"
                         f"{'; ...' if len(diff) > 4 else ''}): pass another --out, or --overwrite "
                         f"to replace it")
    if diff:
        return "none"
    return "done" if len(read_log(cell_dir)) >= cfg.max_steps else "partial"


def _timed(compute):
    """``compute()`` and the wall and CPU seconds it took, as ``(result, wall_s, cpu_s)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = compute()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _result_file(cell_dir: Path, recipe: dict) -> Path:
    """Where a cell's scores with ``recipe`` are kept (with the key they were computed for)."""
    return cell_dir / f"result-{recipe_id(recipe)}.json"


def _finetune_file(store: Path, prefix: str, recipe: dict, seed: int) -> Path:
    """Where one fine-tuning (one seed of ``recipe``) of an encoder is kept."""
    keywords = {k: v for k, v in recipe.items() if k != "seeds"}
    return store / f"{prefix}finetune-{recipe_id(keywords)}-s{seed}.json"


def _scores(backbone, cfg, recipe: dict, progress, store: Path, prefix: str = "") -> dict:
    """k-NN and linear probe of the frozen encoder, then one fine-tuning per seed (each from a
    copy of the encoder): ``finetune_top1`` is their mean. Each part is kept in ``store`` as it
    finishes (``<prefix>frozen.json``, ``<prefix>finetune-<recipe>-s<seed>.json``) and reused,
    so adding a fine-tuning seed runs only the new seed, and an interrupted scoring keeps the
    fine-tunings it finished. The compute reported is each part's own, as it was computed."""
    key = {"config": cfg.to_dict()}

    def frozen_scores():
        scores, wall, cpu = _timed(lambda: knn_and_linear_accuracy(backbone, cfg))
        return {"scores": scores, "wall_s": wall, "cpu_s": cpu}
    frozen = cached_result(store / f"{prefix}frozen.json", key, frozen_scores)
    keywords = {k: v for k, v in recipe.items() if k != "seeds"}
    runs = []
    for s in recipe["seeds"]:
        def one(s=s):
            r, wall, cpu = _timed(lambda: finetune(copy.deepcopy(backbone), cfg, progress=progress,
                                                   seed=s, **keywords))
            return {k: r[k] for k in ("top1", "curve", "correct", "converged", "precision")} | \
                {"wall_s": wall, "cpu_s": cpu}
        runs.append(cached_result(_finetune_file(store, prefix, recipe, s),
                                  {**key, "finetune": keywords, "seed": s}, one))
    scores = dict(frozen["scores"])
    scores.update(finetune_top1_seeds=[r["top1"] for r in runs],
                  finetune_top1=sum(r["top1"] for r in runs) / len(runs),
                  curves=[[c["top1"] for c in r["curve"]] for r in runs],
                  finetune_correct=[r["correct"] for r in runs],
                  converged=_all_converged(r["converged"] for r in runs),
                  test_images=len(build_dataset(cfg.data, train=False, image_size=cfg.image_size)),
                  precision=runs[0]["precision"],
                  score_wall_s=frozen["wall_s"] + sum(r["wall_s"] for r in runs),
                  score_cpu_s=frozen["cpu_s"] + sum(r["cpu_s"] for r in runs))
    return scores


def _all_converged(flags) -> bool | None:
    flags = list(flags)
    return None if None in flags else all(flags)


def _pretraining_cost(cell_dir: Path) -> dict:
    """The wall and CPU seconds a finished pre-training took, as written beside its checkpoint
    (0 for folders from before the file). A resumed run counts every part (the checkpoint keeps
    the count, :meth:`~dino_lite.train.Trainer.spent`), except parts before a checkpoint that
    kept none."""
    f = cell_dir / PRETRAINING_COST
    return (json.loads(f.read_text()) if f.exists()
            else {"pretrain_wall_s": 0.0, "pretrain_cpu_s": 0.0})


def _cell_key(cfg, recipe: dict) -> dict:
    return {"config": cfg.to_dict(), "finetune": recipe}


def _run_cell(cfg, cell_dir: Path, recipe: dict, progress, overwrite: bool) -> dict:
    """Pre-train one cell (or keep its finished pre-training) and score it with ``recipe`` (or
    read the scores that recipe already has)."""
    from .train import train
    cell_dir.mkdir(parents=True, exist_ok=True)
    state = _pretraining(cfg, cell_dir, overwrite)
    result = _result_file(cell_dir, recipe)

    def pretrain_and_score():
        if state == "done":             # what the pre-training cost when it ran, not 0
            print(f"{cell_dir.name}: reusing the finished pre-training in {cell_dir}")
            spent = _pretraining_cost(cell_dir)
        else:
            print(f"{cell_dir.name}: {cfg.max_steps} steps on {cfg.data_fraction:g} of the images"
                  + (" (resuming the interrupted run)" if state == "partial" else ""))
            trainer = train(cfg, cell_dir, progress=progress, resume=state == "partial", overwrite=True)
            total = trainer.spent()     # every part of a resumed pre-training, not the last only
            spent = {"pretrain_wall_s": total["wall_s"], "pretrain_cpu_s": total["cpu_s"]}
            write_json(cell_dir / PRETRAINING_COST, spent)
        backbone, _ = backbone_from_checkpoint(cell_dir / "checkpoint.pt")
        return {**_scores(backbone, cfg, recipe, progress, cell_dir), **spent}
    key = _cell_key(cfg, recipe)
    if state != "done":                 # scores of a pre-training that is being replaced
        for pattern in ("result-*.json", "frozen.json", "finetune-*.json"):
            for old in cell_dir.glob(pattern):
                old.unlink()
    return cached_result(result, key, pretrain_and_score, name=cell_dir.name)


def plan(preset, methods, fractions, steps, finetune_recipe: dict, data=None, seeds=(0,), sets=(),
         tokenizers=(), tokenizer_fraction=None, mim_sets=(), dino_sets=()) -> list[tuple[str, object, dict]]:
    """Every cell of the study, resolved and validated before anything runs: ``(folder name,
    config, cell fields)`` tuples, the tokenizer rows last."""
    bad = [t for t in tokenizers if t not in TOKENIZERS]
    if bad:
        raise ValueError(f"unknown tokenizers {bad}; choose from {list(TOKENIZERS)}")
    if any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must be in (0, 1], got {fractions}")
    for key in ("epochs", "batch_size"):
        if finetune_recipe[key] < 1:
            raise ValueError(f"fine-tuning {key} must be >= 1, got {finetune_recipe[key]}")
    if not finetune_recipe["lr"] > 0:
        raise ValueError(f"the fine-tuning lr must be > 0, got {finetune_recipe['lr']}")
    first = make_config(preset, {"data": data} if data else {}, list(sets))
    bf16 = for_config(first).bf16
    cells = []
    for seed in seeds:
        for method in methods:
            for fraction in fractions:
                cfg = cell_config(preset, method, fraction, steps, data, seed,
                                  list(sets) + list(dino_sets if method == "dino" else mim_sets), bf16)
                cells.append((f"{method}-{fraction:g}-s{seed}", cfg,
                              {"method": method, "fraction": fraction, "seed": seed,
                               "tokenizer": cfg.tokenizer if get_method(method).needs_tokenizer
                               else None}))
        fraction = fractions[-1] if tokenizer_fraction is None else tokenizer_fraction
        for tokenizer in tokenizers:
            beit_sets = list(sets) + list(mim_sets)
            cfg = cell_config(preset, "beit", fraction, steps, data, seed,
                              beit_sets + [f"tokenizer={tokenizer}"], bf16)
            # the same settings as a BEiT cell of the table: the same folder, trained once
            same = next((n for n, c, _ in cells if c == cfg), None)
            name = same or f"beit-{fraction:g}-{tokenizer}-s{seed}"
            cells.append((name, cfg, {"method": "beit", "fraction": fraction, "seed": seed,
                                      "tokenizer": tokenizer, "tokenizer_row": True}))
    return cells


def pretraining_step_seconds(cfg) -> float:
    """Seconds per pre-training step of ``cfg``'s method on this machine: a few throw-away steps
    of a trainer built in a temporary folder (its networks, loader and precision are the run's)."""
    import tempfile

    from .budget import PROBE_STEPS, probe
    from .train import Trainer
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(cfg, tmp, progress=False)
        sched, loss_fn = t.lay_out(sum(PROBE_STEPS))     # the probe's own schedules and loss

        def batches():                  # epoch after epoch: a small subset has few batches
            for epoch in itertools.count():
                t.sampler.set_epoch(epoch)
                yield from t.loader
        return probe(lambda i, views: t.train_step(views, i, t.student, t.teacher, loss_fn,
                                                   t.optimizer, sched), batches())


def finetune_step_seconds(cfg, batch_size: int) -> tuple[float, float]:
    """Seconds per fine-tuning step (loading and augmenting a batch of ``batch_size`` training
    images at ``cfg.image_size``, as fine-tuning loads them, then forward, backward and AdamW)
    and forward seconds per image, on this machine, in the precision fine-tuning uses."""
    from .budget import probe
    from .evaluate import evaluation_precision
    from .finetune import classifier, training_batches
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")   # where the study runs
    backbone = random_init_backbone(cfg).to(device)
    precision = evaluation_precision(backbone, cfg)
    per_image = seconds_per_image(copy.deepcopy(backbone), cfg.image_size, precision)
    loader, _, num_classes = training_batches(cfg, batch_size=batch_size)
    model = classifier(backbone, num_classes, drop_path=0.1).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch):
        x, y = batch
        with precision.autocast(device.type):
            loss = torch.nn.functional.cross_entropy(model(x.to(device)).float(), torch.as_tensor(y).to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()                     # waits for a GPU's queued work, so the time is real

    def batches():                      # epoch after epoch: a small split has few batches
        while True:
            yield from ((batch, None) for batch in loader)
    return probe(lambda i, batch: step(batch), batches()), per_image


def _baseline(out_dir: Path, recipe: dict) -> tuple[dict, Path]:
    """The random-init baseline's fine-tuning recipe (from scratch every layer learns alike: no
    layer decay) and the file its scores are kept in."""
    base_recipe = {**recipe, "layer_decay": 1.0}
    return base_recipe, out_dir / f"random_init-{recipe_id(base_recipe)}.json"


def estimate(cells, out_dir: Path, recipe: dict, baseline: bool, steps: int) -> dict:
    """The compute the study still needs on this machine, in seconds, from steps timed now:
    pre-training (the steps each cell has not taken yet), then each unscored encoder's k-NN and
    linear-probe features and its fine-tunings (steps, plus one pass over the held-out images
    per epoch); finished cells and finished scores cost nothing, nor do the parts of a scoring
    already kept (the frozen scores, each seed's fine-tuning). Returns the parts and the
    per-step timings behind them."""
    from .train import read_log
    first = cells[0][1]
    train_images = len(build_dataset(first.data, train=True, image_size=first.image_size))
    test_images = len(build_dataset(first.data, train=False, image_size=first.image_size))
    todo_pre, todo_scores, todo_frozen, todo_finetunes = {}, 0, 0, 0

    def parts_missing(store: Path, prefix: str, part_recipe: dict) -> tuple[int, int]:
        """The frozen scoring (0 or 1) and the fine-tunings an unscored encoder still needs."""
        return (int(not (store / f"{prefix}frozen.json").exists()),
                sum(not _finetune_file(store, prefix, part_recipe, s).exists() for s in recipe["seeds"]))
    for name, cfg in dict((name, cfg) for name, cfg, _ in cells).items():   # a folder once
        cell = out_dir / name
        if not _result_file(cell, recipe).exists():
            todo_scores += 1
            done = len(read_log(cell)) if (cell / "log.jsonl").exists() else 0
            if cfg.method not in todo_pre:
                todo_pre[cfg.method] = [cfg, 0]
            todo_pre[cfg.method][1] += max(0, steps - done)
            # parts kept from a finished pre-training count as done (an unfinished one rescored)
            frozen, tunes = (parts_missing(cell, "", recipe) if done >= steps
                             else (1, len(recipe["seeds"])))
            todo_frozen, todo_finetunes = todo_frozen + frozen, todo_finetunes + tunes
    base_recipe, base_file = _baseline(out_dir, recipe)
    if baseline and not base_file.exists():
        todo_scores += 1
        frozen, tunes = parts_missing(out_dir, "random_init-", base_recipe)
        todo_frozen, todo_finetunes = todo_frozen + frozen, todo_finetunes + tunes
    timings = {"pretrain_step_s": {m: pretraining_step_seconds(c) for m, (c, n) in todo_pre.items() if n}}
    pretrain = sum(timings["pretrain_step_s"][m] * n for m, (_, n) in todo_pre.items() if n)
    scoring = 0.0
    if todo_frozen or todo_finetunes:
        ft_step, per_image = finetune_step_seconds(first, recipe["batch_size"])
        per_epoch = train_images // recipe["batch_size"]
        ft_steps = recipe["epochs"] * per_epoch
        if recipe.get("max_steps"):
            ft_steps = min(ft_steps, recipe["max_steps"])
        evaluations = math.ceil(ft_steps / per_epoch)      # one held-out pass per epoch begun
        scoring = (todo_frozen * (train_images + test_images) * per_image     # k-NN and linear features
                   + todo_finetunes * (ft_steps * ft_step + evaluations * test_images * per_image))
        timings.update(finetune_step_s=ft_step, forward_image_s=per_image)
    return {"pretrain_s": pretrain, "scoring_s": scoring, "total_s": pretrain + scoring,
            "encoders_to_score": todo_scores, "finetunings_to_run": todo_finetunes, **timings}


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def describe_estimate(est: dict, threads: int) -> str:
    per = ", ".join(f"{m} {s:.2f} s" for m, s in est["pretrain_step_s"].items())
    line = (f"compute still needed on this machine ({threads} threads), from steps timed now: "
            f"about {_duration(est['total_s'])} (pre-training {_duration(est['pretrain_s'])}"
            + (f" at {per} per step" if per else "")
            + f"; scoring {est['encoders_to_score']} encoders, {est['finetunings_to_run']} "
            f"fine-tunings to run, {_duration(est['scoring_s'])}")
    if "finetune_step_s" in est:
        line += f", {est['finetune_step_s']:.2f} s per fine-tuning step"
    return line + ")"


def run_smalldata(preset, methods, fractions, out_dir, steps=None, finetune_recipe: dict | None = None,
                  data=None, seeds=SEEDS, sets=(), progress=True, tokenizers=(),
                  tokenizer_fraction=None, baseline=True, mim_sets=None, dino_sets=None,
                  overwrite=False, dry_run=False, finished_only=False) -> dict:
    """Every cell and the random-init baseline; returns the summary (also in
    ``OUT/smalldata.json`` and ``OUT/smalldata.md``). ``finetune_recipe`` updates
    :data:`FINETUNE`; ``mim_sets`` are ``KEY=VALUE`` overrides for the masked models' cells only
    (after ``sets``), for example a learning rate for short runs, where BEiT's is far too small;
    ``dino_sets`` the same for DINO's cells. ``steps`` defaults to :data:`STEPS`, ``mim_sets`` to
    :data:`MIM_SETS` and ``dino_sets`` to :data:`DINO_SETS` (``()`` for none). The random-init
    baseline takes ``sets`` only.
    The compute still needed is timed and printed first; ``dry_run`` stops there and returns
    the estimate (:func:`estimate`). ``finished_only`` trains and scores nothing: the summary
    holds the cells already pre-trained and scored with this recipe (a study still running, or
    cut short), and names the others in ``left_out``."""
    recipe = {**FINETUNE, **(finetune_recipe or {})}
    steps = steps or STEPS
    mim_sets = MIM_SETS if mim_sets is None else mim_sets
    dino_sets = DINO_SETS if dino_sets is None else dino_sets
    out_dir = Path(out_dir)
    cells = plan(preset, methods, fractions, steps, recipe, data, seeds, sets, tokenizers,
                 tokenizer_fraction, mim_sets, dino_sets)
    precision = "bf16" if cells[0][1].bf16 else "fp32"
    print(f"small-data study: {len(cells)} cells of {steps} pre-training steps, fine-tuned "
          f"{recipe['epochs']} epochs x {len(recipe['seeds'])} seeds, in {precision} "
          f"(this machine's precision); {convergence_rule()}")
    for name, cfg, _ in cells:          # a folder of other settings is refused before any timing
        if (out_dir / name).exists():
            _pretraining(cfg, out_dir / name, overwrite)
    base_cfg = cell_config(preset, "dino", 1.0, steps, data, seeds[0], sets, cells[0][1].bf16)
    base_recipe, base_file = _baseline(out_dir, recipe)
    left_out = []
    if finished_only:   # finished: the scores of exactly this cell and recipe are kept (reused as is)
        left_out = [name for name, cfg, _ in cells
                    if not is_cached(_result_file(out_dir / name, recipe), _cell_key(cfg, recipe))]
        cells = [cell for cell in cells if cell[0] not in left_out]
        if not cells:
            raise ValueError(f"no cell in {out_dir} is pre-trained and scored with these options "
                             f"yet (planned: {', '.join(left_out)})")
        if baseline and not is_cached(base_file, _cell_key(base_cfg, base_recipe)):
            left_out.append("random init")
            baseline = False
        if left_out:
            print(f"finished cells only: {len(left_out)} left out, not finished: {', '.join(left_out)}")
    else:
        cost = estimate(cells, out_dir, recipe, baseline, steps)
        print(describe_estimate(cost, torch.get_num_threads()))
    if dry_run:
        return {"estimate": cost, "cells": [name for name, _, _ in cells], "seeds": list(seeds),
                "finetune": recipe, "mim_sets": list(mim_sets), "dino_sets": list(dino_sets)}
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, tokenizer_rows, started = [], [], time.perf_counter()
    for i, (name, cfg, fields) in enumerate(cells):
        result = _run_cell(cfg, out_dir / name, recipe, progress, overwrite)
        row = {**fields, **result,
               "paper_inat19": (PAPER_TOKENIZERS[fields["tokenizer"]] if fields.get("tokenizer_row")
                                else PAPER_INAT19.get(fields["method"], {}).get(fields["fraction"]))}
        (tokenizer_rows if fields.get("tokenizer_row") else rows).append(row)
        elapsed = time.perf_counter() - started
        print(f"[{i + 1}/{len(cells)}] {name}: fine-tune {100 * result['finetune_top1']:.1f}% "
              f"(elapsed {elapsed / 60:.1f} min; at this pace about "
              f"{elapsed / (i + 1) * (len(cells) - i - 1) / 60:.0f} min to go)")
    random_init = None
    if baseline:
        random_init = cached_result(base_file, _cell_key(base_cfg, base_recipe),
                                    lambda: _scores(random_init_backbone(base_cfg), base_cfg,
                                                    base_recipe, progress, out_dir, "random_init-"),
                                    name="random init")
    summary = {"preset": preset, "data": base_cfg.data, "steps": steps, "precision": precision,
               "finetune": recipe, "sets": list(sets), "mim_sets": list(mim_sets),
               "dino_sets": list(dino_sets),
               "seeds": list(seeds), "convergence_rule": convergence_rule(),
               "cells": aggregate(rows), "tokenizer_cells": aggregate(tokenizer_rows),
               "runs": rows + tokenizer_rows, "random_init": random_init, "left_out": left_out}
    if random_init is not None:
        random_init.update(_errors([random_init]))
        for c in summary["cells"]:      # what pre-training adds over the supervised baseline
            c.update(over_random_init(c, rows, random_init))
    # each pre-training once (a tokenizer row may be a table cell itself), then the baseline
    every = list({(r["method"], r["fraction"], r["seed"], r.get("tokenizer")): r
                  for r in rows + tokenizer_rows}.values())
    every += [random_init] if random_init is not None else []
    summary["compute"] = {k: sum(r.get(k, 0.0) for r in every) for k in      # as each was computed
                          ("pretrain_cpu_s", "pretrain_wall_s", "score_cpu_s", "score_wall_s")}
    summary["machine"], summary["commit"] = machine_id(), _commit()
    summary["drops"] = drops(summary["cells"], rows)
    summary["difference"] = difference(summary["drops"], cells=summary["cells"], runs=rows)
    summary["verdict"] = verdict(summary["drops"], cells=summary["cells"], runs=rows)
    write_json(out_dir / "smalldata.json", summary)
    (out_dir / "smalldata.md").write_text(markdown_table(summary))
    curves = {f"{r['method']} {r['fraction']:g} s{r['seed']}": r["curves"] for r in rows}
    if random_init is not None:
        curves["random init"] = random_init["curves"]
    fig = curve_figure(curves, f"fine-tuning after {steps} pre-training steps ({precision})")
    fig.savefig(out_dir / "finetune_curves.png", dpi=110)
    plt.close(fig)
    return summary


def _commit() -> str | None:
    """The git commit of the package's checkout (None outside one): which code made a result."""
    import subprocess
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


# -- statistics -----------------------------------------------------------------------------

def _errors(runs: list[dict]) -> dict:
    """Mean fine-tune top-1 over ``runs`` (each a cell of one pre-training seed, holding one
    top-1 per fine-tuning seed) and its standard error: the spread of the pre-training seeds'
    means (or, with one pre-training seed, of the fine-tuning seeds) and the test set's binomial
    error, added in quadrature."""
    per_seed = [r["finetune_top1"] for r in runs]
    singles = [x for r in runs for x in r["finetune_top1_seeds"]]
    mean = sum(per_seed) / len(per_seed)
    spread = per_seed if len(per_seed) > 1 else singles
    if len(spread) > 1:
        m = sum(spread) / len(spread)
        seed_se = math.sqrt(sum((x - m) ** 2 for x in spread) / (len(spread) - 1) / len(spread))
    else:
        seed_se = None                  # one run: no spread measured
    n = runs[0]["test_images"]
    binomial_se = math.sqrt(mean * (1 - mean) / n)
    se = math.sqrt((seed_se or 0) ** 2 + binomial_se ** 2)
    return {"finetune_top1_mean": mean, "finetune_se": se, "seed_se": seed_se,
            "seed_df": len(spread) - 1 if seed_se is not None else None,
            "binomial_se": binomial_se, "runs": len(singles)}


def aggregate(rows: list[dict]) -> list[dict]:
    """One entry per (method, fraction, tokenizer): the mean over pre-training seeds, with
    standard errors, k-NN and linear means, and whether every fine-tuning converged."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["method"], r["fraction"], r.get("tokenizer")), []).append(r)
    out = []
    for (method, fraction, tokenizer), runs in groups.items():
        mean = lambda k: sum(r[k] for r in runs) / len(runs)     # noqa: E731
        out.append({"method": method, "fraction": fraction, "tokenizer": tokenizer,
                    "seeds": [r["seed"] for r in runs], "finetune_top1": mean("finetune_top1"),
                    "finetune_top1_seeds": [x for r in runs for x in r["finetune_top1_seeds"]],
                    "knn_top1": mean("knn_top1"), "linear_top1": mean("linear_top1"),
                    "converged": _all_converged(r["converged"] for r in runs),
                    "paper_inat19": runs[0]["paper_inat19"], **_errors(runs)})
    return out


def paired_gap(a: list[list[int]], b: list[list[int]]) -> tuple[float, float]:
    """Top-1 of ``a`` minus top-1 of ``b`` in points, and its standard error, image by image.
    Each is one or more fine-tunings' hits (1 or 0 per held-out image, the same images in the
    same order), averaged per image first. Two networks tend to fail on the same hard images, so
    the per-image differences vary less than two independent binomial errors add up to: the
    paired error is the test set's honest noise for a difference on one test set."""
    da, db = np.mean(a, axis=0), np.mean(b, axis=0)
    if da.shape != db.shape:
        raise ValueError(f"paired comparison of {da.shape[0]} and {db.shape[0]} held-out images")
    return 100 * float((da - db).mean()), _image_se(da - db)


def _key(row: dict) -> tuple:
    return row["method"], row["fraction"], row.get("tokenizer")


def image_means(runs: list[dict], cell: dict):
    """The per-image mean hit (0 to 1) over every fine-tuning of ``cell`` in ``runs``, or None
    when some run kept no hits (result files from before they were stored)."""
    mine = [r for r in runs if _key(r) == _key(cell)]
    hits = [h for r in mine for h in r.get("finetune_correct", [])]
    if not hits or len(hits) != sum(len(r["finetune_top1_seeds"]) for r in mine):
        return None
    return np.mean(hits, axis=0)


def _image_se(d) -> float:
    """Standard error (points) of the mean of per-image differences ``d`` (0 to 1)."""
    return 100 * float(np.std(d, ddof=1) / math.sqrt(len(d)))


def over_random_init(cell: dict, runs: list[dict], random_init: dict) -> dict:
    """What pre-training adds to ``cell``'s fine-tune top-1 over the random-init baseline, in
    points, with its standard error: paired over the held-out images when every run kept its
    per-image hits (results from before that give the unpaired error), the pre-training and
    fine-tuning seeds' spread added in quadrature."""
    hits = image_means(runs, cell)
    base_hits = random_init.get("finetune_correct", [])
    gap = 100 * (cell["finetune_top1"] - random_init["finetune_top1"])
    if hits is None or not base_hits:
        return {"over_random_init": gap, "paired": False,
                "over_random_init_se": 100 * math.hypot(cell["finetune_se"], random_init["finetune_se"])}
    _, image_se = paired_gap([hits], base_hits)
    seeds = 100 * math.hypot(cell["seed_se"] or 0, random_init["seed_se"] or 0)
    return {"over_random_init": gap, "paired": True, "over_random_init_se": math.hypot(image_se, seeds)}


def _ends(cells: list[dict], method: str):
    """``method``'s cells at its largest and smallest fraction, or None with fewer than two."""
    mine = sorted((c for c in cells if c["method"] == method), key=lambda c: c["fraction"])
    return (mine[-1], mine[0]) if len(mine) >= 2 else None


def _drop_per_image(cells: list[dict], runs: list[dict], method: str):
    """``method``'s drop image by image (largest fraction minus smallest, each image's mean hit
    over the fine-tunings), or None without both ends' hits."""
    ends = _ends(cells, method)
    means = [image_means(runs, c) for c in ends] if ends else [None]
    return None if any(m is None for m in means) else means[0] - means[1]


def _seed_df(cell: dict) -> int | None:
    """Degrees of freedom of a cell's seed spread: pre-training seeds - 1, or with one
    pre-training seed fine-tuning seeds - 1 (the spread :func:`_errors` measured); None without
    a spread. Result files from before ``seed_df`` was kept are read the same way."""
    if cell.get("seed_se") is None:
        return None
    if cell.get("seed_df") is not None:
        return cell["seed_df"]
    return (len(cell["seeds"]) if len(cell.get("seeds", ())) > 1 else len(cell["finetune_top1_seeds"])) - 1


def _seed_parts(*cells) -> list[list]:
    """The cells' seed errors (points) with their degrees of freedom, as ``[se, df]`` pairs."""
    return [[100 * c["seed_se"], _seed_df(c)] for c in cells if c.get("seed_se")]


def _cell_parts(cell: dict) -> list[list]:
    """A cell's whole error as ``[se, df]`` pairs: the test set's binomial error (df None: a
    variance known from the top-1, not estimated from a few runs) and its seed spread."""
    if "binomial_se" not in cell:
        return [[100 * cell["finetune_se"], None]]
    return [[100 * cell["binomial_se"], None]] + _seed_parts(cell)


def satterthwaite(parts) -> float | None:
    """Welch-Satterthwaite: the degrees of freedom of a sum of independent variances, each a
    squared standard error ``se`` estimated with ``df`` degrees of freedom (None: known exactly).
    Two seeds give a spread of 1 degree of freedom, so a sum led by seed spreads has few, and
    its 95% interval is wider than 1.96 standard errors. None when every part is exact."""
    den = sum(se ** 4 / df for se, df in parts if df is not None and se > 0)
    return sum(se ** 2 for se, _ in parts) ** 2 / den if den > 0 else None


def t_quantile(p: float, df: float | None) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (fractional, as
    :func:`satterthwaite` gives; None: the normal's). The density is integrated by Simpson's rule
    and the CDF inverted by bisection."""
    if not 0 < p < 1:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    if df is None:
        return statistics.NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_quantile(1 - p, df)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t):                         # P(T <= t) for t >= 0
        x = np.linspace(0.0, t, 4001)
        f = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
        return 0.5 + t / 12000 * (f[0] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum() + f[-1])
    lo, hi = 0.0, 2.0
    while cdf(hi) < p:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def drops(cells: list[dict], runs: list[dict] = ()) -> dict:
    """Each method's fine-tune top-1 at its largest fraction minus at its smallest (points, 0 to
    100) with its standard error. Both ends are scored on the same held-out images, so when
    ``runs`` hold the per-image hits the error is paired (per-image differences, plus both cells'
    seed spread in quadrature); otherwise the two cells' errors are added in quadrature.
    ``parts`` lists the error's independent pieces as ``[se, df]`` (see :func:`satterthwaite`)."""
    out = {}
    for method in dict.fromkeys(c["method"] for c in cells):
        if (ends := _ends(cells, method)) is None:
            continue
        large, small = ends
        per_image = _drop_per_image(cells, runs, method)
        seed_parts = _seed_parts(large, small)
        parts = ([[_image_se(per_image), len(per_image) - 1]] + seed_parts if per_image is not None
                 else _cell_parts(large) + _cell_parts(small))
        out[method] = {"from": large["fraction"], "to": small["fraction"],
                       "drop": 100 * (large["finetune_top1"] - small["finetune_top1"]),
                       "se": math.hypot(*(se for se, _ in parts)), "paired": per_image is not None,
                       "seed_se": math.hypot(*(se for se, _ in seed_parts)), "parts": parts}
    return out


def difference(drops: dict, a: str = "dino", b: str = "splitmask", cells: list[dict] = (),
               runs: list[dict] = ()) -> dict | None:
    """``a``'s drop minus ``b``'s (points) with its standard error and 95% interval. With the
    four cells' per-image hits (``cells``, ``runs``) it is paired image by image, (a large -
    a small) - (b large - b small) per held-out image, plus the four cells' seed spreads; the
    interval uses Student's t with the Welch-Satterthwaite degrees of freedom of those pieces
    (the normal's 1.96 when every piece is exact)."""
    if a not in drops or b not in drops:
        return None
    diff = drops[a]["drop"] - drops[b]["drop"]
    da, db = _drop_per_image(cells, runs, a), _drop_per_image(cells, runs, b)
    if da is not None and db is not None:
        ends = [c for m in (a, b) for c in _ends(cells, m)]
        parts = [[_image_se(da - db), len(da) - 1]] + _seed_parts(*ends)
    else:
        parts = drops[a].get("parts", [[drops[a]["se"], None]]) + drops[b].get("parts", [[drops[b]["se"], None]])
    se = math.hypot(*(s for s, _ in parts))
    df = satterthwaite(parts)
    q = t_quantile(0.975, df)
    return {"a": a, "b": b, "difference": diff, "se": se, "df": df, "quantile": q,
            "low": diff - q * se, "high": diff + q * se, "paired": da is not None and db is not None}


def verdict(drops: dict, a: str = "dino", b: str = "splitmask", cells: list[dict] = (),
            runs: list[dict] = ()) -> str | None:
    """The study's one-sentence answer: how many points more ``a`` loses than ``b`` when the
    pre-training data shrink, or the largest difference the study rules out at 95% (the
    interval of :func:`difference`)."""
    if (d := difference(drops, a, b, cells, runs)) is None:
        return None
    diff, se, low, high = d["difference"], d["se"], d["low"], d["high"]
    names = {"dino": "DINO", "splitmask": "SplitMask", "beit": "BEiT"}
    na, nb = names.get(a, a), names.get(b, b)
    # few seeds: the interval is Student's t, wider than 1.96 standard errors; say so
    t = None if d["df"] is None else f"Student's t with {d['df']:.0f} degrees of freedom"
    # a cell of one pre-training seed carries its fine-tuning seeds' spread only: say so
    ends = [c for m in (a, b) for c in _ends(cells, m) or ()]
    single = sum(len(c.get("seeds", ())) == 1 for c in ends)
    caveat = (f" {single} of the {len(ends)} cells {'has' if single == 1 else 'have'} one "
              f"pre-training seed: the pre-training seeds' spread is not in the interval." if single else "")
    if low > 0 or high < 0:
        more = "more" if diff > 0 else "less"
        return (f"{na} loses {abs(diff):.1f} +- {se:.1f} points {more} than {nb} when the "
                f"pre-training data shrink (95% interval{f', {t}:' if t else ''} {low:+.1f} to "
                f"{high:+.1f}).{caveat}")
    return (f"No difference larger than {max(abs(low), abs(high)):.1f} points at 95%{f' ({t})' if t else ''} "
            f"between {na}'s drop and {nb}'s ({na} minus {nb}: {diff:+.1f} +- {se:.1f}).{caveat}")


def _provenance(summary: dict) -> str:
    c = summary.get("compute") or {}
    return (f"Code: commit {summary.get('commit') or 'unknown'}; machine: {summary.get('machine', 'unknown')}; "
            f"compute recorded with the cells as they ran: pre-training "
            f"{c.get('pretrain_cpu_s', 0) / 60:.0f} CPU-min ({c.get('pretrain_wall_s', 0) / 60:.0f} min), "
            f"scoring {c.get('score_cpu_s', 0) / 60:.0f} CPU-min ({c.get('score_wall_s', 0) / 60:.0f} min).")


def markdown_table(summary: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    def finetune_cell(c):
        each = " / ".join(pct(r) for r in c["finetune_top1_seeds"])
        flag = {True: "", False: " (not converged)", None: " (too short to tell)"}[c["converged"]]
        return f"{pct(c['finetune_top1'])} +- {pct(c['finetune_se'])}{flag}" + \
            (f" ({each})" if len(c["finetune_top1_seeds"]) > 1 else "")

    recipe = {k: v for k, v in summary["finetune"].items() if k != "seeds"}
    sets = " ".join(summary.get("sets", [])) or "none"
    mim = " ".join(summary.get("mim_sets", [])) or "none"
    dino = " ".join(summary.get("dino_sets", [])) or "none"      # absent from older studies
    lines = [f"Pre-training: {summary['steps']} steps on each fraction of `{summary['data']}` "
             f"in {summary['precision']} (overrides: {sets}; DINO also: {dino}; masked models "
             f"also: {mim}), "
             f"pre-training seeds {summary['seeds']}; fine-tuning on all of it: {recipe}, seeds "
             f"{summary['finetune']['seeds']}. Fine-tune: mean +- standard error (seed spread and "
             f"the test set's binomial error), then each run; {summary['convergence_rule']}.", "",
             _provenance(summary), ""]
    if summary.get("left_out"):
        lines += [f"Finished cells only; not finished, left out: {', '.join(summary['left_out'])}.", ""]
    lines += ["| method | fraction | pre-training seeds | fine-tune | over random init | k-NN | linear | "
              "paper iNat-19 fine-tune |",
              "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for c in summary["cells"]:
        paper = "-" if c["paper_inat19"] is None else f"{c['paper_inat19']:.1f}"
        over = ("-" if "over_random_init" not in c else
                f"{c['over_random_init']:+.1f} +- {c['over_random_init_se']:.1f}"
                + (" (paired)" if c.get("paired") else ""))
        lines.append(f"| {c['method']} | {c['fraction']:g} | {', '.join(map(str, c['seeds']))} | "
                     f"{finetune_cell(c)} | {over} | "
                     f"{pct(c['knn_top1'])} | {pct(c['linear_top1'])} | {paper} |")
    r = summary["random_init"]
    if r is not None:
        lines.append(f"| random init | - | - | {finetune_cell(r)} | - | "
                     f"{pct(r['knn_top1'])} | {pct(r['linear_top1'])} | - |")
    if summary["drops"]:
        lines += ["", "| method | drop from the largest to the smallest fraction (points) |",
                  "| --- | ---: |"]
        lines += [f"| {m} | {d['drop']:+.1f} +- {d['se']:.1f} ({d['from']:g} -> {d['to']:g})"
                  f"{' (paired)' if d.get('paired') else ''} |"
                  for m, d in summary["drops"].items()]
    if summary.get("verdict"):
        lines += ["", f"**Verdict:** {summary['verdict']}"]
    if summary.get("tokenizer_cells"):
        lines += ["", "Tokenizers (BEiT; paper: iNat-19 fine-tune after ImageNet):", "",
                  "| tokenizer | fraction | fine-tune | k-NN | linear | paper |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for c in summary["tokenizer_cells"]:
            lines.append(f"| {c['tokenizer']} | {c['fraction']:g} | {finetune_cell(c)} | "
                         f"{pct(c['knn_top1'])} | {pct(c['linear_top1'])} | {c['paper_inat19']:.1f} |")
    return "\n".join(lines) + "\n"
