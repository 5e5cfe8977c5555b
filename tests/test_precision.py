"""Precision by measurement: bf16 only where it is measured faster, forced settings win, and the
choice is recorded with the run."""

import json

import pytest
import torch

from conftest import tiny_config
from dino_lite import precision
from dino_lite.checkpoint import load_checkpoint
from dino_lite.config import make_config
from dino_lite.precision import Precision, choose


def timings(fp32=1.0, bf16=1.0, fused=1.0, explicit=1.0):
    """A fake ``measure`` returning the given seconds (and recording that it was called)."""
    calls = []

    def measure(*shape):
        calls.append(shape)
        return {"fp32": fp32, "bf16": bf16, "fused": fused, "explicit": explicit}
    measure.calls = calls
    return measure


def test_slow_bf16_gives_fp32_and_says_why():
    p = choose(measure=timings(fp32=0.01, bf16=1.0))          # an AVX2 CPU: bf16 100x slower
    assert p.bf16 is False and p.name == "fp32"
    assert "100.0x slower" in p.reason
    assert "fp32" in str(p)


def test_fast_bf16_is_chosen():
    p = choose(measure=timings(fp32=0.03, bf16=0.01))         # native bf16: 3x faster
    assert p.bf16 is True and "3.0x faster" in p.reason


def test_bf16_must_be_clearly_faster():
    # 10% faster is within the noise of a short timing: not worth bf16's rounding
    assert choose(measure=timings(fp32=1.1, bf16=1.0)).bf16 is False
    assert choose(measure=timings(fp32=precision.BF16_MARGIN, bf16=1.0)).bf16 is True


def test_attention_kernel_follows_the_measurement():
    assert choose(measure=timings(fused=1.0, explicit=3.0)).fused_attention is True
    assert choose(measure=timings(fused=3.0, explicit=1.0)).fused_attention is False
    assert choose(measure=timings(fused=1.0, explicit=1.05)).fused_attention is False  # a tie: explicit


@pytest.mark.parametrize("bf16, fused", [(True, "on"), (False, "off"), ("true", "off"), ("false", "on")])
def test_forced_settings_win_without_measuring(bf16, fused):
    measure = timings(fp32=0.01, bf16=1.0, fused=9.0)
    p = choose(bf16, fused, measure=measure)
    assert p.bf16 is (bf16 in (True, "true")) and p.fused_attention is (fused == "on")
    assert measure.calls == [] and p.reason == "set in the config"


def test_a_forced_bf16_with_auto_attention_still_measures_attention():
    p = choose(False, "auto", measure=timings(fp32=0.01, bf16=1.0, fused=1.0, explicit=2.0))
    assert p.bf16 is False and p.fused_attention is True and "as set" in p.reason


def test_gpus_keep_bf16_and_the_fused_kernel():
    measure = timings(fp32=0.01, bf16=1.0)
    p = choose(device_type="cuda", measure=measure)
    assert p.bf16 and p.fused_attention and measure.calls == []


def test_bad_setting_is_named():
    with pytest.raises(ValueError, match="bf16"):
        choose("maybe", measure=timings())
    with pytest.raises(ValueError, match="bf16"):
        make_config("cpu-demo", sets=["bf16=maybe"])


def test_real_measurement_runs_inside_no_grad():
    with torch.no_grad():         # evaluation code measures from inside no_grad
        t = precision.measure_cpu(32, 2, 9, 4)
    assert set(t) == {"fp32", "bf16", "fused", "explicit"} and min(t.values()) > 0


def test_precision_round_trips():
    p = Precision(False, True, "why")
    assert Precision.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with torch.autocast("cpu", dtype=torch.bfloat16):   # fp32's context is a no-op
        with p.autocast("cpu"):
            assert torch.is_autocast_enabled("cpu")
    with Precision(True, False, "").autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def _fake_machine(monkeypatch, bf16_seconds):
    """A CPU whose instruction set is unknown (so bf16 is timed) and whose stored timings say
    bf16 takes ``bf16_seconds`` where fp32 takes 0.01."""
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (None, "a test CPU"))
    monkeypatch.setattr(precision, "machine_timings", timings(fp32=0.01, bf16=bf16_seconds))


