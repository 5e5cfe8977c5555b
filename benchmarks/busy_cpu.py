"""Training step time on an idle CPU against the same CPU with one single-threaded busy process.

A laptop always has other load (a browser, a second notebook kernel). When the step's thread
pool has as many threads as the machine has cores, one busy process makes some thread wait for
its share of a core at every parallel region, and the step can slow down by far more than the
share of CPU it lost. This script measures it: for each preset, precision and thread setting it
trains ``--warmup + --steps`` steps in a fresh process (so that environment variables such as
``OMP_WAIT_POLICY`` take effect), once alone and once beside ``python -c "while True: pass"``,
which it starts and kills itself. Run it on an otherwise idle machine:

    python benchmarks/busy_cpu.py                                 # both presets, bf16 and fp32
    python benchmarks/busy_cpu.py --presets cpu-demo --precisions bf16 --variants default,threads=1
    python benchmarks/busy_cpu.py --presets cpu-demo --precisions bf16 --timeline 40 25 55

Variants: ``default`` (dino_lite's default: adaptive threads, :mod:`dino_lite.threads`, which
leave a core to the busy process), ``fixed`` (one thread per core whatever the load: the default
before adaptive threads), ``passive`` (``fixed`` with ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP
threads sleep at once), ``spin=N`` (``fixed`` with ``GOMP_SPINCOUNT=N``: idle threads spin N times,
then sleep), ``threads=N`` (``--set threads=N``). ``OMP_NUM_THREADS`` is removed from the
children's environment. The "threads" column gives the thread counts of the timed steps (from
the log records), idle / busy; "others" the cores the other processes used in the adaptive
runs' last measurement window, idle / busy.
``--timeline STEPS ON OFF`` shows the adaptation at work instead: one run of the default whose
busy process starts ON seconds after it and stops at OFF, step by step.
The ``tinyimagenet`` preset uses the shared dev subset when it exists, else ``--data fake``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(preset, precision, variant, steps, warmup):
    """In a fresh process: ms per training step (after ``warmup`` steps) of ``preset``."""
    import dino_lite  # noqa: F401
    import torch

    from dino_lite.config import make_config
    from dino_lite.train import train
    over = {"max_steps": warmup + steps, "minutes": None}
    if preset == "tinyimagenet" and not (ROOT / make_config(preset).data).is_dir():
        over["data"] = "fake"
    sets = [f"bf16={'true' if precision == 'bf16' else 'false'}"]
    if variant.startswith("threads="):
        sets.append(variant)
    elif variant != "default":      # fixed, passive, spin=N: every core, whatever the load
        sets.append(f"threads={torch.get_num_threads()}")
    cfg = make_config(preset, over, sets)
    stamps, threads, ends = [], [], []

    def on_step(rec):
        stamps.append(time.perf_counter())
        threads.append(rec["threads"])
        ends.append(time.time())
    with tempfile.TemporaryDirectory() as out:
        trainer = train(cfg, out, progress=False, on_step=on_step)
    timed = stamps[warmup:]
    used = sorted(set(threads[warmup + 1:]))    # the threads the timed steps ran on
    return {"ms": 1000 * (timed[-1] - timed[0]) / (len(timed) - 1), "data": cfg.data,
            "threads": ",".join(map(str, used)), "precision": trainer.precision.name,
            "others": trainer.threads.others, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "steps": list(zip(ends, threads))}


def child_env(variant):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    if variant == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if variant.startswith("spin="):
        env["GOMP_SPINCOUNT"] = variant.split("=")[1]
    return env


def busy_process():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def measure(preset, precision, variant, steps, warmup, busy):
    hog = busy_process() if busy else None
    try:
        r = subprocess.run([sys.executable, __file__, "--child", preset, precision, variant,
                            "--steps", str(steps), "--warmup", str(warmup)], cwd=ROOT,
                           env=child_env(variant), capture_output=True, text=True, timeout=900)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def timeline(preset, precision, steps, on, off):
    """Train ``steps`` steps with the default (adaptive) threads while a busy process runs from
    ``on`` to ``off`` seconds after the training process started; print each step's time and
    threads, and what the run printed."""
    started = time.time()
    run = subprocess.Popen([sys.executable, __file__, "--child", preset, precision, "default",
                            "--steps", str(steps - 1), "--warmup", "1"], cwd=ROOT,
                           env=child_env("default"), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    hog = None
    try:
        time.sleep(on)
        hog = busy_process()
        time.sleep(off - on)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    out, err = run.communicate(timeout=900)
    if run.returncode:
        raise RuntimeError(err[-2000:])
    r = json.loads(out.strip().splitlines()[-1])
    print(f"{preset}, {r['precision']}, default threads; busy process from {on} s to {off} s")
    print("| step | ends at (s) | ms | threads | busy process |")
    print("| ---: | ---: | ---: | ---: | --- |")
    previous = None
    for i, (end, threads) in enumerate(r["steps"]):
        if previous is not None:
            busy = "yes" if on <= previous - started and end - started <= off else (
                "no" if end - started <= on or previous - started >= off else "part")
            print(f"| {i} | {end - started:.1f} | {1000 * (end - previous):.0f} | {threads} | {busy} |")
        previous = end
    print("\n".join(line for line in err.splitlines() if "thread" in line))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="cpu-demo,tinyimagenet")
    ap.add_argument("--precisions", default="bf16,fp32")
    ap.add_argument("--variants", default="default,fixed")
    ap.add_argument("--steps", type=int, default=4, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="steps left out of the timing")
    ap.add_argument("--timeline", nargs=3, type=float, metavar=("STEPS", "ON", "OFF"),
                    help="instead of the table: STEPS steps of the first preset and precision "
                         "(default threads) with a busy process from ON to OFF seconds")
    ap.add_argument("--child", nargs=3, metavar=("PRESET", "PRECISION", "VARIANT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.steps, args.warmup)))
        return
    if args.timeline:
        steps, on, off = args.timeline
        timeline(args.presets.split(",")[0], args.precisions.split(",")[0], int(steps), on, off)
        return
    import torch
    print(f"cpu: {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}; {args.warmup} warm-up + {args.steps} timed steps per cell")
    print("| preset | precision | variant | threads | others | idle ms/step | busy ms/step | speed kept |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for preset in args.presets.split(","):
        for precision in args.precisions.split(","):
            for variant in args.variants.split(","):
                idle = measure(preset, precision, variant, args.steps, args.warmup, busy=False)
                busy = measure(preset, precision, variant, args.steps, args.warmup, busy=True)
                name = preset + (" (fake data)" if idle["data"] == "fake" else "")
                others = "/".join("-" if r["others"] is None else f"{r['others']:.2f}"
                                  for r in (idle, busy))
                print(f"| {name} | {idle['precision']} | {variant} | {idle['threads']}/"
                      f"{busy['threads']} | {others} | {idle['ms']:.0f} | {busy['ms']:.0f} | "
                      f"{idle['ms'] / busy['ms']:.0%} |", flush=True)


if __name__ == "__main__":
    main()
