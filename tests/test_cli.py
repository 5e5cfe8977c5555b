"""The command line: config, train, knn and attention, with --json output and clear errors."""

import json
import subprocess
import sys

import pytest

from conftest import cli_error as _error, is_share_of, random_init
from dino_lite.cli import main


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


# a model and run small enough for a test to train in seconds, as --set options
TINY = ["--set", "image_size=32", "--set", "global_size=32", "--set", "local_size=16",
        "--set", "depth=1", "--set", "out_dim=32", "--set", "head_hidden=32",
        "--set", "batch_size=16", "--set", "n_local=2"]


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_train_knn_attention_end_to_end(tiny_folder, tmp_path, capsys):
    common = TINY
    main(["train", "--preset", "cpu-demo", "--data", str(tiny_folder), "--max-steps", "3",
          "--epochs", "1", "--out", str(tmp_path / "run"), *common])
    ckpt = tmp_path / "run" / "checkpoint.pt"
    assert ckpt.exists()
    capsys.readouterr()
    main(["knn", "--checkpoint", str(ckpt), "--json"])
    acc = _last_json(capsys)["knn_top1"]
    from dino_lite.checkpoint import backbone_from_checkpoint
    from dino_lite.evaluate import knn_accuracy
    backbone, cfg = backbone_from_checkpoint(ckpt)          # the command reports the library's score
    assert is_share_of(acc, 12) and acc == pytest.approx(knn_accuracy(backbone, cfg, progress=False))
    main(["knn", "--preset", "cpu-demo", "--random-init", "--data", str(tiny_folder), "--json", *common])
    acc = _last_json(capsys)["knn_top1"]
    baseline, base_cfg = random_init("cpu-demo", common[1::2])
    assert acc == pytest.approx(knn_accuracy(baseline, base_cfg, data=str(tiny_folder)))
    main(["attention", "--checkpoint", str(ckpt), "--images", str(tiny_folder / "images"),
          "--masks", str(tiny_folder / "masks"), "--out", str(tmp_path / "att"), "--json"])
    res = _last_json(capsys)
    from dino_lite.attention import attention_maps, load_image_folder, score_maps
    x, _, masks, valid = load_image_folder(tiny_folder / "images", cfg.image_size, tiny_folder / "masks")
    scores = score_maps(attention_maps(backbone, x), masks, valid)     # the library on the same images
    for key in ("jaccard", "jaccard_best_head", "object_mass", "object_area"):
        assert res[key] == pytest.approx(scores[key]), key
    assert res["images"] == 12
    assert (tmp_path / "att" / "attention.png").stat().st_size > 1000


def test_set_with_a_checkpoint_applies_evaluation_keys_and_refuses_the_rest(tiny_folder, tmp_path, capsys):
    import dataclasses
    from dino_lite.checkpoint import backbone_from_checkpoint
    from dino_lite.evaluate import knn_accuracy
    from dino_lite.precision import choose
    common = TINY
    main(["train", "--preset", "cpu-demo", "--data", str(tiny_folder), "--max-steps", "2",
          "--epochs", "1", "--out", str(tmp_path / "run"), *common])
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    capsys.readouterr()
    # a training key is refused by name (it used to be ignored silently), and so is a bogus one
    assert "--set lr: fixed when the checkpoint was trained" in _error(
        capsys, ["knn", "--checkpoint", ckpt, "--set", "lr=1"])
    assert "unknown config key 'bogus_key'" in _error(
        capsys, ["knn", "--checkpoint", ckpt, "--set", "bogus_key=1"])
    backbone, cfg = backbone_from_checkpoint(ckpt)
    main(["knn", "--checkpoint", ckpt, "--json"])           # the machine's own precision, stated
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[-1])["precision"] == choose(width=backbone.embed_dim).name
    assert "evaluation precision: " in out
    main(["knn", "--checkpoint", ckpt, "--set", "bf16=true", "--set", "image_size=24", "--json"])
    res = _last_json(capsys)                                # forced, and applied
    assert res["precision"] == "bf16"
    forced = dataclasses.replace(cfg, bf16=True, image_size=24)
    assert res["knn_top1"] == pytest.approx(knn_accuracy(backbone, forced))
    main(["attention", "--checkpoint", ckpt, "--images", str(tiny_folder / "images"), "--out",
          str(tmp_path / "att"), "--set", "bf16=false", "--json"])
    assert _last_json(capsys)["precision"] == "fp32"        # every --json result names it


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    err = _error(capsys, ["knn", "--checkpoint", str(tmp_path / "missing.pt")])
    assert "does not exist" in err
    with pytest.raises(SystemExit) as e:                    # exits non-zero with this message
        main(["knn", "--preset", "cpu-demo"])
    assert isinstance(e.value.code, str) and "--random-init" in e.value.code
    err = _error(capsys, ["train", "--data", str(tmp_path / "nowhere"), "--max-steps", "1"])
    assert "neither" in err
    (tmp_path / "empty").mkdir()
    err = _error(capsys, ["attention", "--preset", "cpu-demo", "--random-init", "--images",
                          str(tmp_path / "empty")])
    assert "no images" in err


