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

Variants: ``default`` (the OpenMP runtime's spin-then-sleep waits), ``passive``
(``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep at once), ``spin=N`` (``GOMP_SPINCOUNT=N``:
idle threads spin N times, then sleep), ``threads=N`` (``torch.set_num_threads(N)``).
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
    if variant.startswith("threads="):
        torch.set_num_threads(int(variant.split("=")[1]))
    over = {"max_steps": warmup + steps, "minutes": None}
    if preset == "tinyimagenet" and not (ROOT / make_config(preset).data).is_dir():
        over["data"] = "fake"
    sets = [f"bf16={'true' if precision == 'bf16' else 'false'}"]
    cfg = make_config(preset, over, sets)
    stamps = []
    with tempfile.TemporaryDirectory() as out:
        trainer = train(cfg, out, progress=False, on_step=lambda rec: stamps.append(time.perf_counter()))
    timed = stamps[warmup:]
    return {"ms": 1000 * (timed[-1] - timed[0]) / (len(timed) - 1), "data": cfg.data,
            "threads": torch.get_num_threads(), "precision": trainer.precision.name,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def measure(preset, precision, variant, steps, warmup, busy):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)
    if variant == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if variant.startswith("spin="):
        env["GOMP_SPINCOUNT"] = variant.split("=")[1]
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        r = subprocess.run([sys.executable, __file__, "--child", preset, precision, variant,
                            "--steps", str(steps), "--warmup", str(warmup)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=900)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="cpu-demo,tinyimagenet")
    ap.add_argument("--precisions", default="bf16,fp32")
    ap.add_argument("--variants", default="default,passive")
    ap.add_argument("--steps", type=int, default=4, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="steps left out of the timing")
    ap.add_argument("--child", nargs=3, metavar=("PRESET", "PRECISION", "VARIANT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.steps, args.warmup)))
        return
    import torch
    print(f"cpu: {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}; {args.warmup} warm-up + {args.steps} timed steps per cell")
    print("| preset | precision | variant | threads | idle ms/step | busy ms/step | speed kept |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for preset in args.presets.split(","):
        for precision in args.precisions.split(","):
            for variant in args.variants.split(","):
                idle = measure(preset, precision, variant, args.steps, args.warmup, busy=False)
                busy = measure(preset, precision, variant, args.steps, args.warmup, busy=True)
                name = preset + (" (fake data)" if idle["data"] == "fake" else "")
                print(f"| {name} | {idle['precision']} | {variant} | {idle['threads']}/"
                      f"{busy['threads']} | {idle['ms']:.0f} | {busy['ms']:.0f} | "
                      f"{idle['ms'] / busy['ms']:.0%} |", flush=True)


if __name__ == "__main__":
    main()
