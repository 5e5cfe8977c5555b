"""smalldata.py: the small-data study trains every cell, fine-tunes it per seed, and reuses
finished cells."""

import json

import pytest

from conftest import TINY_MIM, is_share_of
from dino_lite.cli import main
from dino_lite.evaluate import finetune_accuracy, random_init_backbone
from dino_lite.smalldata import cell_config
from dino_lite.train import read_log


def test_smalldata_trains_every_cell_fine_tunes_and_reuses_finished_cells(tiny_folder, tmp_path, capsys):
    args = ["smalldata", "--preset", "cpu-demo", "--data", str(tiny_folder), "--fractions", "0.5,1",
            "--methods", "dino,beit", "--steps", "2", "--finetune-steps", "2", "--out", str(tmp_path),
            "--finetune-seeds", "0,1", "--tokenizers", "random_projection,random_patches",
            "--tokenizer-fraction", "0.5", "--mim-set", "lr=0.001",
            "--json"]
    sets = TINY_MIM + ["out_dim=64", "head_hidden=64", "head_bottleneck=32"]
    args += [a for s in sets for a in ("--set", s)]
    main(args)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(c["method"], c["fraction"]) for c in out["cells"]] == [
        ("dino", 0.5), ("dino", 1.0), ("beit", 0.5), ("beit", 1.0)]
    for c in out["cells"]:                                    # one fine-tuning per seed, the mean
        assert len(c["finetune_top1_seeds"]) == 2
        assert all(is_share_of(s, 12) for s in c["finetune_top1_seeds"])
        assert c["finetune_top1"] == pytest.approx(sum(c["finetune_top1_seeds"]) / 2)
    # the random-init baseline: the library's fine-tuning of the seeded random init, per seed
    base = cell_config("cpu-demo", "dino", 1.0, 2, str(tiny_folder), sets=sets)
    runs = [finetune_accuracy(random_init_backbone(base), base, seed=s, max_steps=2) for s in (0, 1)]
    assert out["random_init"]["finetune_top1"] == pytest.approx(sum(runs) / 2)
    # the tokenizer comparison: the default tokenizer's cell is beit-0.5 itself, the other is new
    assert [(c["tokenizer"], c["fraction"]) for c in out["tokenizer_cells"]] == [
        ("random_projection", 0.5), ("random_patches", 0.5)]
    assert out["tokenizer_cells"][0]["finetune_top1"] == out["cells"][2]["finetune_top1"]
    cfg = json.loads((tmp_path / "beit-0.5-random_patches" / "config.json").read_text())
    assert cfg["tokenizer"] == "random_patches" and cfg["data_fraction"] == 0.5
    cfg = json.loads((tmp_path / "beit-0.5" / "config.json").read_text())
    assert cfg["data_fraction"] == 0.5 and cfg["max_steps"] == 2 and cfg["method"] == "beit"
    assert cfg["lr"] == 0.001                                 # --mim-set reaches the masked cells only
    assert json.loads((tmp_path / "dino-0.5" / "config.json").read_text())["lr"] != 0.001
    assert len(read_log(tmp_path / "beit-0.5")) == 2          # same iterations on half the images
    table = (tmp_path / "smalldata.md").read_text()
    assert table.count("| beit |") == 2 and "| random_patches | 0.5 |" in table
    main(args)                                                # again: every cell is reused
    assert capsys.readouterr().out.count("reusing") == 6      # 4 cells + 2 tokenizer rows
    stamp = (tmp_path / "beit-1" / "checkpoint.pt").stat().st_mtime_ns
    main(args + ["--finetune-lr", "0.001"])                   # a new recipe: scored again,
    out = capsys.readouterr().out                             # the pre-training kept
    assert out.count("reusing the finished pre-training") == 5
    assert (tmp_path / "beit-1" / "checkpoint.pt").stat().st_mtime_ns == stamp
