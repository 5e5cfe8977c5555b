"""The command line: config, train, knn and attention, with --json output and clear errors."""

import json
import subprocess
import sys

import pytest

from dino_lite.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "dino_lite", *args], capture_output=True, text=True)


def test_config_imagenet_preset_is_the_papers_recipe(capsys):
    main(["config", "--preset", "imagenet-vits16", "--json"])
    cfg = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = dict(arch="vit_small", patch_size=16, global_size=224, local_size=96, n_local=8,
                    out_dim=65536, head_hidden=2048, head_bottleneck=256, norm_last_layer=True,
                    batch_size=1024, lr=0.0005, min_lr=1e-6, warmup_epochs=10, weight_decay=0.04,
                    weight_decay_end=0.4, clip_grad=3.0, momentum_teacher=0.996,
                    teacher_temp=0.04, out_temp_student=0.1, center_momentum=0.9,
                    freeze_last_layer=1, drop_path=0.1)
    for key, value in expected.items():
        assert cfg[key] == value, key
    assert cfg["global_scale"] == [0.4, 1.0] and cfg["local_scale"] == [0.05, 0.4]


def test_set_overrides_and_rejects_bad_values(capsys):
    main(["config", "--preset", "cpu-demo", "--set", "n_local=2", "--set", "bf16=false", "--json"])
    cfg = json.loads(capsys.readouterr().out.strip())
    assert cfg["n_local"] == 2 and cfg["bf16"] is False
    for bad in (["--set", "no_such_key=1"], ["--set", "arch=vit_huge"], ["--set", "bf16=maybe"],
                ["--set", "global_size=30"]):
        with pytest.raises(SystemExit) as e:
            main(["config", "--preset", "cpu-demo", *bad])
        assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_train_knn_attention_end_to_end(tiny_folder, tmp_path):
    common = ["--set", "image_size=32", "--set", "global_size=32", "--set", "local_size=16",
              "--set", "depth=1", "--set", "out_dim=32", "--set", "head_hidden=32",
              "--set", "batch_size=16", "--set", "n_local=2"]
    r = run_cli("train", "--preset", "cpu-demo", "--data", str(tiny_folder), "--max-steps", "3",
                "--epochs", "1", "--out", str(tmp_path / "run"), *common)
    assert r.returncode == 0, r.stderr
    ckpt = tmp_path / "run" / "checkpoint.pt"
    assert ckpt.exists()
    r = run_cli("knn", "--checkpoint", str(ckpt), "--json")
    assert r.returncode == 0, r.stderr
    acc = json.loads(r.stdout.strip().splitlines()[-1])["knn_top1"]
    assert 0.0 <= acc <= 1.0
    r = run_cli("knn", "--preset", "cpu-demo", "--random-init", "--data", str(tiny_folder), "--json", *common)
    assert r.returncode == 0, r.stderr
    r = run_cli("attention", "--checkpoint", str(ckpt), "--images", str(tiny_folder / "images"),
                "--masks", str(tiny_folder / "masks"), "--out", str(tmp_path / "att"), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0 <= res["jaccard"] <= 1 and 0 <= res["jaccard_best_head"] <= 1
    assert 0 <= res["object_mass"] <= 1 and 0 < res["object_area"] < 1
    assert res["images"] == 12
    assert (tmp_path / "att" / "attention.png").stat().st_size > 1000


def test_bad_inputs_give_clear_errors(tmp_path):
    r = run_cli("knn", "--checkpoint", str(tmp_path / "missing.pt"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = run_cli("knn", "--preset", "cpu-demo")
    assert r.returncode != 0 and "--random-init" in r.stderr
    r = run_cli("train", "--data", str(tmp_path / "nowhere"), "--max-steps", "1")
    assert r.returncode == 2 and "neither" in r.stderr
    (tmp_path / "empty").mkdir()
    r = run_cli("attention", "--preset", "cpu-demo", "--random-init", "--images", str(tmp_path / "empty"))
    assert r.returncode == 2 and "no images" in r.stderr
