"""notebook.py: the notebooks' small-budget base and where their runs are kept."""

from pathlib import Path

from dino_lite.config import SHARED_DATA_ENV
from dino_lite.notebook import notebook_base, notebook_run_dir


def test_notebook_base_trains_on_photos_when_the_shared_data_has_them(monkeypatch, tmp_path):
    (tmp_path / "tinyimagenet-dev20").mkdir()
    monkeypatch.setenv(SHARED_DATA_ENV, str(tmp_path))
    cfg, real = notebook_base(144)
    assert real
    assert cfg.name == "tinyimagenet" and cfg.data == str(tmp_path / "tinyimagenet-dev20")
    assert (cfg.max_steps, cfg.batch_size, cfg.momentum_teacher) == (144, 32, 0.95)
    assert cfg.koleo == 0 and cfg.ibot == 0           # the paper's DINO components alone


def test_notebook_base_falls_back_to_the_shapes(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(SHARED_DATA_ENV, str(tmp_path))   # an empty root: no photos
    cfg, real = notebook_base(50, batch_size=16)
    assert not real
    assert (cfg.name, cfg.data, cfg.max_steps, cfg.batch_size, cfg.minutes) == ("cpu-demo", "shapes", 50, 16, None)
    assert "absent" in capsys.readouterr().out


def test_notebook_run_dir_is_shared_by_runs_of_the_same_base(monkeypatch, tmp_path):
    monkeypatch.setenv(SHARED_DATA_ENV, str(tmp_path))
    base, _ = notebook_base(144)
    assert notebook_run_dir(base, 144) == Path("..") / "runs" / "notebooks" / "ablate-cpu-demo-144steps"
    assert notebook_run_dir(base, 144, repo_root="/r") == Path("/r/runs/notebooks/ablate-cpu-demo-144steps")
    assert notebook_run_dir(base, 144) != notebook_run_dir(base, 288)
