"""The collapse warning during training: one line and one log record when the teacher stays
collapsed over a sustained window, by the rule ``ablate`` judges its rows with."""

import json
import math

import pytest

from conftest import tiny_config
from dino_lite import ablate, collapse
from dino_lite.collapse import CollapseWatch, collapse_kind, collapse_verdict
from dino_lite.config import make_config

LN_K = math.log(4096)


def rec(step, entropy, batch_entropy):
    return {"step": step, "teacher_entropy": entropy, "teacher_batch_entropy": batch_entropy,
            "max_entropy": LN_K}


def watch(history, total=None, cfg=None):
    """The warnings a watch gives over ``history`` (a list of records), step by step."""
    w = CollapseWatch(cfg or make_config("cpu-demo"))
    return [a for a in (w.check(r, total or len(history)) for r in history) if a]


def test_ablate_and_the_warning_share_one_rule():
    assert ablate.collapse_verdict is collapse.collapse_verdict
    assert ablate.teacher_information is collapse.teacher_information
    assert ablate.COLLAPSE_NATS == collapse.COLLAPSE_NATS


def test_a_uniform_teacher_is_warned_about_once_naming_the_knobs():
    healthy = [rec(i, 3.0, 5.0) for i in range(100)]
    flat = [rec(100 + i, LN_K - 0.01, LN_K) for i in range(100)]
    (alarm,) = watch(healthy + flat)              # once, though it stays collapsed
    assert alarm["kind"] == "uniform" and alarm["window"] == 20   # max(20, 10% of 200)
    # the mean over the last 20 steps: (2.0 + 19 x 0.01) / 20 < 0.2 nats at the 19th flat step
    assert "step 118" in alarm["message"]
    for knob in ("teacher_temp (now 0.04)", "center_momentum (now 0.9)",
                 "momentum_teacher (now 0.95)"):
        assert knob in alarm["message"]
    assert "\n" not in alarm["message"]


def test_a_one_hot_teacher_is_named_and_centering_off_is_pointed_at():
    cfg = make_config("cpu-demo", sets=["centering=none"])
    (alarm,) = watch([rec(i, 0.02, 0.05) for i in range(30)], cfg=cfg)
    assert alarm["kind"] == "one-hot"
    assert "centering=center" in alarm["fix"] and "raise teacher_temp" in alarm["fix"]
    assert collapse_kind([rec(0, 0.02, 0.05)]) == "one-hot"
    assert collapse_kind([rec(0, LN_K, LN_K)]) == "uniform"


def test_a_dip_shorter_than_the_window_is_not_a_collapse():
    total = 1000                                   # window: 10% of the steps, 100
    healthy = [rec(i, 3.0, 5.0) for i in range(300)]

    def dip(n):
        return [rec(300 + i, 5.0, 5.05) for i in range(n)]
    # 80 collapsed steps among the last 100: (80 x 0.05 + 20 x 2) / 100 nats, above 0.2
    assert watch(healthy + dip(80) + healthy, total) == []
    (alarm,) = watch(healthy + dip(100) + healthy, total)
    assert alarm["information"] < 0.2 and alarm["window"] == 100


@pytest.mark.parametrize("seed", range(5))
def test_the_warning_comes_by_the_end_of_every_run_ablate_calls_collapsed(seed):
    # over the last 10% of a run of 300 steps, the warning's window is ablate's tail: a run whose
    # end ablate calls collapsed has been warned about, at the last step at the latest
    import random
    r = random.Random(seed)
    history = [rec(i, 3.0, 3.0 + r.uniform(0.0, 0.45)) for i in range(300)]
    assert bool(watch(history)) == any(
        collapse_verdict(history[:end][-30:], tail=1.0) for end in range(30, 301))
    assert not collapse_verdict(history) or watch(history)


def test_masked_image_models_records_are_ignored():
    assert watch([{"step": i, "loss": 1.0} for i in range(50)]) == []


def test_a_run_forced_to_collapse_warns_on_the_console_and_in_the_log(tiny_folder, tmp_path,
                                                                      monkeypatch, capsys):
    from dino_lite.train import read_log, train
    monkeypatch.setattr(collapse, "WARN_MIN_STEPS", 2)
    small = dict(max_steps=3, bf16=False, fused_attention="off", stem="patch", depth=1,
                 n_local=0, batch_size=8)
    # a teacher temperature of 100 flattens every teacher distribution: uniform collapse
    train(tiny_config(tiny_folder, teacher_temp=100.0, warmup_teacher_temp=100.0, **small),
          tmp_path / "flat", progress=False)
    err = capsys.readouterr().err
    assert err.count("the teacher has collapsed (uniform) at step 1") == 1, err
    log = read_log(tmp_path / "flat")
    warned = [r for r in log if "collapse" in r]
    assert [r["step"] for r in warned] == [1] and len(log) == 3
    assert warned[0]["collapse"]["kind"] == "uniform"
    assert "teacher_temp (now 100)" in warned[0]["collapse"]["fix"]
    json.dumps(warned[0])                          # plain JSON, as every record
    train(tiny_config(tiny_folder, **small), tmp_path / "healthy", progress=False)
    assert "collapsed" not in capsys.readouterr().err
    assert not any("collapse" in r for r in read_log(tmp_path / "healthy"))