def test_the_run_records_its_choice(tiny_folder, tmp_path, monkeypatch):
    from dino_lite.train import read_log, train
    _fake_machine(monkeypatch, bf16_seconds=1.0)          # bf16 measures 100x slower
    trainer = train(tiny_config(tiny_folder, max_steps=2), tmp_path, progress=False)
    assert trainer.precision.bf16 is False
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["bf16"] == "auto" and saved["resolved_precision"]["bf16"] is False
    assert "slower" in saved["resolved_precision"]["reason"]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["precision"]["bf16"] is False
    assert [r["precision"] for r in read_log(tmp_path)] == ["fp32", "fp32"]


def test_resume_keeps_the_checkpoints_precision(tiny_folder, tmp_path, monkeypatch):
    from dino_lite.train import DINOTrainer, train
    _fake_machine(monkeypatch, bf16_seconds=0.001)        # first run: bf16 measures fast
    train(tiny_config(tiny_folder, max_steps=2), tmp_path, progress=False)
    _fake_machine(monkeypatch, bf16_seconds=1.0)          # the same run resumed elsewhere
    resumed = DINOTrainer(tiny_config(tiny_folder, max_steps=2), tmp_path, resume=True, progress=False)
    assert resumed.precision.bf16 is True


def test_fp32_runs_take_the_presets_cheaper_variant(tiny_folder, tmp_path, monkeypatch):
    from dino_lite.train import DINOTrainer
    cfg = tiny_config(tiny_folder, max_steps=1)
    cfg.fp32_variant = dict(global_size=24, n_local=1)
    _fake_machine(monkeypatch, bf16_seconds=1.0)
    slow = DINOTrainer(cfg, tmp_path / "fp32", progress=False)
    assert (slow.cfg.global_size, slow.cfg.n_local) == (24, 1)
    _fake_machine(monkeypatch, bf16_seconds=0.001)
    fast = DINOTrainer(cfg, tmp_path / "bf16", progress=False)
    assert (fast.cfg.global_size, fast.cfg.n_local) == (32, 2)


def test_explicit_settings_win_over_the_fp32_variant():
    assert make_config("cpu-demo").fp32_variant == {"global_size": 48, "local_size": 24,
                                                    "image_size": 48}
    cfg = make_config("cpu-demo", sets=["global_size=32", "image_size=32"])
    assert cfg.fp32_variant == {"local_size": 24}
    as_fp32 = cfg.for_precision(bf16=False)
    assert (as_fp32.global_size, as_fp32.image_size, as_fp32.local_size) == (32, 32, 24)
    assert make_config("cpu-demo", sets=["fp32_variant=none"]).for_precision(False).global_size == 64
    assert make_config("cpu-demo").for_precision(False, "cuda").global_size == 64
    with pytest.raises(ValueError, match="fp32_variant"):
        make_config("cpu-demo", {"fp32_variant": {"no_such_key": 1}})
    with pytest.raises(ValueError, match="multiple of patch_size"):
        make_config("cpu-demo", {"fp32_variant": {"global_size": 50}})


def test_the_demo_evaluates_at_the_size_it_trains_at():
    # k-NN and attention maps see images at the global crop size in either precision, so the
    # trained network and its random-init baseline are read at the position grid it learned
    for bf16 in (True, False):
        cfg = make_config("cpu-demo").for_precision(bf16)
        assert cfg.image_size == cfg.global_size == (64 if bf16 else 48)


def test_the_random_init_baseline_is_read_at_the_size_its_precision_trains_at(monkeypatch):
    # `knn --preset cpu-demo --random-init`, as `make demo` runs it: the baseline takes the
    # variant exactly when a training run on this machine would
    import argparse
    from dino_lite.cli import _backbone
    args = argparse.Namespace(checkpoint=None, preset="cpu-demo", random_init=True, set=[])
    for bf16_seconds, size in ((1.0, 48), (0.001, 64)):
        _fake_machine(monkeypatch, bf16_seconds=bf16_seconds)
        backbone, cfg = _backbone(args)
        assert cfg.image_size == cfg.global_size == size


