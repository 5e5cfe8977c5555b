"""The ablation switches (teacher, centering, sharpening, multi-crop, loss, predictor) and the
`ablate` table, each against the paper's definition or an independent re-implementation."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import is_share_of, tiny_config
from dino_lite.ablate import (METHOD_ROWS, ROWS, collapse_verdict, parse_rows, row_config,
                             run_ablation, teacher_information)
from dino_lite.cli import main
from dino_lite.config import make_config
from dino_lite.loss import DINOLoss, info_nce_loss, mse_loss, sinkhorn_knopp
from dino_lite.train import DINOTrainer


def swav_sinkhorn(scores, eps, iterations):
    """SwAV's Algorithm (single process), in numpy: Q = exp(scores / eps)^T, then alternate
    normalising prototypes (rows) to 1/K and samples (columns) to 1/B; return B * Q^T."""
    q = np.exp(scores / eps).T
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    return (q * b).T


def test_sinkhorn_knopp_matches_swav_and_equipartitions():
    torch.manual_seed(0)
    logits = F.normalize(torch.randn(16, 32), dim=-1) @ F.normalize(torch.randn(32, 8), dim=0)
    ours = sinkhorn_knopp(logits, temp=0.05, iterations=3)
    ref = swav_sinkhorn(logits.double().numpy(), 0.05, 3)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-7)
    assert torch.allclose(ours.sum(1), torch.ones(16), atol=1e-5)        # a distribution per image
    many = sinkhorn_knopp(logits, temp=0.05, iterations=200)             # converged: equal shares
    assert torch.allclose(many.sum(0), torch.full((8,), 16 / 8), atol=1e-3)


def test_mse_loss_is_two_minus_two_cosine_over_different_view_pairs():
    t = [torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 2.0]])]
    s = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 5.0]]), torch.tensor([[1.0, 1.0]])]
    cos = lambda a, b: float(F.cosine_similarity(a, b))                       # noqa: E731
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]
    expected = sum(2 - 2 * cos(t[i], s[j]) for i, j in pairs) / len(pairs)
    assert math.isclose(float(mse_loss(s, t)), expected, rel_tol=1e-6)


def test_info_nce_hand_computed_with_in_batch_negatives():
    torch.manual_seed(1)
    t = [torch.randn(4, 6) for _ in range(2)]
    s = [torch.randn(4, 6) for _ in range(3)]
    temp, total, n = 0.2, 0.0, 0
    for i in range(2):
        for j in range(3):
            if i == j:
                continue
            for b in range(4):                       # image b must pick its own teacher view
                sims = [float(F.cosine_similarity(s[j][b], t[i][c], dim=0)) / temp for c in range(4)]
                total += -sims[b] + math.log(sum(math.exp(x) for x in sims))
            n += 4
    assert math.isclose(float(info_nce_loss(s, t, temp)), total / n, rel_tol=1e-5)


@pytest.mark.parametrize("kind", ["mse", "infonce"])
def test_other_losses_send_no_gradient_to_the_teacher(kind):
    teacher = [torch.randn(4, 8, requires_grad=True) for _ in range(2)]
    student = [torch.randn(4, 8, requires_grad=True) for _ in range(3)]
    loss = (mse_loss if kind == "mse" else info_nce_loss)(student, teacher)
    loss.backward()
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)


def test_centering_and_sharpening_switches():
    teacher = [torch.randn(4, 8)]
    on = DINOLoss(8, 10, teacher_temp=0.04)
    on.center.fill_(0.5)
    assert torch.allclose(on.targets(teacher, 0)[0], F.softmax((teacher[0] - 0.5) / 0.04, -1))
    none = DINOLoss(8, 10, centering="none")
    none.center.fill_(0.5)
    assert torch.allclose(none.targets(teacher, 0)[0], F.softmax(teacher[0] / 0.04, -1))
    flat = DINOLoss(8, 10, warmup_teacher_temp=0.02, teacher_temp=0.07, warmup_teacher_temp_steps=5,
                    student_temp=0.1, sharpening=False)
    assert flat.teacher_temp(0) == flat.teacher_temp(9) == 0.1
    sk = DINOLoss(8, 10, centering="sinkhorn_knopp")
    assert torch.allclose(sk.targets(teacher, 0)[0], sinkhorn_knopp(teacher[0], 0.04))


@pytest.mark.parametrize("field,value", [("teacher", "ema"), ("centering", "sk"), ("loss", "l2")])
def test_unknown_switch_values_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        make_config("cpu-demo", {field: value})


def _backbone_params(model):
    return [p.detach().clone() for p in model.backbone.parameters()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("teacher", ["momentum", "student_copy", "previous_iteration", "previous_epoch"])
def test_teacher_variants(teacher, tiny_folder, tmp_path):
    """After each step the teacher holds: the EMA (momentum), the student's new weights
    (student copy), the weights the student had before the step (previous iteration), or the
    student's weights at the last epoch end, unchanged within an epoch (previous epoch)."""
    cfg = tiny_config(tiny_folder, teacher=teacher, momentum_teacher=0.9, max_steps=8,
                      warmup_epochs=0)      # a learning rate above 0 from the first step
    tr = DINOTrainer(cfg, tmp_path, progress=False)
    assert tr.steps_per_epoch == 6
    tr.sampler.set_epoch(0)
    batches = iter(tr.loader)
    for step in range(tr.steps_per_epoch):
        s_before, t_before = _backbone_params(tr.student), _backbone_params(tr.teacher)
        rec = tr.train_step(next(batches)[0], step, tr.student, tr.teacher, tr.loss_fn, tr.optimizer)
        s_after, t_after = _backbone_params(tr.student), _backbone_params(tr.teacher)
        assert not _same(s_before, s_after)
        if teacher == "momentum":
            m = rec["momentum"]
            assert m == float(tr.sched["momentum"][step]) and m < 1
            assert all(torch.allclose(t, m * tb + (1 - m) * s, atol=1e-6)
                       for t, tb, s in zip(t_after, t_before, s_after))
        elif teacher == "student_copy":
            assert _same(t_after, s_after)
        elif teacher == "previous_iteration":
            assert _same(t_after, s_before)
        elif step < tr.steps_per_epoch - 1:
            assert _same(t_after, t_before)
        else:
            assert _same(t_after, s_after)