# -- robustness: messages instead of tracebacks, Ctrl-C (issue 24) ---------------------------------

TINY_SETS = ["--set", "image_size=32", "--set", "global_size=32", "--set", "local_size=16",
             "--set", "depth=1", "--set", "out_dim=32", "--set", "head_hidden=32",
             "--set", "batch_size=16", "--set", "n_local=2", "--set", "bf16=false",
             "--set", "fused_attention=off"]


@pytest.mark.parametrize("setting, message", [
    ("patch_size=0", "patch_size must be positive"),
    ("global_scale=0.5", "global_scale is the \\(min, max\\)"),
    ("lr=abc", "lr expects a number, got 'abc'"),
    ("lr=-1", "lr must be > 0"),
    ("lr=0", "lr must be > 0"),
    ("depth=0", "depth must be >= 1"),
    ("out_dim=1", "out_dim .* must be >= 2"),
    ("seed=-1", "seed must be >= 0"),
    ("teacher_temp=0", "teacher_temp is a softmax temperature and must be > 0"),
    ("out_temp_student=0", "out_temp_student is a softmax temperature"),
])
def test_bad_settings_are_named_not_tracebacks(capsys, setting, message):
    import re
    err = _error(capsys, ["config", "--preset", "cpu-demo", "--set", setting])
    assert re.search(f"error: .*{message}", err), err


