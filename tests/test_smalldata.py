"""smalldata.py: the small-data study trains every cell in one precision, fine-tunes it per
seed, reuses finished cells without ever losing one, and computes its drops and verdict."""

import json
import math
import re

import numpy as np
import pytest

from conftest import TINY_MIM, is_share_of
from dino_lite import precision
from dino_lite.cli import main
from dino_lite.config import make_config
from dino_lite.evaluate import random_init_backbone
from dino_lite.finetune import finetune
from dino_lite.smalldata import (_errors, aggregate, cell_config, difference, drops, over_random_init, paired_gap,
                                 satterthwaite, t_quantile, verdict)
from dino_lite.train import make_schedules, read_log

SETS = TINY_MIM + ["out_dim=64", "head_hidden=64", "head_bottleneck=32"]


def _study(tiny_folder, out, *extra, methods="dino,beit"):
    args = ["smalldata", "--preset", "cpu-demo", "--data", str(tiny_folder), "--fractions", "0.5,1",
            "--methods", methods, "--steps", "2", "--finetune-steps", "2", "--out", str(out),
            "--seeds", "0", "--finetune-seeds", "0,1", "--mim-set", "lr=0.001", "--json", *extra]
    return args + [a for s in SETS for a in ("--set", s)]


def _last_json(capsys):
    out = capsys.readouterr().out
    return json.loads(out.strip().splitlines()[-1]), out


