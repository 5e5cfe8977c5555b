"""Gradient accumulation (``--set accumulate=N``): N micro-batches of B/N make the step of one
batch of B, with the center, the EMA and the learning rate of the whole batch."""

import math

import pytest
import torch

from conftest import tiny_config
from dino_lite.train import DINOTrainer, micro_batches


def one_step(data, out, accumulate, **overrides):
    """A trainer after one step (BatchNorm-free, no drop path, SGD: its update is lr x the
    gradient, so a gradient of the wrong size shows; AdamW's first step would hide it), and
    the student's weights before the step."""
    values = dict(max_steps=1, bf16=False, fused_attention="off", head_bn=False, stem="patch",
                  drop_path=0.0, warmup_epochs=0, optimizer="sgd", lr=1.0)
    trainer = DINOTrainer(tiny_config(data, accumulate=accumulate, **{**values, **overrides}),
                          out, progress=False)
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    trainer.history = trainer.run()
    return trainer, before


def assert_same_state(a, b, atol=1e-5):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=0, msg=k)


@pytest.mark.parametrize("method,extra", [("dino", {}), ("dino", {"ibot": 1.0}),
                                          ("beit", {"vocab_size": 64})],
                         ids=["dino", "dino+ibot", "beit"])
def test_four_micro_batches_make_the_step_of_the_whole_batch(tiny_folder, tmp_path, method, extra):
    full, before = one_step(tiny_folder, tmp_path / "full", 1, method=method, **extra)
    acc, _ = one_step(tiny_folder, tmp_path / "acc", 4, method=method, **extra)
    # the step moved the weights by far more than the tolerance
    moved = max((full.student.state_dict()[k] - v).abs().max().item() for k, v in before.items())
    assert moved > 1e-2
    assert_same_state(acc.student, full.student)
    if method == "dino":
        assert_same_state(acc.teacher, full.teacher)          # the EMA, once, after the step
        # the center moved once, towards the mean teacher output of all 16 images
        assert full.loss_fn.center.abs().max() > 1e-3
        torch.testing.assert_close(acc.loss_fn.center, full.loss_fn.center, atol=1e-5, rtol=0)
        if extra.get("ibot"):
            assert full.loss_fn.patch.center.abs().max() > 1e-3
            torch.testing.assert_close(acc.loss_fn.patch.center, full.loss_fn.patch.center,
                                       atol=1e-5, rtol=0)
    (rec_full,), (rec_acc,) = full.history, acc.history
    assert rec_acc["loss"] == pytest.approx(rec_full["loss"], abs=1e-5)
    # the lr is scaled by the effective batch (batch_size 16), not by the micro-batch of 4
    assert rec_acc["lr"] == rec_full["lr"] == pytest.approx(1.0 * 16 / 256)
    for key in ("teacher_entropy", "teacher_batch_entropy", "kl", "patch_loss"):
        if key in rec_full:
            assert rec_acc[key] == pytest.approx(rec_full[key], abs=1e-5), key


def test_accumulation_runs_beside_batchnorm(tiny_folder, tmp_path):
    # the cpu-demo recipe's conv stem and BatchNorm head normalise over each micro-batch: the
    # step is no longer exactly the full batch's, but it trains
    trainer = DINOTrainer(tiny_config(tiny_folder, max_steps=2, accumulate=2, bf16=False,
                                      fused_attention="off"), tmp_path, progress=False)
    history = trainer.run()
    assert len(history) == 2 and all(math.isfinite(r["loss"]) for r in history)


def test_micro_batches_split_the_rows_evenly():
    assert micro_batches(12, 3) == [slice(0, 4), slice(4, 8), slice(8, 12)]
    assert micro_batches(12, 1) == [slice(0, 12)]
    with pytest.raises(ValueError, match="equal micro-batches"):
        micro_batches(12, 5)


@pytest.mark.parametrize("bad,message", [
    ({"accumulate": 0}, "accumulate .* must be an integer >= 1"),
    ({"accumulate": 3}, "batch_size 16 does not split into accumulate=3"),
    ({"accumulate": 2, "loss": "infonce"}, "loss=infonce: its InfoNCE"),
    ({"accumulate": 2, "method": "splitmask"}, "SplitMask: its InfoNCE"),
])
def test_accumulate_is_validated(tiny_folder, bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(tiny_folder, **bad)


def test_accumulate_is_set_from_the_command_line(tiny_folder):
    from dino_lite.config import make_config
    assert make_config("cpu-demo", sets=["accumulate=4"]).accumulate == 4
    with pytest.raises(ValueError, match="accumulate expects an integer"):
        make_config("cpu-demo", sets=["accumulate=two"])
