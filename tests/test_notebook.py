"""The notebooks' shared recipe and run folder (dino_lite.notebook)."""

from pathlib import Path

import pytest

import dino_lite.notebook as nb
from dino_lite.config import PRESETS, make_config
from dino_lite.train import make_schedules


@pytest.fixture(autouse=True)
def seed_zero(monkeypatch):
    """The tests read the default seed even where the environment asks the notebooks for another."""
    monkeypatch.delenv(nb.SEED_VARIABLE, raising=False)


def test_demo_config_is_the_cpu_demo_preset_with_its_fp32_crops():
    cfg = nb.demo_config(50)
    assert cfg.name == "cpu-demo" and cfg.max_steps == 50 and cfg.minutes is None
    assert (cfg.global_size, cfg.local_size) == (48, 24)
    # the crops the preset takes on a CPU without native bf16, and one recipe on every machine:
    # neither precision changes it (the variant's evaluation size is left out)
    variant = PRESETS["cpu-demo"]["fp32_variant"]
    assert nb.DEMO_CROPS == {k: variant[k] for k in ("global_size", "local_size")}
    assert cfg.for_precision(bf16=False) == cfg.for_precision(bf16=True) == cfg
    assert cfg.image_size == 64
    # the gentler start, and nothing else of the preset's optimisation changed
    assert (cfg.lr, cfg.warmup_epochs) == (0.002, 4.0)
    assert cfg.teacher_temp == cfg.warmup_teacher_temp == 0.035
    preset = make_config("cpu-demo", dict(minutes=None, max_steps=50, fp32_variant={}, **nb.DEMO_CROPS))
    changed = {k for k, v in cfg.to_dict().items() if preset.to_dict()[k] != v}
    assert changed == set(nb.DEMO_CHANGES)
    lr = make_schedules(nb.demo_config(160), 160, 64)["lr"]   # 4 of 30 epochs: a 21-step warm-up
    assert lr.argmax() == 21 and abs(lr.max() - 0.002 * 64 / 256) < 1e-12


def test_demo_dir_is_one_folder_per_length():
    assert nb.demo_dir(200) == Path("..") / "runs" / "notebooks" / "shapes-200steps"
    assert nb.demo_dir(200, repo_root="/r") == Path("/r/runs/notebooks/shapes-200steps")
    assert nb.demo_dir(200) != nb.demo_dir(400)


def test_another_seed_of_the_shared_run_comes_from_the_environment_into_a_folder_of_its_own(
        monkeypatch):
    assert nb.demo_seed() == 0 and nb.demo_config(50).seed == 0
    seed0 = nb.demo_dir(200)
    monkeypatch.setenv(nb.SEED_VARIABLE, "1")
    assert nb.demo_seed() == 1 and nb.demo_config(50).seed == 1
    assert nb.demo_dir(200) == Path("..") / "runs" / "notebooks" / "shapes-200steps-seed1" != seed0
    # everything but the seed is the same recipe
    cfg1 = nb.demo_config(50).to_dict()
    monkeypatch.setenv(nb.SEED_VARIABLE, "0")
    assert {k: v for k, v in cfg1.items() if k != "seed"} == \
        {k: v for k, v in nb.demo_config(50).to_dict().items() if k != "seed"}
    assert nb.demo_dir(200) == seed0
    monkeypatch.setenv(nb.SEED_VARIABLE, "one")
    with pytest.raises(ValueError, match="DINO_LITE_NOTEBOOK_SEED must be an integer seed, got 'one'"):
        nb.demo_config(50)


def test_demo_rows_and_demo_run_share_one_table(monkeypatch):
    calls = []

    def fake_run_ablation(base, rows, out_dir, eval_every=None, knn_max_train=None, progress=True,
                          until=None):
        calls.append((base, rows, out_dir, eval_every, knn_max_train, progress, until))
        return {"rows": [], "random_init": {}}

    monkeypatch.setattr(nb, "run_ablation", fake_run_ablation)
    assert nb.demo_run(steps=40, repo_root="/r") == Path("/r/runs/notebooks/shapes-40steps/dino")
    nb.demo_rows(["mse"], steps=40, repo_root="/r", until=20)
    (base_a, rows_a, out_a, every_a, max_a, progress_a, until_a), (base_b, rows_b, out_b, *_, until_b) = calls
    assert rows_a == ["dino"] and rows_b == ["mse"]
    assert out_a == out_b and base_a.to_dict() == base_b.to_dict()   # same folder, same base: rows are reused
    assert every_a == 20 and max_a == 1000
    assert until_a is None and until_b == 20       # a paused row stops at a point of the curve


def test_demo_run_says_when_it_trains_notebook_00s_run_and_shows_a_bar(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(nb, "run_ablation", lambda *a, progress=True, **k: calls.append(progress))
    run = nb.demo_run(steps=40, repo_root=tmp_path)          # no run yet: one line, and a bar
    line = capsys.readouterr().out
    assert "notebook 00's run is not in" in line and "training it here first (40 steps" in line
    assert line.count("\n") == 1 and calls == [True]
    run.mkdir(parents=True)
    (run / "result.json").write_text("{}")                    # the run exists: silent, no bar
    nb.demo_run(steps=40, repo_root=tmp_path)
    assert capsys.readouterr().out == "" and calls == [True, False]


def test_at_step_reads_a_full_run_and_a_paused_row_at_the_same_step():
    from dino_lite.notebook import at_step
    history = [{"step": i, "teacher_entropy": 1.0, "teacher_batch_entropy": 1.0 + (i >= 5)}
               for i in range(20)]
    row = {"name": "dino", "knn_curve": [[0, 0.2], [10, 0.5], [20, 0.7]], "history": history}
    half = at_step(row, 10)                   # the last 10% of steps 0..9 is step 9: 1 nat
    assert half == {"knn": 0.5, "information": 1.0, "collapsed": False}
    early = at_step({**row, "knn_curve": [[0, 0.2], [4, 0.3]]}, 4)   # steps 0..3: 0 nats
    assert early["knn"] == 0.3 and early["information"] == 0.0 and early["collapsed"]
    with pytest.raises(ValueError, match="no k-NN point at step 7"):
        at_step(row, 7)
