"""finetune.py: the recipe small ViTs need (label smoothing, warm-up + cosine, drop path,
layer-wise lr decay) and the plateau rule that says whether a fine-tuning converged."""

import math

import pytest
import torch

from conftest import is_share_of, tiny_config
from dino_lite.evaluate import random_init_backbone
from dino_lite.finetune import classifier, converged, finetune, param_groups, with_drop_path


@pytest.mark.parametrize("curve, expected", [
    ([0.1, 0.2, 0.3, 0.4, 0.5], False),                  # still rising: the last epoch adds 10 points
    ([0.1, 0.3, 0.40, 0.405, 0.409], True),              # the last 20% add 0.4 points
    ([0.1, 0.3, 0.40, 0.41, 0.42, 0.43, 0.44, 0.45, 0.455, 0.462], False),   # 1.2 points in the last 2
    ([0.1, 0.3, 0.40, 0.41, 0.42, 0.43, 0.44, 0.45, 0.452, 0.449], True),    # 0.2 points
    ([0.5, 0.5, 0.5, 0.5, 0.4], True),                   # falling is no progress
    ([0.1, 0.2, 0.3, 0.4], None),                        # too short to tell
])
def test_the_plateau_rule(curve, expected):
    assert converged(curve) is expected


def test_the_plateau_rule_against_a_loop():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(5, 40, (1,), generator=g))
        curve = (torch.rand(n, generator=g).cumsum(0) / n * 0.3).tolist()
        tail = math.ceil(0.2 * n)
        best_before = max(curve[i] for i in range(n - tail))
        best_after = max(curve[i] for i in range(n - tail, n))
        assert converged(curve) == (best_after - best_before < 0.01)


def test_layer_decay_scales_each_block_and_spares_norms_and_tokens(tiny_folder):
    cfg = tiny_config(tiny_folder, depth=3)
    model = classifier(random_init_backbone(cfg), 3, drop_path=0.0)
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    # layers: 0 = stem and tokens, 1..3 = blocks, 4 = final norm and head (lr_scale 1)
    assert scale[id(params["head.weight"])] == 1.0
    for i in range(3):
        assert scale[id(params[f"blocks.{i}.mlp.fc1.weight"])] == pytest.approx(0.5 ** (3 - i))
    assert scale[id(params["cls_token"])] == pytest.approx(0.5 ** 4)
    assert scale[id(params["pos_embed"])] == pytest.approx(0.5 ** 4)
    assert decay[id(params["blocks.0.mlp.fc1.weight"])] == 0.05
    for name in ("blocks.0.norm1.weight", "blocks.0.mlp.fc1.bias", "cls_token", "pos_embed"):
        assert decay[id(params[name])] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(params)       # every parameter once
    flat = param_groups(model, 0.05, 1.0)                              # 1: no decay
    assert {g["lr_scale"] for g in flat} == {1.0}


def test_drop_path_rises_over_the_blocks(tiny_folder):
    vit = with_drop_path(random_init_backbone(tiny_config(tiny_folder, depth=3)), 0.2)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in vit.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2])


def test_finetune_reports_a_curve_and_its_top1(tiny_folder):
    cfg = tiny_config(tiny_folder)
    result = finetune(random_init_backbone(cfg), cfg, epochs=2, batch_size=16, seed=0)
    assert result["steps"] == 2 * (96 // 16) and len(result["curve"]) == 2
    assert [c["epoch"] for c in result["curve"]] == [1, 2]
    assert all(is_share_of(c["top1"], 12) for c in result["curve"])
    assert result["top1"] == result["curve"][-1]["top1"]
    assert len(result["correct"]) == 12 and set(result["correct"]) <= {0, 1}   # one hit per image,
    assert sum(result["correct"]) / 12 == pytest.approx(result["top1"])         # whose mean is the top-1
    assert result["converged"] is None                     # two epochs: too short to tell
    again = finetune(random_init_backbone(cfg), cfg, epochs=2, batch_size=16, seed=0)
    assert again["curve"] == result["curve"]               # seeded: the same run twice


def test_finetune_learns_the_tiny_shapes(tiny_folder):
    # three shape classes: the training loss falls from about ln 3 over six epochs
    cfg = tiny_config(tiny_folder)
    result = finetune(random_init_backbone(cfg), cfg, epochs=6, batch_size=16, lr=4e-3,
                      warmup_epochs=1, seed=0)
    losses = [c["train_loss"] for c in result["curve"]]
    assert losses[0] == pytest.approx(math.log(3), abs=0.25)
    assert losses[-1] < losses[0] - 0.1, losses
    assert result["converged"] is not None                  # six points: the rule can tell


@pytest.mark.parametrize("bad, match", [(dict(epochs=0), "epochs"), (dict(layer_decay=0), "layer_decay"),
                                        (dict(label_smoothing=1.0), "label_smoothing"),
                                        (dict(batch_size=1000), "larger than")])
def test_bad_recipes_are_named(tiny_folder, bad, match):
    cfg = tiny_config(tiny_folder)
    with pytest.raises(ValueError, match=match):
        finetune(random_init_backbone(cfg), cfg, **bad)


def test_the_command_prints_the_curve_and_fine_tunes_random_init_without_layer_decay(
        tiny_folder, tmp_path, capsys):
    import json
    from conftest import random_init
    from dino_lite.cli import main
    sets = ["image_size=32", "global_size=32", "local_size=16", "depth=2"]
    main(["finetune", "--preset", "cpu-demo", "--random-init", "--data", str(tiny_folder),
          "--epochs", "2", "--batch-size", "16", "--curve", str(tmp_path / "curve.png"), "--json",
          *[a for s in sets for a in ("--set", s)]])
    out = capsys.readouterr().out
    res = json.loads(out.strip().splitlines()[-1])
    assert "too few epochs to tell" in out and res["converged"] is None
    assert (tmp_path / "curve.png").stat().st_size > 0
    backbone, cfg = random_init("cpu-demo", sets)
    lib = finetune(backbone, cfg, data=str(tiny_folder), epochs=2, batch_size=16, layer_decay=1.0)
    assert res["curve"] == lib["curve"] and res["finetune_top1"] == lib["top1"]
    assert res["seed"] == 0 and res["correct"] == lib["correct"]

    # --seed is the fine-tuning's seed: the library's run with that seed, on the same random init
    main(["finetune", "--preset", "cpu-demo", "--random-init", "--data", str(tiny_folder),
          "--epochs", "2", "--batch-size", "16", "--seed", "1", "--json",
          *[a for s in sets for a in ("--set", s)]])
    seeded = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    backbone, cfg = random_init("cpu-demo", sets)
    lib1 = finetune(backbone, cfg, data=str(tiny_folder), epochs=2, batch_size=16, layer_decay=1.0, seed=1)
    assert seeded["seed"] == 1 and seeded["curve"] == lib1["curve"] and seeded["correct"] == lib1["correct"]
    assert seeded["curve"] != res["curve"]                 # another seed, another run