def test_smalldata_trains_every_cell_fine_tunes_and_reuses_finished_cells(tiny_folder, tmp_path, capsys,
                                                                        monkeypatch):
    args = _study(tiny_folder, tmp_path, "--tokenizers", "random_projection,random_patches",
                  "--tokenizer-fraction", "0.5")
    main(args)
    out, _ = _last_json(capsys)
    assert [(c["method"], c["fraction"]) for c in out["cells"]] == [
        ("dino", 0.5), ("dino", 1.0), ("beit", 0.5), ("beit", 1.0)]
    for c in out["cells"]:                                    # one fine-tuning per seed, the mean
        assert len(c["finetune_top1_seeds"]) == 2
        assert all(is_share_of(s, 12) for s in c["finetune_top1_seeds"])
        assert c["finetune_top1"] == pytest.approx(sum(c["finetune_top1_seeds"]) / 2)
        assert c["converged"] is None                         # one epoch: too short to tell
        assert c["binomial_se"] == pytest.approx(math.sqrt(c["finetune_top1"] * (1 - c["finetune_top1"]) / 12))
    # the random-init baseline: the library's fine-tuning of the seeded random init, per seed,
    # without layer decay (every layer learns from scratch)
    base = cell_config("cpu-demo", "dino", 1.0, 2, str(tiny_folder), sets=SETS)
    runs = [finetune(random_init_backbone(base), base, seed=s, max_steps=2, layer_decay=1.0)["top1"]
            for s in (0, 1)]
    assert out["random_init"]["finetune_top1"] == pytest.approx(sum(runs) / 2)
    assert set(out["drops"]) == {"dino", "beit"} and out["verdict"] is None   # no SplitMask here
    # the gap over random init is paired over the held-out images, from the hits each run kept
    saved = json.loads((tmp_path / "smalldata.json").read_text())
    dino = next(r for r in saved["runs"] if (r["method"], r["fraction"]) == ("dino", 1.0))
    assert [sum(h) / 12 for h in dino["finetune_correct"]] == pytest.approx(dino["finetune_top1_seeds"])
    cell = next(c for c in saved["cells"] if (c["method"], c["fraction"]) == ("dino", 1.0))
    _, image_se = paired_gap(dino["finetune_correct"], saved["random_init"]["finetune_correct"])
    assert cell["paired"] is True and cell["over_random_init_se"] == pytest.approx(
        math.hypot(image_se, 100 * cell["seed_se"], 100 * saved["random_init"]["seed_se"]))
    printed = next(c for c in out["cells"] if (c["method"], c["fraction"]) == ("dino", 1.0))
    assert {k: printed[k] for k in ("over_random_init", "over_random_init_se", "paired")} == \
        {k: cell[k] for k in ("over_random_init", "over_random_init_se", "paired")}   # --json's line too
    # the tokenizer comparison: the default tokenizer's cell is beit-0.5 itself, the other is new
    assert [(c["tokenizer"], c["fraction"]) for c in out["tokenizer_cells"]] == [
        ("random_projection", 0.5), ("random_patches", 0.5)]
    assert out["tokenizer_cells"][0]["finetune_top1"] == out["cells"][2]["finetune_top1"]
    cfg = json.loads((tmp_path / "beit-0.5-random_patches-s0" / "config.json").read_text())
    assert cfg["tokenizer"] == "random_patches" and cfg["data_fraction"] == 0.5
    cfg = json.loads((tmp_path / "beit-0.5-s0" / "config.json").read_text())
    assert cfg["data_fraction"] == 0.5 and cfg["max_steps"] == 2 and cfg["method"] == "beit"
    assert cfg["lr"] == 0.001                                 # --mim-set reaches the masked cells only
    assert json.loads((tmp_path / "dino-0.5-s0" / "config.json").read_text())["lr"] != 0.001
    assert len(read_log(tmp_path / "beit-0.5-s0")) == 2       # same iterations on half the images
    table = (tmp_path / "smalldata.md").read_text()
    assert table.count("| beit | 0.5 |") == table.count("| beit | 1 |") == 1
    assert "| random_patches | 0.5 |" in table
    assert re.search(r"^\| beit \| [+-]\d+\.\d \+- \d+\.\d \(1 -> 0.5\) \(paired\) \|$", table, re.M)   # its drop
    beit = [next(r for r in saved["runs"] if (r["method"], r["fraction"]) == ("beit", f)) for f in (1.0, 0.5)]
    _, image_se = paired_gap(beit[0]["finetune_correct"], beit[1]["finetune_correct"])
    ends = [next(c for c in saved["cells"] if (c["method"], c["fraction"]) == ("beit", f)) for f in (1.0, 0.5)]
    assert saved["drops"]["beit"]["paired"] and saved["drops"]["beit"]["se"] == pytest.approx(   # paired too
        math.hypot(image_se, 100 * ends[0]["seed_se"], 100 * ends[1]["seed_se"]))
    assert (tmp_path / "finetune_curves.png").stat().st_size > 0
    saved = json.loads((tmp_path / "smalldata.json").read_text())
    assert saved["precision"] == out["precision"] and saved["verdict"] is None
    # provenance: the machine, the code, and the compute each cell took as it ran
    assert saved["machine"] == precision.machine_id() and "commit" in saved
    assert saved["compute"]["pretrain_cpu_s"] > 0 and saved["compute"]["score_cpu_s"] > 0
    cells = [r for r in saved["runs"] if not r.get("tokenizer_row")] + \
        [r for r in saved["runs"] if r.get("tokenizer_row") and r["tokenizer"] == "random_patches"]
    assert len(cells) == 5                                    # beit-0.5 counted once
    assert saved["compute"]["pretrain_cpu_s"] == pytest.approx(sum(r["pretrain_cpu_s"] for r in cells))
    assert "CPU-min" in table and saved["machine"] in table

    main(args)                                                # again: every cell is reused
    assert capsys.readouterr().out.count(": reusing") == 7    # 4 cells, 2 tokenizer rows, random init
    again = json.loads((tmp_path / "smalldata.json").read_text())
    assert again["compute"] == saved["compute"]               # the cells' own compute, not 0
    from dino_lite import smalldata                           # and nothing is left to time or pay
    monkeypatch.setattr(smalldata, "pretraining_step_seconds", None)
    monkeypatch.setattr(smalldata, "finetune_step_seconds", None)
    main(args + ["--dry-run"])
    est, _ = _last_json(capsys)
    assert est["estimate"]["total_s"] == 0 and est["estimate"]["encoders_to_score"] == 0
    monkeypatch.undo()
    stamp = (tmp_path / "beit-1-s0" / "checkpoint.pt").stat().st_mtime_ns
    main(args + ["--finetune-lr", "0.002"])                   # a new recipe: scored again,
    out = capsys.readouterr().out                             # the pre-training kept,
    assert out.count("reusing the finished pre-training") == 5
    assert (tmp_path / "beit-1-s0" / "checkpoint.pt").stat().st_mtime_ns == stamp
    rescored = json.loads((tmp_path / "smalldata.json").read_text())   # what pre-training cost
    assert rescored["compute"]["pretrain_cpu_s"] == pytest.approx(saved["compute"]["pretrain_cpu_s"])
    assert len(list((tmp_path / "beit-1-s0").glob("result-*.json"))) == 2   # and the old scores too


@pytest.mark.parametrize("fraction", [1.0, 0.25])
def test_every_warm_up_keeps_its_share_of_the_run_at_every_fraction(tiny_folder, fraction):
    """Steps are fixed, so a smaller subset is seen for more epochs; warm-ups are counted in the
    preset's epochs, and each one (lr, teacher temperature, frozen last layer) must cover the same
    share of the steps at every fraction: the preset's share."""
    sets = SETS + ["batch_size=8", "epochs=30", "warmup_epochs=6", "teacher_temp=0.07",
                   "warmup_teacher_temp_epochs=9", "freeze_last_layer=3"]
    cfg = cell_config("cpu-demo", "dino", fraction, 60, str(tiny_folder), sets=sets)
    assert cfg.epochs == {1.0: 5, 0.25: 20}[fraction]       # 96 or 24 images, batches of 8
    sched = make_schedules(cfg, 60, cfg.batch_size)
    assert int(np.argmax(sched["lr"])) == 12                  # 6 / 30 of the 60 steps warm up
    assert sched["teacher_temp_warmup"] == 18                 # 9 / 30
    assert sched["freeze_last_layer"] == 6                    # 3 / 30