def test_predictor_lives_on_the_student_only(tiny_folder, tmp_path):
    tr = DINOTrainer(tiny_config(tiny_folder, predictor=True, max_steps=2, warmup_epochs=0), tmp_path, progress=False)
    assert tr.student.predictor is not None and tr.teacher.predictor is None
    assert not any(k.startswith("predictor") for k in tr.teacher.state_dict())
    tr.sampler.set_epoch(0)
    views = next(iter(tr.loader))[0]
    before = [p.detach().clone() for p in tr.student.predictor.parameters()]
    tr.train_step(views, 0, tr.student, tr.teacher, tr.loss_fn, tr.optimizer)
    assert not _same(before, list(tr.student.predictor.parameters()))   # it is trained


def test_collapse_verdict_reads_the_two_teacher_entropies():
    ln_k = math.log(64)
    rec = lambda h, hb: {"teacher_entropy": h, "teacher_batch_entropy": hb, "max_entropy": ln_k}  # noqa: E731
    assert collapse_verdict([rec(ln_k, ln_k)] * 10)                 # uniform for every image
    assert collapse_verdict([rec(0.01, 0.02)] * 10)                 # one prototype for every image
    assert not collapse_verdict([rec(1.0, 3.5)] * 10)               # sharp per image, spread over the batch
    assert collapse_verdict([rec(1.0, 3.5)] * 9 + [rec(ln_k, ln_k)])   # judged on the end of the run
    assert teacher_information([rec(1.0, 3.5)] * 18 + [rec(1.0, 2.0), rec(2.0, 4.0)]) == pytest.approx(1.5)
    # the threshold is absolute (0.2 nats), whatever K: a K = 4096 teacher still near uniform but
    # telling images apart by 0.46 nats (the notebooks' 200-step run) is not collapsed, one
    # telling them apart by 0.15 nats is
    ln_big = math.log(4096)
    big = lambda h, hb: {"teacher_entropy": h, "teacher_batch_entropy": hb, "max_entropy": ln_big}  # noqa: E731
    assert not collapse_verdict([big(7.64, 8.10)] * 10)
    assert collapse_verdict([big(7.95, 8.10)] * 10)


def test_rows_cover_the_paper_table_and_teacher_variants():
    assert len(ROWS) == 13 and parse_rows("all") == list(ROWS)
    with pytest.raises(ValueError, match="unknown ablation rows"):
        parse_rows("dino,simclr")
    base = make_config("cpu-demo")
    byol = row_config(base, "byol")
    assert (byol.n_local, byol.loss, byol.predictor, byol.teacher) == (0, "mse", True, "momentum")
    swav = row_config(base, "swav")
    assert (swav.teacher, swav.centering, swav.n_local) == ("student_copy", "sinkhorn_knopp", base.n_local)


