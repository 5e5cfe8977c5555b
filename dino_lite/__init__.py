"""dino_lite: a compact, readable DINO (self-distillation with no labels) for teaching and research.

Modules, one concept each: ``shapes`` (embedded dataset), ``data`` (datasets and loading),
``augment`` (multi-crop), ``models`` (backbones, head), ``loss``, ``schedules``, ``train``,
``evaluate`` (k-NN, linear probe, fine-tuning), ``attention`` (maps, masks, Jaccard),
``collapse`` (the toy collapse lab), ``ablate`` (the paper's ablation table), ``checkpoint``,
``config``, ``launch`` (torchrun and SLURM), ``cli``.
"""

__version__ = "0.1.0"