def test_the_fine_tuning_probe_times_the_fine_tunings_own_batches(tiny_folder, monkeypatch):
    """--dry-run times a fine-tuning step on batches loaded and augmented as fine-tuning loads
    them (not on a synthetic tensor, which leaves the loading unpaid), epoch after epoch when the
    training split has fewer batches than the probe takes."""
    from dino_lite import finetune as ft
    from dino_lite import smalldata
    from dino_lite.budget import PROBE_STEPS
    real, drawn = ft.training_batches, []

    def counting(*args, **kwargs):
        loader, test_set, classes = real(*args, **kwargs)

        class Counted:
            def __iter__(self):
                for batch in loader:
                    drawn.append(tuple(batch[0].shape))
                    yield batch
        return Counted(), test_set, classes
    monkeypatch.setattr(ft, "training_batches", counting)
    cfg = cell_config("cpu-demo", "dino", 1.0, 2, data=str(tiny_folder), sets=SETS)
    step_s, per_image = smalldata.finetune_step_seconds(cfg, 32)
    assert step_s > 0 and per_image > 0
    assert len(drawn) == sum(PROBE_STEPS) > 96 // 32          # more batches than one epoch holds
    assert set(drawn) == {(32, 3, cfg.image_size, cfg.image_size)}


def test_the_estimate_adds_the_timed_steps_of_what_is_left(tiny_folder, tmp_path, capsys, monkeypatch):
    from dino_lite import smalldata
    monkeypatch.setattr(smalldata, "pretraining_step_seconds",
                        lambda cfg: {"dino": 3.0, "beit": 5.0}[cfg.method])
    monkeypatch.setattr(smalldata, "finetune_step_seconds", lambda cfg, batch: (7.0, 0.01))
    main(_study(tiny_folder, tmp_path / "study", "--dry-run", "--finetune-layer-decay", "1"))
    est, out = _last_json(capsys)
    assert est["finetune"]["layer_decay"] == 1.0 and est["finetune"]["lr"] == 1e-3
    # by hand: 2 steps in each of 2 DINO and 2 BEiT cells; 5 encoders to score (4 and random
    # init), each: features of the 96 + 12 images, then per fine-tuning seed (2) its 2 steps
    # (batch 64 of 96 images: one step per epoch, so 2 epochs) and a pass over the 12 held-out
    # images after each epoch
    assert est["estimate"]["pretrain_s"] == pytest.approx(2 * 2 * 3.0 + 2 * 2 * 5.0)
    one = 108 * 0.01 + 2 * (2 * 7.0 + 2 * 12 * 0.01)
    assert est["estimate"]["scoring_s"] == pytest.approx(5 * one)
    total = est["estimate"]["total_s"]
    assert "compute still needed on this machine" in out and f"about {total / 60:.1f} min" in out
    assert est["cells"] == ["dino-0.5-s0", "dino-1-s0", "beit-0.5-s0", "beit-1-s0"]
    assert not (tmp_path / "study").exists()                  # a dry run trains nothing