def test_a_method_row_takes_its_own_recipe_over_the_base_s_data_network_and_budget():
    from dino_lite.methods.mae import MAE_RECIPE
    from dino_lite.methods.masked import BEIT_RECIPE
    assert set(METHOD_ROWS) == {"beit", "splitmask", "mae"} and not set(METHOD_ROWS) & set(parse_rows("all"))
    assert parse_rows("dino, mae") == ["dino", "mae"]
    base = make_config("cpu-demo", {"seed": 3, "max_steps": 7, "depth": 2})
    mae, beit = row_config(base, "mae"), row_config(base, "beit")
    assert mae.method == "mae" and beit.method == "beit"
    assert (mae.lr, tuple(mae.adam_betas), mae.n_local) == (MAE_RECIPE["lr"], MAE_RECIPE["adam_betas"], 0)
    assert (beit.lr, tuple(beit.adam_betas)) == (BEIT_RECIPE["lr"], BEIT_RECIPE["adam_betas"])
    assert base.lr not in (mae.lr, beit.lr)           # not DINO's optimiser with a flag
    for cfg in (mae, beit):
        assert (cfg.seed, cfg.max_steps, cfg.depth, cfg.data, cfg.arch) == \
            (base.seed, base.max_steps, base.depth, base.data, base.arch)


def test_ablate_refuses_a_base_that_is_not_dino(tmp_path):
    with pytest.raises(ValueError, match="base recipe is DINO's.*--rows dino,mae"):
        run_ablation(make_config("cpu-demo", {"method": "mae"}), ["dino"], tmp_path)


def test_ablate_trains_a_mae_row_beside_dino_into_a_table_of_its_own(tiny_folder, tmp_path, capsys):
    small = {k: v for k, v in tiny_config(tiny_folder).to_dict().items()
             if k in ("image_size", "global_size", "local_size", "n_local", "depth", "out_dim",
                      "head_hidden", "head_bottleneck", "batch_size", "warmup_epochs")}
    main(["ablate", "--rows", "dino,mae", "--max-steps", "2", "--data", str(tiny_folder),
          "--out", str(tmp_path), "--json"] + [a for k, v in small.items() for a in ("--set", f"{k}={v}")])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    dino, mae = result["rows"]
    assert isinstance(dino["collapsed"], bool) and isinstance(dino["information"], float)
    assert mae["name"] == "mae" and mae["collapsed"] is None and mae["information"] is None
    assert is_share_of(mae["knn_top1"], 12) and is_share_of(mae["linear_top1"], 12) and mae["steps"] == 2
    saved = json.loads((tmp_path / "mae" / "result.json").read_text())
    assert saved["config"]["method"] == "mae" and "teacher_entropy" not in saved["history"][0]
    ckpt = torch.load(tmp_path / "mae" / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["method"] == "mae"
    first, second = (tmp_path / "ablation.md").read_text().split("\n\n", 1)
    assert "| dino |" in first and "| mae |" not in first
    assert "| mae | 1.50e-04 | 2 |" in second and "final loss" in second


@pytest.mark.slow
def test_ablate_command_runs_every_row_and_resumes(tiny_folder, tmp_path, capsys):
    small = {k: v for k, v in tiny_config(tiny_folder).to_dict().items()
             if k in ("image_size", "global_size", "local_size", "n_local", "depth", "out_dim",
                      "head_hidden", "head_bottleneck", "batch_size", "warmup_epochs")}
    argv = ["ablate", "--rows", "all", "--max-steps", "2", "--data", str(tiny_folder),
            "--out", str(tmp_path), "--json"] + [a for k, v in small.items() for a in ("--set", f"{k}={v}")]
    main(argv)
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert [r["name"] for r in result["rows"]] == list(ROWS)
    for r in result["rows"]:
        assert is_share_of(r["knn_top1"], 12) and is_share_of(r["linear_top1"], 12)
        assert isinstance(r["collapsed"], bool)
    by_name = {r["name"]: r for r in result["rows"]}
    assert by_name["teacher_momentum"]["knn_top1"] == by_name["dino"]["knn_top1"]   # same config, one run
    table = (tmp_path / "ablation.md").read_text()
    assert table.count("\n") == 2 + 13 + 1 and "| byol | momentum | no | no | mse | yes |" in table
    main(argv)                                                       # a second call trains nothing
    again = capsys.readouterr().out
    assert again.count("reusing") == 11 and json.loads(again.strip().splitlines()[-1])["rows"] == result["rows"]


def test_cached_result_is_reused_for_a_key_holding_tuples_and_recomputed_for_another(tmp_path):
    from dino_lite.ablate import cached_result
    calls = []

    def compute():
        calls.append(1)
        return {"knn_top1": 0.5}
    key = make_config("cpu-demo").to_dict()         # holds tuples, which JSON stores as lists
    path = tmp_path / "random_init.json"
    assert cached_result(path, key, compute) == {"knn_top1": 0.5} and len(calls) == 1
    assert cached_result(path, key, compute) == {"knn_top1": 0.5} and len(calls) == 1
    assert cached_result(path, {**key, "seed": 1}, compute) == {"knn_top1": 0.5} and len(calls) == 2
