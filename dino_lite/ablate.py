"""The paper's ablation table in miniature: DINO and the variants that amount to BYOL, MoCo v2
and SwAV, each a set of config switches, trained with the same seed and budget.

Every row is trained into ``OUT/<row>/``, then scored by k-NN and a linear probe on the teacher
backbone, and judged *collapsed* when the teacher's output no longer depends on the image (see
:func:`dino_lite.collapse.collapse_verdict`, the rule training also warns by). Finished rows are
kept in ``OUT/<row>/result.json`` and reused, so an interrupted table continues where it
stopped; rows with the same configuration are run once.

The other registered methods (BEiT, SplitMask, MAE) can sit beside DINO as rows of their own
(``--rows dino,mae``): each trains with its own published optimisation (the method's
``defaults``) on the base's data, network, budget and seed, and has no teacher to judge, so it
goes into a second table with its final loss instead of the switches and the collapse verdict.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from .collapse import COLLAPSE_NATS, collapse_verdict, teacher_information  # noqa: F401 (the rule)
from .config import Config
from .evaluate import knn_accuracy, knn_and_linear_accuracy, random_init_backbone
from .methods import REGISTRY, get_method

# name -> config overrides. The first nine are the paper's ablation rows (Mom. / SK / MC / Loss /
# Pred.), the last four its teacher variants (the momentum row is DINO itself).
ROWS: dict[str, dict] = {
    "dino": {},
    "no_momentum": {"teacher": "student_copy"},
    "sinkhorn_knopp": {"centering": "sinkhorn_knopp"},
    "no_multicrop": {"n_local": 0},
    "mse": {"loss": "mse"},
    "predictor": {"predictor": True},
    "byol": {"n_local": 0, "loss": "mse", "predictor": True},
    "moco_v2": {"n_local": 0, "loss": "infonce"},
    "swav": {"teacher": "student_copy", "centering": "sinkhorn_knopp"},
    "teacher_student_copy": {"teacher": "student_copy"},
    "teacher_previous_iteration": {"teacher": "previous_iteration"},
    "teacher_previous_epoch": {"teacher": "previous_epoch"},
    "teacher_momentum": {},
}

# the paper's numbers (ViT-S, 300 epochs, ImageNet): k-NN and linear top-1 in %; None = not given
PAPER: dict[str, tuple] = {
    "dino": (72.8, 76.1), "no_momentum": (0.1, 0.1), "sinkhorn_knopp": (72.2, 76.0),
    "no_multicrop": (67.9, 72.5), "mse": (52.6, 62.4), "predictor": (71.8, 75.6),
    "byol": (66.6, 71.4), "moco_v2": (62.0, 71.6), "swav": (64.7, 71.8),
    "teacher_student_copy": (0.1, None), "teacher_previous_iteration": (0.1, None),
    "teacher_previous_epoch": (66.6, None), "teacher_momentum": (72.8, None),
}

# rows that are another method rather than a switch of DINO's
METHOD_ROWS: tuple[str, ...] = tuple(name for name in REGISTRY if name != "dino")


def parse_rows(text: str) -> list[str]:
    """``"all"`` (the paper's rows, :data:`ROWS`) or a comma-separated list of row names, which
    may include the other methods (:data:`METHOD_ROWS`)."""
    names = list(ROWS) if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in ROWS and n not in METHOD_ROWS]
    if unknown or not names:
        raise ValueError(f"unknown ablation rows {unknown or text!r}; choose 'all' or from "
                         f"{list(ROWS) + list(METHOD_ROWS)}")
    return names


def row_config(base: Config, name: str) -> Config:
    """``base`` with the row's switches applied (and validated); for a method row, ``base``
    with that method's own optimisation (its ``defaults``) instead."""
    row = {**get_method(name).defaults, "method": name} if name in METHOD_ROWS else ROWS[name]
    return Config.from_dict({**base.to_dict(), **row, "name": f"{base.name}-{name}"}).validate()


def judged(history: list[dict]) -> bool:
    """Whether a run logged the teacher entropies the collapse rule reads (DINO's rows do; a
    masked image model has no teacher)."""
    return all("teacher_entropy" in r for r in history)


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON atomically: a reader sees the old file or the new one, never half."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def as_json(obj):
    """``obj`` as it reads back from a JSON file (tuples become lists), to compare with one saved."""
    return json.loads(json.dumps(obj))


def is_cached(path: Path, key) -> bool:
    """Whether :func:`cached_result` would reuse ``path`` for ``key``, computing nothing."""
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and saved.get("key") == as_json(key)


def cached_result(path: Path, key, compute, name: str | None = None):
    """``compute()``, stored in ``path`` beside ``key`` and reused while the key is the same
    (the random-init baselines of the ablation table and of the small-data study, the study's
    cells); a reuse is printed as ``name: reusing path`` when ``name`` is given."""
    key = as_json(key)
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            raise ValueError(f"{path} is not valid JSON (an interrupted write?); delete it and "
                             f"run again to recompute it") from None
        if isinstance(saved, dict) and saved.get("key") == key:
            if name:
                print(f"{name}: reusing {path}")
            return saved["result"]
    result = compute()
    write_json(path, {"key": key, "result": result})
    return result


def run_row(cfg: Config, out_dir, eval_every=None, knn_max_train=None, progress=True,
            until=None) -> dict:
    """Train one row and score it. With ``eval_every`` the teacher's k-NN is also measured
    every that many steps (on at most ``knn_max_train`` training images) for the curves. With
    ``until`` the row stops after that step of its schedule (see :meth:`Trainer.run`)."""
    from .train import Trainer
    out_dir = Path(out_dir)
    start = time.perf_counter()
    curve = []

    def record(step):
        curve.append([step, knn_accuracy(trainer.encoder(), cfg, max_train=knn_max_train)])
        trainer.encoder().train()

    def hook(rec):
        step = rec["step"] + 1
        if eval_every and (step % eval_every == 0 or step in (until, trainer.total_steps)):
            rng = torch.get_rng_state()     # so that measuring does not change the training run
            record(step)
            torch.set_rng_state(rng)

    # the row's folder is this table's cache: a run left there by other settings is replaced
    trainer = Trainer(cfg, out_dir, progress=progress, on_step=hook, overwrite=True)
    if eval_every:
        record(0)
    history = trainer.run(until)
    train_minutes = (time.perf_counter() - start) / 60
    scores = knn_and_linear_accuracy(trainer.encoder(), cfg)
    keep = ("step", "loss", "teacher_entropy", "teacher_batch_entropy", "kl")
    return {**scores, "collapsed": collapse_verdict(history) if judged(history) else None,
            "steps": trainer.step, "train_minutes": round(train_minutes, 2),
            "max_entropy": history[-1].get("max_entropy"), "knn_curve": curve,
            "history": [{k: r[k] for k in keep if k in r} for r in history], "config": cfg.to_dict()}


def _switches(cfg: Config) -> dict:
    return {"method": cfg.method, "teacher": cfg.teacher, "centering": cfg.centering,
            "multi_crop": cfg.n_local > 0, "loss": cfg.loss, "predictor": cfg.predictor,
            "lr": cfg.lr}


def run_ablation(base: Config, rows, out_dir, eval_every=None, knn_max_train=None,
                 progress=True, until=None) -> dict:
    """Train and score every row of ``rows`` with ``base``'s seed and budget (with ``until``:
    up to that step of the budget's schedule); returns the table (also written to
    ``OUT/ablation.json`` and ``OUT/ablation.md``)."""
    if base.method in METHOD_ROWS:
        raise ValueError(f"ablate's base recipe is DINO's (its rows switch DINO's parts), got "
                         f"method={base.method!r}; name the other methods as rows instead "
                         f"(--rows dino,{base.method})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def key(config: dict) -> str:       # a run is identified by its configuration (not its name)
        return json.dumps({**config, "name": None, "eval_every": eval_every, "until": until},
                          sort_keys=True)

    saved = {}                          # results already in OUT, from this or another table
    for path in sorted(out_dir.glob("*/result.json")):
        result = json.loads(path.read_text())
        if (result.get("eval_every"), result.get("until")) == (eval_every, until):
            saved.setdefault(key(result["config"]), (path, result))
    done: dict[str, dict] = {}          # so that identical rows run once
    table = []
    for i, name in enumerate(rows):
        cfg = row_config(base, name)
        k = key(cfg.to_dict())
        if k not in done and k in saved:
            print(f"[{i + 1}/{len(rows)}] {name}: reusing {saved[k][0]}")
            done[k] = saved[k][1]
        if k not in done:
            what = (f"{name} with its own recipe" if name in METHOD_ROWS
                    else ROWS[name] or "the DINO recipe")
            print(f"[{i + 1}/{len(rows)}] {name}: {what}")
            done[k] = {**run_row(cfg, out_dir / name, eval_every, knn_max_train, progress, until),
                       "eval_every": eval_every, "until": until}
            write_json(out_dir / name / "result.json", done[k])
        result = done[k]
        paper_knn, paper_linear = PAPER.get(name, (None, None))
        history = result["history"]
        has_teacher = judged(history)
        table.append({"name": name, "knn_top1": result["knn_top1"],       # judged by today's rule
                      "linear_top1": result["linear_top1"],
                      "collapsed": collapse_verdict(history) if has_teacher else None,
                      "information": teacher_information(history) if has_teacher else None,
                      "final_loss": history[-1]["loss"], "steps": result["steps"],
                      "train_minutes": result["train_minutes"],
                      **_switches(cfg), "paper_knn": paper_knn, "paper_linear": paper_linear,
                      "knn_curve": result["knn_curve"], "history": result["history"],
                      "max_entropy": result["max_entropy"]})
    # the baseline depends on the base config only
    random_init = cached_result(out_dir / "random_init.json", base.to_dict(),
                                lambda: knn_and_linear_accuracy(random_init_backbone(base), base))
    summary = {"data": base.data, "preset": base.name, "seed": base.seed, "minutes": base.minutes,
               "max_steps": base.max_steps, "random_init": random_init, "rows": table}
    write_json(out_dir / "ablation.json", summary)
    (out_dir / "ablation.md").write_text(markdown_table(summary))
    return summary


def markdown_table(summary: dict) -> str:
    """Our numbers beside the paper's, one line per row, plus the random-init baseline; the
    method rows (if any) in a second table."""
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    def paper(x):
        return "-" if x is None else f"{x:.1f}"
    switch_rows = [r for r in summary["rows"] if r["collapsed"] is not None]
    method_rows = [r for r in summary["rows"] if r["collapsed"] is None]
    lines = ["| Row | Teacher | SK | MC | Loss | Pred. | steps | k-NN | Linear | teacher info (nats) "
             "| collapsed | paper k-NN | paper Linear |",
             "| --- | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in switch_rows:
        lines.append(
            f"| {r['name']} | {r['teacher']} | {'yes' if r['centering'] == 'sinkhorn_knopp' else 'no'} "
            f"| {'yes' if r['multi_crop'] else 'no'} | {r['loss']} | {'yes' if r['predictor'] else 'no'} "
            f"| {r['steps']} | {pct(r['knn_top1'])} | {pct(r['linear_top1'])} | {r['information']:.2f} "
            f"| {'yes' if r['collapsed'] else 'no'} | {paper(r['paper_knn'])} | {paper(r['paper_linear'])} |")
    ri = summary["random_init"]
    lines.append(f"| random init | - | - | - | - | - | 0 | {pct(ri['knn_top1'])} "
                 f"| {pct(ri['linear_top1'])} | - | - | - | - |")
    if method_rows:
        lines += ["", "Other methods, each with its own optimisation, same data, network, budget "
                  "and seed:", "",
                  "| Method | lr (per 256) | steps | k-NN | Linear | final loss |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['name']} | {r['lr']:.2e} | {r['steps']} | {pct(r['knn_top1'])} "
                  f"| {pct(r['linear_top1'])} | {r['final_loss']:.3f} |" for r in method_rows]
    return "\n".join(lines) + "\n"