@pytest.mark.parametrize("argv, message", [
    (["knn", "--k", "0"], "--k: must be at least 1"),
    (["knn", "--temperature", "0"], "--temperature: must be greater than 0"),
    (["linear", "--epochs", "0"], "--epochs: must be at least 1"),
    (["finetune", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["finetune", "--layer-decay", "1.5"], "--layer-decay: must be at most 1"),
    (["finetune", "--label-smoothing", "-0.1"], "--label-smoothing: must be at least 0"),
    (["train", "--seed", "-1"], "--seed: must be at least 0"),
    (["ablate", "--rows", "all", "--seed", "-1"], "--seed: must be at least 0"),
    (["estimate", "--attention-images", "-3"], "--attention-images: must be at least 0"),
])
def test_evaluation_options_that_would_print_a_wrong_score_are_refused(capsys, argv, message):
    err = _error(capsys, [*argv, "--preset", "cpu-demo", "--random-init"])
    assert message in err


def test_bad_paths_and_sizes_give_messages(capsys, tmp_path, tiny_folder):
    afile = tmp_path / "afile"
    afile.write_text("x")
    err = _error(capsys, ["train", "--out", str(afile), "--max-steps", "1"])
    assert f"--out {afile} is an existing file" in err
    err = _error(capsys, ["attention", "--preset", "cpu-demo", "--random-init", "--images", "shapes",
                          "--image-size", "60", "--out", str(tmp_path / "att")])
    assert "--image-size 60 is not a multiple of the model's patch size 8" in err
    (tmp_path / "empty.pt").write_bytes(b"")
    err = _error(capsys, ["knn", "--checkpoint", str(tmp_path / "empty.pt")])
    assert "empty file" in err
    err = _error(capsys, ["finetune", "--preset", "cpu-demo", "--random-init", "--data",
                          str(tiny_folder), "--batch-size", "200", *TINY_SETS])
    assert "batch size 200 is larger than the 96 training images" in err


def test_a_new_run_into_a_run_folder_is_refused_with_the_ways_on(capsys, tmp_path):
    import torch
    torch.save({"step": 3}, tmp_path / "checkpoint.pt")           # any run's checkpoint
    err = _error(capsys, ["train", "--out", str(tmp_path), "--max-steps", "1"])
    assert err.startswith(f"error: {tmp_path} already holds a training run")
    assert "continue it with --resume, or start a new run in another --out" in err
    assert torch.load(tmp_path / "checkpoint.pt") == {"step": 3}


def test_a_foreign_checkpoint_is_not_resumed(capsys, tmp_path):
    import torch
    torch.save({"patch_embed.proj.weight": torch.zeros(2)}, tmp_path / "checkpoint.pt")
    err = _error(capsys, ["train", "--out", str(tmp_path), "--resume", "--max-steps", "1"])
    assert "not a dino_lite training checkpoint" in err


def test_estimate_prints_the_demos_time_and_prepares_its_dataset(capsys, monkeypatch, tmp_path):
    import dino_lite.data as data
    import dino_lite.shapes as shapes
    real = data.build_dataset                                       # into an empty shapes cache
    monkeypatch.setattr(data, "build_dataset", lambda spec, train, **kw: real(spec, train, root=tmp_path, **kw))
    monkeypatch.setattr(shapes, "SPLIT_SIZES", {"train": 40, "test": 10})
    main(["estimate", "--preset", "cpu-demo"])
    out = capsys.readouterr().out
    assert "estimated time on this machine:" in out and "training 4.0 min, its budget" in out
    assert "k-NN over 50 images" in out                             # both splits counted
    cached = sorted(p.name.split("-")[1] for p in (tmp_path / "cache").glob("shapes-*.npz"))
    assert cached == ["test", "train"]                  # drawn now, not in the training budget


def test_real_bugs_keep_their_traceback(monkeypatch):
    import dino_lite.cli as cli

    def bug(args):
        raise KeyError("config")           # a bug, not bad input: not turned into `error:`
    monkeypatch.setattr(cli, "cmd_config", bug)
    with pytest.raises(KeyError):
        main(["config"])


@pytest.mark.parametrize("sig,code,word", [("SIGINT", 130, "interrupted"),
                                           ("SIGTERM", 143, "terminated (SIGTERM)")])
def test_ctrl_c_saves_and_exits_130_with_one_line(tiny_folder, tmp_path, sig, code, word):
    """Ctrl-C, and SIGTERM alike: the checkpoint is saved and one line says so; exit code 130
    for SIGINT, 143 for SIGTERM (128 + the signal number)."""
    import os
    import signal
    import time
    proc = subprocess.Popen([sys.executable, "-m", "dino_lite", "train", "--preset", "cpu-demo",
                             "--data", str(tiny_folder), "--epochs", "50", "--out", str(tmp_path),
                             *TINY_SETS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.time() + 60
    while time.time() < deadline and not ((tmp_path / "log.jsonl").exists()
                                           and (tmp_path / "log.jsonl").read_text().count("\n") >= 2):
        time.sleep(0.02)
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(word)]
    assert len(lines) == 1 and "checkpoint saved, continue with --resume" in lines[0]
    import torch
    step = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"]
    assert f"{word} at step {step};" in lines[0]
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == step


def test_attention_on_a_resnet_is_a_one_line_error(capsys, tmp_path):
    from conftest import cli_error
    err = cli_error(capsys, ["attention", "--preset", "cpu-demo", "--random-init", "--set",
                             "arch=resnet18", "--images", "shapes", "--limit", "2", "--out",
                             str(tmp_path)])
    assert "attention maps need a ViT backbone" in err
