"""dino_lite: a compact, readable DINO (self-distillation with no labels) for teaching and research.

Modules, one concept each: ``shapes`` (embedded dataset), ``data`` (datasets and loading),
``augment`` (multi-crop), ``models`` (backbones, head), ``loss``, ``schedules``, ``train``,
``evaluate`` (k-NN, linear probe, fine-tuning), ``attention`` (maps, masks, Jaccard),
``collapse`` (the toy collapse lab), ``ablate`` (the paper's ablation table), ``checkpoint``,
``config``, ``launch`` (torchrun and SLURM), ``cli``.
"""

import os

# Idle OpenMP threads sleep instead of spinning. With as many threads as cores, a spinning pool
# and any other busy process (a browser, a second kernel) fight over the cores, and a step can
# slow down far more than the CPU share it lost (benchmarks/busy_cpu.py, docs/robustness.md).
# Read by the OpenMP runtime when torch loads: effective when dino_lite is imported first, as
# `python -m dino_lite` does; OMP_WAIT_POLICY=ACTIVE in the environment keeps spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
