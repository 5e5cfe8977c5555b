"""What the notebooks share: one small DINO recipe on the embedded shapes, and the folder where
its runs are kept, so that a run trained by one notebook is reused by the next.

Notebook 00 trains the DINO row; 05, 06, 08 and 09 reuse its checkpoint; 04 adds the
student-copy teacher for the first half of the same schedule (07 reuses it), where the DINO
row's k-NN curve has a point to compare with.
Every user has the shapes (they are generated from a seed), so every notebook checks its
claims on a fresh clone. The notebooks run from ``notebooks/``, hence ``repo_root=".."``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .ablate import collapse_verdict, run_ablation, teacher_information
from .config import Config, make_config

# 160 steps of 64 images at 48 px global / 24 px local crops: about 1.5 minutes on a 2-core
# CPU with native bf16, about 5 (1.8 s a step, idle) in fp32 on a 2-core AVX2 EPYC (Zen 1).
# The smaller crops cost 0.6x the preset's 64/32 per step and learn nearly as much per step,
# and they are the crops the preset takes anyway on a CPU without native bf16 (its
# ``fp32_variant``), so the notebooks train the same recipe on every machine (docs/RESULTS.md,
# "Numbers in the notebooks"). The rest of that variant (evaluation at 48 px) is left out: the
# notebooks evaluate at 64 px on every machine.
DEMO_STEPS = 160
DEMO_CROPS = dict(global_size=48, local_size=24)
# So short a run is fragile: with the preset's own optimisation every seed's teacher falls to an
# almost uniform output right after the lr warm-up (8 steps) and climbs back slowly, and at 160
# steps two of four seeds had not climbed back (collapsed). A gentler start avoids that: half
# the learning rate, warmed up over 4 of the schedule's 30 epochs (21 steps) instead of 1.5,
# and a slightly sharper teacher (0.035 instead of 0.04). Measured per seed in docs/RESULTS.md.
DEMO_CHANGES = dict(lr=0.002, warmup_epochs=4.0, teacher_temp=0.035, warmup_teacher_temp=0.035)
# The shared run is seed 0's. To read the notebooks' prose against another seed, start Jupyter
# (or nbval) with DINO_LITE_NOTEBOOK_SEED=1: every notebook then trains and reads its own runs
# in a folder of that seed.
SEED_VARIABLE = "DINO_LITE_NOTEBOOK_SEED"


def demo_seed() -> int:
    """The shared run's seed: 0 unless the environment sets :data:`SEED_VARIABLE`."""
    text = os.environ.get(SEED_VARIABLE, "0").strip() or "0"
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{SEED_VARIABLE} must be an integer seed, got {text!r}") from None


def demo_config(steps: int = DEMO_STEPS) -> Config:
    """The notebooks' recipe: the ``cpu-demo`` preset for ``steps`` steps with 48/24 px crops
    and :data:`DEMO_CHANGES`, the same on every machine (no fp32 variant)."""
    return make_config("cpu-demo", dict(minutes=None, max_steps=steps, fp32_variant={},
                                        seed=demo_seed(), **DEMO_CROPS, **DEMO_CHANGES))


def demo_dir(steps: int = DEMO_STEPS, repo_root="..") -> Path:
    """The folder holding the notebooks' rows (``<dir>/<row>/checkpoint.pt``); a seed other
    than 0 (:func:`demo_seed`) has a folder of its own."""
    seed = demo_seed()
    name = f"shapes-{steps}steps" + (f"-seed{seed}" if seed else "")
    return Path(repo_root) / "runs" / "notebooks" / name


def demo_rows(rows=("dino",), steps: int = DEMO_STEPS, repo_root="..", until=None,
              progress: bool = False) -> dict:
    """Train (or reuse) ``rows`` of :data:`dino_lite.ablate.ROWS` with :func:`demo_config` and
    score each by k-NN and linear probe; the k-NN curve is measured twice per run (on 1000
    training images). With ``until`` (e.g. ``steps // 2``) the rows stop after that step of
    the ``steps``-step schedule, where the full runs' curves have a point too. ``progress``
    shows a progress bar (with its expected wait) for each row trained. Returns
    :func:`dino_lite.ablate.run_ablation`'s table."""
    return run_ablation(demo_config(steps), list(rows), demo_dir(steps, repo_root),
                        eval_every=steps // 2, knn_max_train=1000, progress=progress, until=until)


def demo_run(steps: int = DEMO_STEPS, repo_root="..") -> Path:
    """The DINO row's run folder (trained on first use): ``checkpoint.pt``, ``log.jsonl``.

    A notebook that finds no run (notebook 00 not run yet) says so in one line and trains it
    with a progress bar whose time estimate is the expected wait."""
    run = demo_dir(steps, repo_root) / "dino"
    missing = not (run / "result.json").exists()
    if missing:
        print(f"notebook 00's run is not in {run} yet: training it here first ({steps} steps; on 2 "
              f"CPU cores about {steps * 0.6 / 60:.1f} minutes with native bf16, {steps * 1.8 / 60:.0f} "
              f"in fp32 on AVX2; the bar below shows the expected wait), then scoring it")
    demo_rows(("dino",), steps, repo_root, progress=missing)
    return run


def at_step(row: dict, step: int) -> dict:
    """One row of :func:`demo_rows`' table as it stood after ``step`` steps: the k-NN of its
    curve there (1000 training images) and the teacher information and collapse verdict over
    the last 10% of those steps; so that a full run and a row stopped at ``step`` compare alike."""
    curve = dict(row["knn_curve"])
    if step not in curve:
        raise ValueError(f"the row {row['name']!r} has no k-NN point at step {step} "
                         f"(points at {sorted(curve)})")
    history = [r for r in row["history"] if r["step"] < step]
    return {"knn": curve[step], "information": teacher_information(history),
            "collapsed": collapse_verdict(history)}
