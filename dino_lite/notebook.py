"""What the notebooks share: the small-budget base recipe of their real-photo rows and the
folder where those rows are kept, so that notebooks 04, 05 and 07 reuse each other's runs.

The notebooks run from ``notebooks/``, hence ``repo_root=".."``.
"""

from __future__ import annotations

from pathlib import Path

from .config import Config, make_config


def notebook_base(steps: int, batch_size: int = 32) -> tuple[Config, bool]:
    """The small-budget base of notebooks 04, 05 and 07: the tinyimagenet recipe for ``steps``
    steps of ``batch_size`` images on ``tinyimagenet-dev20`` under the shared data root
    (:func:`dino_lite.config.shared_data_root`) when that folder exists (real photos, where the
    claims are checked), else the cpu-demo recipe on the embedded shapes. A run this short keeps
    the faster teacher of the cpu-demo recipe (momentum 0.95, an average over about 20 steps):
    the preset's 0.98 suits its 10-minute runs of ~3000 steps. The preset's additions from
    later papers (DINOv2's KoLeo term, iBOT's masked patch prediction) are off, so that each row
    tests the paper's DINO components alone. Returns ``(config, on_real_data)``."""
    photos = dict(max_steps=steps, batch_size=batch_size, momentum_teacher=0.95, koleo=0.0, ibot=0.0)
    cfg = make_config("tinyimagenet", photos)
    if Path(cfg.data).is_dir():
        return cfg, True
    from .download import how_to_get
    print(f"{cfg.data} is absent: using the embedded shapes instead (the claims are not checked)")
    print(how_to_get("tinyimagenet-dev20"))
    return make_config("cpu-demo", dict(minutes=None, max_steps=steps, batch_size=batch_size)), False


def notebook_run_dir(base: Config, steps: int, repo_root="..") -> Path:
    """Where the notebooks keep the rows they train with :func:`notebook_base`."""
    return Path(repo_root) / "runs" / "notebooks" / f"ablate-{base.name}-{steps}steps"