def test_the_defaults_are_the_measured_length_and_recipe(tiny_folder, tmp_path, capsys, monkeypatch):
    """Without --steps and --finetune-layer-decay the study runs what docs/masked-image-modelling.md
    measured: 8,000 pre-training steps (the shortest length clearly above random init there),
    fine-tuning with every layer at the full learning rate, and without --mim-set the masked
    models' study learning rate."""
    from dino_lite import smalldata
    monkeypatch.setattr(smalldata, "pretraining_step_seconds", lambda cfg: 0.5)
    monkeypatch.setattr(smalldata, "finetune_step_seconds", lambda cfg, batch: (1.0, 0.01))
    args = _study(tiny_folder, tmp_path / "study", "--dry-run")
    i = args.index("--steps")
    main(args[:i] + args[i + 2:])
    est, out = _last_json(capsys)
    assert smalldata.STEPS == 8000 and "cells of 8000 pre-training steps" in out
    assert est["estimate"]["pretrain_s"] == pytest.approx(4 * 8000 * 0.5)     # 4 cells
    # without --seeds and --finetune-seeds: two pre-training seeds per cell, two fine-tunings each
    s = args.index("--seeds")
    main([a for k, a in enumerate(args) if k not in (s, s + 1, s + 2, s + 3)])
    est, _ = _last_json(capsys)
    assert smalldata.SEEDS == (0, 1) and smalldata.FINETUNE["seeds"] == [0, 1]
    assert est["seeds"] == [0, 1] and est["finetune"]["seeds"] == [0, 1]
    assert est["cells"] == [f"{m}-{f}-s{seed}" for seed in (0, 1) for m in ("dino", "beit") for f in ("0.5", "1")]
    assert est["finetune"]["layer_decay"] == 1.0
    # the masked models' study learning rate, unless --mim-set gives others
    assert est["mim_sets"] == ["lr=0.001"]                   # a --mim-set replaces the default
    cells = smalldata.plan("cpu-demo", ["dino", "splitmask"], [1.0], 2, smalldata.FINETUNE,
                           data=str(tiny_folder), mim_sets=smalldata.MIM_SETS)
    assert [c.lr for _, c, _ in cells] == [make_config("cpu-demo").lr, 0.0015]
    j = args.index("--mim-set")
    main(args[:i] + args[i + 2:j] + args[j + 2:])          # no --steps and no --mim-set
    assert smalldata.MIM_SETS == ("lr=0.0015",) and _last_json(capsys)[0]["mim_sets"] == ["lr=0.0015"]
    # DINO's cells are the paper's DINO (no KoLeo, no iBOT term) whatever the preset adds, unless
    # --dino-set gives others; the masked cells and random init keep the preset's
    assert est["dino_sets"] == ["koleo=0", "ibot=0"] and smalldata.DINO_SETS == ("koleo=0", "ibot=0")
    preset = make_config("tinyimagenet")
    assert preset.koleo > 0 and preset.ibot > 0                  # the preset adds both
    cells = smalldata.plan("tinyimagenet", ["dino", "beit"], [1.0], 2, smalldata.FINETUNE,
                           data=str(tiny_folder), dino_sets=smalldata.DINO_SETS)
    assert [(c.koleo, c.ibot) for _, c, _ in cells] == [(0, 0), (preset.koleo, preset.ibot)]
    main(args + ["--dino-set", "ibot=0.5"])
    assert _last_json(capsys)[0]["dino_sets"] == ["ibot=0.5"]    # a --dino-set replaces the default
    # the command's help names the same defaults (it does not import smalldata to build itself)
    from dino_lite.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["smalldata"]
    helps = {a.dest: a.help for a in sub._actions}
    assert f"{smalldata.STEPS}," in helps["steps"] and smalldata.MIM_SETS[0] in helps["mim_set"]
    assert " ".join(smalldata.DINO_SETS) in helps["dino_set"]
    defaults = {a.dest: a.default for a in sub._actions}
    assert defaults["seeds"] == ",".join(map(str, smalldata.SEEDS)) and "smalldata.SEEDS" in helps["seeds"]
    assert defaults["finetune_seeds"] == ",".join(map(str, smalldata.FINETUNE["seeds"]))


def test_another_fine_tuning_seed_runs_only_that_seed(tiny_folder, tmp_path, capsys, monkeypatch):
    from dino_lite import smalldata
    args = _study(tiny_folder, tmp_path, methods="dino") + ["--fractions", "1"]
    main(args + ["--finetune-seeds", "0"])
    first, _ = _last_json(capsys)
    calls, real = [], smalldata.finetune

    def counted(*a, seed, **kw):
        calls.append(seed)
        return real(*a, seed=seed, **kw)
    monkeypatch.setattr(smalldata, "finetune", counted)

    def frozen_again(*a, **kw):
        raise AssertionError("the frozen scores were kept: not computed again")
    monkeypatch.setattr(smalldata, "knn_and_linear_accuracy", frozen_again)
    monkeypatch.setattr(smalldata, "pretraining_step_seconds", None)   # nothing to pre-train
    monkeypatch.setattr(smalldata, "finetune_step_seconds", lambda cfg, batch: (7.0, 0.01))
    main(args + ["--finetune-seeds", "0,1,2", "--dry-run"])
    est, _ = _last_json(capsys)                               # the cell and random init: 2 seeds each,
    assert est["estimate"]["finetunings_to_run"] == 4         # no frozen scoring, no pre-training
    assert est["estimate"]["scoring_s"] == pytest.approx(4 * (2 * 7.0 + 2 * 12 * 0.01))
    main(args + ["--finetune-seeds", "0,1"])
    second, _ = _last_json(capsys)
    assert calls == [1, 1]                                    # seed 1 of the cell, then of random init
    for before, after in ((first["cells"][0], second["cells"][0]), (first["random_init"], second["random_init"])):
        assert after["finetune_top1_seeds"][0] == before["finetune_top1_seeds"][0]   # seed 0 kept
        assert len(after["finetune_top1_seeds"]) == 2
    assert second["cells"][0]["knn_top1"] == first["cells"][0]["knn_top1"]
    saved = json.loads((tmp_path / "smalldata.json").read_text())
    run = saved["runs"][0]                                    # the kept seed's hits, then the new one's
    assert [sum(h) / 12 for h in run["finetune_correct"]] == pytest.approx(run["finetune_top1_seeds"])
    # a fine-tuning of seed 1 run on its own gives the same top-1: the kept parts are the real ones
    monkeypatch.undo()
    from dino_lite.checkpoint import backbone_from_checkpoint
    backbone, _ = backbone_from_checkpoint(tmp_path / "dino-1-s0" / "checkpoint.pt")
    cfg = cell_config("cpu-demo", "dino", 1.0, 2, str(tiny_folder), seed=0, sets=SETS)
    recipe = {k: v for k, v in smalldata.FINETUNE.items() if k != "seeds"}
    alone = finetune(backbone, cfg, seed=1, **{**recipe, "max_steps": 2})
    assert second["cells"][0]["finetune_top1_seeds"][1] == pytest.approx(alone["top1"])