def test_an_fp32_run_with_the_variant_resumes(tiny_folder, tmp_path, monkeypatch):
    from dino_lite.train import DINOTrainer, train
    _fake_machine(monkeypatch, bf16_seconds=1.0)
    cfg = tiny_config(tiny_folder, max_steps=2)
    cfg.fp32_variant = dict(global_size=24)
    train(cfg, tmp_path, progress=False)
    resumed = DINOTrainer(cfg, tmp_path, resume=True, progress=False)   # the command, given again
    assert resumed.cfg.global_size == 24 and resumed.step == 2


def test_measuring_leaves_the_global_generator_alone():
    precision.measure_cpu.cache_clear()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    precision.measure_cpu(16, 2, 5, 2)
    assert torch.equal(torch.get_rng_state(), before)


# -- one decision per machine (issue: the precision was a per-process coin flip) ----------------

def _x86(monkeypatch, capability, bf16_flags, isa=None):
    """An x86 CPU with PyTorch's ``capability`` and (or without) the bf16 instruction flags."""
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16_flags)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    if isa is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    precision.cpu_bf16.cache_clear()
    return precision.cpu_bf16()


def test_an_x86_cpu_decides_bf16_from_its_instruction_set(monkeypatch):
    try:
        assert _x86(monkeypatch, "AVX512", True)[0] is True
        assert _x86(monkeypatch, "AVX512", False)[0] is False          # AVX-512 without BF16
        assert _x86(monkeypatch, "AVX2", False)[0] is False
        # the emulation the project measures AVX2 with: flags present, kernels capped
        assert _x86(monkeypatch, "AVX2", True)[0] is False
        native, why = _x86(monkeypatch, "AVX512", True, isa="AVX2")
        assert native is False and "capped" in why
        assert _x86(monkeypatch, "AVX512", True, isa="avx512_core_amx")[0] is True
    finally:
        precision.cpu_bf16.cache_clear()


def test_timings_that_flip_between_processes_give_one_decision(monkeypatch, tmp_path):
    # the same command measured bf16 "2.6x faster" and "1.2x slower" in consecutive runs on a
    # busy machine: the first measurement is stored for this machine and every process reads it
    monkeypatch.setenv(precision.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (None, "an Arm CPU"))
    flips = iter([dict(fp32=0.026, bf16=0.01, fused=1.0, explicit=1.0),
                  dict(fp32=0.01, bf16=0.012, fused=1.0, explicit=1.0)])
    measured = []

    def measure_cpu(*shape):
        measured.append(shape)
        return next(flips)
    monkeypatch.setattr(precision, "measure_cpu", measure_cpu)
    measure_cpu.cache_clear = lambda: None
    first = choose()
    second = choose()                      # a new process: lru caches are per process, the file is not
    assert first == second and first.bf16 is True and len(measured) == 1
    assert json.loads(precision.cache_file().read_text())      # stored, readable JSON
    remeasured = precision.machine_timings(remeasure=True)     # `dino_lite precision --remeasure`
    assert remeasured["bf16"] == 0.012 and choose().bf16 is False and len(measured) == 2


def test_an_x86_decision_ignores_the_timing_of_the_moment(monkeypatch, tmp_path):
    monkeypatch.setenv(precision.CACHE_ENV, str(tmp_path))
    try:
        _x86(monkeypatch, "AVX2", False)
        # the stored timing says bf16 is fast (a fluke): the instruction set still says fp32
        monkeypatch.setattr(precision, "machine_timings",
                            timings(fp32=1.0, bf16=0.01, fused=1.0, explicit=2.0))
        p = choose()
        assert p.bf16 is False and "no bf16 instructions" in p.reason and p.fused_attention
    finally:
        precision.cpu_bf16.cache_clear()


def test_a_corrupt_or_unwritable_store_still_gives_a_decision(monkeypatch, tmp_path):
    monkeypatch.setenv(precision.CACHE_ENV, str(tmp_path))
    precision.cache_file().write_text("{not json")
    monkeypatch.setattr(precision, "measure_cpu", lambda *shape: dict(fp32=1, bf16=2, fused=1, explicit=1))
    assert precision.machine_timings(8, 2, 5, 2)["bf16"] == 2
    assert "8x2x5x2" in json.loads(precision.cache_file().read_text())[precision.machine_id()]
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(precision.CACHE_ENV, str(blocker))      # a file where the folder should be
    assert precision.machine_timings(8, 2, 5, 2)["fp32"] == 1