def test_a_changed_pre_training_option_is_refused_not_overwritten(tiny_folder, tmp_path, capsys):
    main(_study(tiny_folder, tmp_path, methods="dino") + ["--fractions", "1", "--no-baseline"])
    capsys.readouterr()
    stamp = (tmp_path / "dino-1-s0" / "checkpoint.pt").stat().st_mtime_ns
    args = _study(tiny_folder, tmp_path, methods="dino") + ["--fractions", "1", "--no-baseline",
                                                           "--set", "teacher_temp=0.05"]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "dino-1-s0 holds a pre-training of other settings" in err and "teacher_temp" in err
    assert (tmp_path / "dino-1-s0" / "checkpoint.pt").stat().st_mtime_ns == stamp
    main(args + ["--overwrite"])                              # asked for: replaced
    assert json.loads((tmp_path / "dino-1-s0" / "config.json").read_text())["teacher_temp"] == 0.05


@pytest.mark.parametrize("bad, message", [
    (["--tokenizers", "vq"], "unknown tokenizers"),
    (["--fractions", "0,1"], "fractions must be in"),
    (["--finetune-seeds", "x"], "--finetune-seeds expects"),
])
def test_bad_options_are_reported_before_any_pre_training(tiny_folder, tmp_path, capsys, bad, message):
    with pytest.raises(SystemExit):
        main(_study(tiny_folder, tmp_path / "out") + bad)
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("option", ["--finetune-epochs", "--steps"])
def test_zero_lengths_are_refused_by_the_parser(tiny_folder, tmp_path, capsys, option):
    with pytest.raises(SystemExit):
        main(_study(tiny_folder, tmp_path) + [option, "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_an_empty_result_file_is_named(tiny_folder, tmp_path, capsys):
    args = _study(tiny_folder, tmp_path, methods="dino") + ["--fractions", "1", "--no-baseline"]
    main(args)
    capsys.readouterr()
    (result,) = (tmp_path / "dino-1-s0").glob("result-*.json")
    result.write_text("")
    with pytest.raises(SystemExit):
        main(args)
    assert f"{result} is not valid JSON" in capsys.readouterr().err


def test_timings_that_flip_give_one_precision_for_every_cell(tiny_folder, tmp_path, capsys, monkeypatch):
    # a busy machine used to measure bf16 faster in one process and slower in the next, and the
    # study mixed cells of both precisions (and crop sizes); now one stored decision holds
    monkeypatch.setenv(precision.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (None, "a test CPU"))
    flips = iter([dict(fp32=0.03, bf16=0.01, fused=1, explicit=1),
                  dict(fp32=0.01, bf16=0.03, fused=1, explicit=1)] * 20)
    monkeypatch.setattr(precision, "measure_cpu", lambda *shape: next(flips))
    args = _study(tiny_folder, tmp_path / "out", methods="dino") + ["--no-baseline"]
    main(args)
    first, _ = _last_json(capsys)
    configs = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*/config.json"))]
    assert len(configs) == 2 and {c["bf16"] for c in configs} == {first["precision"] == "bf16"}
    main(args)                                                # a new process, the same decision
    second, printed = _last_json(capsys)
    assert second["precision"] == first["precision"] and printed.count(": reusing") == 2


def test_the_paired_gap_against_hand_computations():
    # per image: a right on 0, 1; b right on 0, 2: differences 0, 1, -1, 0
    gap, se = paired_gap([[1, 1, 0, 0]], [[1, 0, 1, 0]])
    assert gap == 0 and se == pytest.approx(100 * math.sqrt(2 / 3) / 2)
    # two fine-tunings averaged per image first: a = 1, 0.5, 0, 0 against b = 1, 0, 0, 0
    gap, se = paired_gap([[1, 1, 0, 0], [1, 0, 0, 0]], [[1, 0, 0, 0]])
    d = [0, 0.5, 0, 0]
    assert gap == pytest.approx(12.5)
    assert se == pytest.approx(100 * math.sqrt(sum((x - 0.125) ** 2 for x in d) / 3) / 2)
    # networks that fail on the same images: the paired error is far below the unpaired one
    a, b = [1] * 500 + [0] * 500, [1] * 470 + [0] * 530
    gap, se = paired_gap([a], [b])
    unpaired = 100 * math.hypot(math.sqrt(0.5 * 0.5 / 1000), math.sqrt(0.47 * 0.53 / 1000))
    assert gap == pytest.approx(3.0) and se < unpaired / 3
    with pytest.raises(ValueError, match="1000 and 999"):
        paired_gap([a], [b[:999]])


def test_the_gap_over_random_init_is_unpaired_for_results_without_hits():
    base = {"finetune_top1": 0.5, "finetune_se": 0.016, "seed_se": None}
    cell = {"method": "dino", "fraction": 1.0, "finetune_top1": 0.53, "finetune_se": 0.016, "seed_se": None}
    run = {"method": "dino", "fraction": 1.0, "finetune_top1_seeds": [0.53]}
    old = over_random_init(cell, [run], base)                 # a result file from before the hits
    assert old == {"over_random_init": pytest.approx(3.0), "paired": False,
                   "over_random_init_se": pytest.approx(100 * math.hypot(0.016, 0.016))}
    hits_a, hits_b = [1] * 530 + [0] * 470, [1] * 500 + [0] * 500
    new = over_random_init(cell, [{**run, "finetune_correct": [hits_a]}], {**base, "finetune_correct": [hits_b]})
    assert new["paired"] is True and new["over_random_init_se"] == pytest.approx(paired_gap([hits_a], [hits_b])[1])


def test_the_study_statistics_against_hand_computations():
    def run(seed, tops):
        return {"finetune_top1": sum(tops) / len(tops), "finetune_top1_seeds": tops,
                "test_images": 1000, "seed": seed}
    # one pre-training seed: the spread is that of the fine-tuning seeds
    one = _errors([run(0, [0.40, 0.44])])
    assert one["seed_se"] == pytest.approx(math.sqrt(((0.02 ** 2) * 2) / 1 / 2))
    assert one["binomial_se"] == pytest.approx(math.sqrt(0.42 * 0.58 / 1000))
    assert one["finetune_se"] == pytest.approx(math.hypot(one["seed_se"], one["binomial_se"]))
    # two pre-training seeds: the spread of their means
    two = _errors([run(0, [0.40, 0.44]), run(1, [0.46, 0.50])])
    assert two["finetune_top1_mean"] == pytest.approx(0.45)
    assert two["seed_se"] == pytest.approx(math.sqrt((0.03 ** 2 * 2) / 1 / 2))
    cells = [{"method": m, "fraction": f, "finetune_top1": t, "finetune_se": 0.01}
             for m, f, t in (("dino", 0.1, 0.30), ("dino", 1.0, 0.40),
                             ("splitmask", 0.1, 0.35), ("splitmask", 1.0, 0.36))]
    d = drops(cells)
    assert d["dino"]["drop"] == pytest.approx(10) and d["splitmask"]["drop"] == pytest.approx(1)
    assert d["dino"]["se"] == pytest.approx(100 * math.hypot(0.01, 0.01))
    # 9 points against an SE of 2: decided
    assert verdict(d).startswith("DINO loses 9.0 +- 2.0 points more than SplitMask")
    close = {"dino": {"drop": 3.0, "se": 2.0}, "splitmask": {"drop": 1.0, "se": 2.0}}
    se = math.hypot(2, 2)
    assert verdict(close) == (f"No difference larger than {2 + 1.96 * se:.1f} points at 95% between "
                              f"DINO's drop and SplitMask's (DINO minus SplitMask: +2.0 +- {se:.1f}).")


def test_drops_and_the_verdict_are_paired_image_by_image_when_the_hits_are_kept():
    n = 1000

    def run(method, fraction, *rights):         # one fine-tuning per count: right on the first k images
        hits = [[1] * k + [0] * (n - k) for k in rights]
        tops = [k / n for k in rights]
        return {"method": method, "fraction": fraction, "seed": 0, "test_images": n,
                "finetune_top1": sum(tops) / len(tops), "finetune_top1_seeds": tops,
                "finetune_correct": hits, "knn_top1": 0.0, "linear_top1": 0.0,
                "converged": True, "paper_inat19": None}
    # both methods lose mostly the same images when their data shrink
    runs = [run("dino", 1.0, 610, 610), run("dino", 0.1, 500, 502),
            run("splitmask", 1.0, 600, 600), run("splitmask", 0.1, 505, 505)]
    cells = aggregate(runs)
    d = drops(cells, runs)

    def per_image(r):                           # brute force: each image's mean hit over the fine-tunings
        return [sum(h[i] for h in r["finetune_correct"]) / len(r["finetune_correct"]) for i in range(n)]

    def se_of(diffs):
        m = sum(diffs) / n
        return 100 * math.sqrt(sum((x - m) ** 2 for x in diffs) / (n - 1) / n)
    dino = [a - b for a, b in zip(per_image(runs[0]), per_image(runs[1]))]
    seeds = 100 * 0.001                          # dino 0.1's fine-tunings: 0.500, 0.502
    assert d["dino"]["paired"] and d["dino"]["drop"] == pytest.approx(10.9)
    assert d["dino"]["se"] == pytest.approx(math.hypot(se_of(dino), seeds))
    unpaired = drops(cells)                     # without the hits: the two cells' errors
    assert not unpaired["dino"]["paired"] and unpaired["dino"]["drop"] == pytest.approx(10.9)
    assert unpaired["dino"]["se"] == pytest.approx(
        100 * math.hypot(cells[0]["finetune_se"], cells[1]["finetune_se"]))
    assert d["dino"]["se"] < unpaired["dino"]["se"] / 1.5
    # the verdict: (dino 1 - dino 0.1) - (splitmask 1 - splitmask 0.1), image by image
    both = [x - (a - b) for x, a, b in zip(dino, per_image(runs[2]), per_image(runs[3]))]
    se = math.hypot(se_of(both), d["dino"]["seed_se"], d["splitmask"]["seed_se"])
    diff = d["dino"]["drop"] - d["splitmask"]["drop"]
    assert diff == pytest.approx(1.4)
    # four cells of two fine-tuning seeds each: their spreads have one degree of freedom each,
    # the images' 999 (Welch-Satterthwaite by hand), so the interval is t's, not 1.96 SEs
    pieces = [(se_of(both), n - 1)] + [(100 * c["seed_se"], 1) for c in cells if c["seed_se"]]
    df = sum(s ** 2 for s, _ in pieces) ** 2 / sum(s ** 4 / k for s, k in pieces)
    q = t_quantile(0.975, df)
    assert q > 1.96
    assert verdict(d, cells=cells, runs=runs) == (
        f"DINO loses {diff:.1f} +- {se:.1f} points more than SplitMask when the pre-training data "
        f"shrink (95% interval, Student's t with {df:.0f} degrees of freedom: {diff - q * se:+.1f} to "
        f"{diff + q * se:+.1f}). 4 of the 4 cells have one pre-training seed: the pre-training seeds' "
        f"spread is not in the interval.")
    got = difference(d, cells=cells, runs=runs)
    assert got["paired"] and got["difference"] == pytest.approx(diff) and got["se"] == pytest.approx(se)
    assert got["df"] == pytest.approx(df) and got["low"] == pytest.approx(diff - q * se)
    one_left = aggregate(runs + [{**r, "seed": 1} for r in runs[:3]])    # 3 cells of 2 seeds
    assert verdict(drops(one_left, runs), cells=one_left, runs=runs).endswith(
        " 1 of the 4 cells has one pre-training seed: the pre-training seeds' spread is not in the interval.")
    # a second pre-training seed of every cell: no caveat, and its spread joins the error
    second = [{**r, "seed": 1} for r in runs]
    cells2 = aggregate(runs + second)
    assert all(c["seeds"] == [0, 1] for c in cells2)
    v2 = verdict(drops(cells2, runs + second), cells=cells2, runs=runs + second)
    assert v2.startswith(f"DINO loses {diff:.1f} +- {se_of(both):.1f} points more") and "seed" not in v2, v2
    # without the image pairing the same drops are not told apart
    wide = math.hypot(d["dino"]["se"], d["splitmask"]["se"])
    assert wide > 2 * se and verdict(d).startswith("No difference larger than")


def test_finished_only_reports_the_finished_cells_and_trains_nothing(tiny_folder, tmp_path, capsys,
                                                                     monkeypatch):
    from dino_lite import smalldata, train
    args = _study(tiny_folder, tmp_path, methods="dino")
    main(args)                                                # seed 0 of both fractions, random init
    first, _ = _last_json(capsys)

    def forbidden(*a, **kw):
        raise AssertionError("--finished-only trained, scored or timed something")
    for name in ("finetune", "knn_and_linear_accuracy", "pretraining_step_seconds",
                 "finetune_step_seconds"):
        monkeypatch.setattr(smalldata, name, forbidden)
    monkeypatch.setattr(train, "train", forbidden)
    main(args + ["--seeds", "0,1", "--finished-only"])        # seed 1 not run yet
    out, printed = _last_json(capsys)
    assert out["left_out"] == ["dino-0.5-s1", "dino-1-s1"]
    assert "2 left out, not finished: dino-0.5-s1, dino-1-s1" in printed
    assert [c["finetune_top1"] for c in out["cells"]] == [c["finetune_top1"] for c in first["cells"]]
    assert out["random_init"]["finetune_top1"] == first["random_init"]["finetune_top1"]
    saved = json.loads((tmp_path / "smalldata.json").read_text())
    assert [c["seeds"] for c in saved["cells"]] == [[0], [0]] and set(saved["drops"]) == {"dino"}
    assert not (tmp_path / "dino-1-s1").exists()
    table = (tmp_path / "smalldata.md").read_text()
    assert "left out: dino-0.5-s1, dino-1-s1." in table and "| dino | 0.5 | 0 | " in table
    for result in [*(tmp_path / "dino-0.5-s0").glob("result-*.json"),   # scores of another
                   *tmp_path.glob("random_init-????????.json")]:       # recipe there
        kept = json.loads(result.read_text())
        kept["key"]["finetune"]["lr"] *= 2
        result.write_text(json.dumps(kept))
    main(args + ["--finished-only"])                          # left out, not scored again
    out, _ = _last_json(capsys)
    assert out["left_out"] == ["dino-0.5-s0", "random init"] and len(out["cells"]) == 1
    assert out["random_init"] is None
    with pytest.raises(SystemExit):                           # nothing finished: said, not trained
        main(_study(tiny_folder, tmp_path, methods="splitmask") + ["--finished-only"])
    assert f"no cell in {tmp_path} is pre-trained and scored" in capsys.readouterr().err
    with pytest.raises(SystemExit):                           # two ways to train nothing: pick one
        main(args + ["--finished-only", "--dry-run"])
    assert "not allowed with" in capsys.readouterr().err


def test_a_resumed_cell_counts_every_part_of_its_pre_training(tiny_folder, tmp_path, monkeypatch, capsys):
    from dino_lite.train import Trainer, train
    now = {"wall": 0.0, "cpu": 0.0}              # fake clocks that only the first part moves
    monkeypatch.setattr(Trainer, "clock", staticmethod(lambda: now["wall"]))
    monkeypatch.setattr(Trainer, "cpu_clock", staticmethod(lambda: now["cpu"]))

    def tick(rec):
        now["wall"] += 3.0
        now["cpu"] += 5.0
    cfg = cell_config("cpu-demo", "dino", 1.0, 2, str(tiny_folder), seed=0, sets=SETS)
    train(cfg, tmp_path / "dino-1-s0", progress=False, until=1, on_step=tick)   # cut after step 1
    main(_study(tiny_folder, tmp_path, methods="dino") + ["--fractions", "1", "--no-baseline"])
    out = capsys.readouterr().out
    assert "resuming the interrupted run" in out
    cost = json.loads((tmp_path / "dino-1-s0" / "pretraining_cost.json").read_text())
    assert cost == {"pretrain_wall_s": 3.0, "pretrain_cpu_s": 5.0}   # the first part is counted


@pytest.mark.parametrize("df", [1, 2, 3, 4.5, 10, 30, 1000])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995])
def test_t_quantiles_against_scipy(df, p):
    stats = pytest.importorskip("scipy.stats")
    assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-6)
    assert t_quantile(1 - p, df) == pytest.approx(stats.t.ppf(1 - p, df), rel=1e-6)


def test_t_quantiles_against_closed_forms():
    # df 1 is the Cauchy distribution, df 2 has t = (2p - 1) sqrt(2 / (4p(1 - p))); no df: the normal
    for p in (0.6, 0.9, 0.975):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-7)
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) * math.sqrt(2 / (4 * p * (1 - p))), rel=1e-7)
    assert t_quantile(0.975, None) == pytest.approx(1.959964, abs=1e-6)
    assert t_quantile(0.975, 1e5) == pytest.approx(1.96, abs=1e-3)
    assert t_quantile(0.5, 3) == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match="0 < p < 1"):
        t_quantile(1.0, 3)


def test_welch_satterthwaite_against_hand_computations():
    # two seed spreads of one degree of freedom each and one exact part
    parts = [[1.0, 1], [2.0, 1], [1.5, None]]
    v = 1 + 4 + 2.25
    assert satterthwaite(parts) == pytest.approx(v ** 2 / (1 + 16))
    assert satterthwaite([[1.0, None], [2.0, None]]) is None        # every part exact: the normal
    assert satterthwaite([[2.0, 5]]) == pytest.approx(5)            # one part keeps its own df
    # the more the seed spread leads, the fewer the degrees of freedom and the wider the interval
    image_led, seed_led = satterthwaite([[1.2, 999], [0.3, 1]]), satterthwaite([[0.3, 999], [1.2, 1]])
    assert image_led > 100 and seed_led < 1.2
    assert t_quantile(0.975, seed_led) > t_quantile(0.975, image_led) > 1.96
