"""The DINO loss against a hand computation and against the paper's pseudocode (Algorithm 1)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dino_lite.loss import DINOLoss, PatchLoss, dino_loss, entropy, koleo_loss, masked_patch_loss


def pseudocode_loss(student, teacher, center, tps, tpt):
    """Algorithm 1 of the paper, written independently: H(t, s) summed over t != s pairs, in numpy."""
    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    total, n = 0.0, 0
    for i, t in enumerate(teacher):
        pt = softmax((t - center) / tpt)
        for j, s in enumerate(student):
            if i == j:
                continue
            ps = softmax(s / tps)
            total += -(pt * np.log(ps)).sum(-1).mean()
            n += 1
    return total / n


def test_hand_computed_two_views():
    # K = 2, batch 1, two global views, zero center.
    s = [torch.tensor([[0.0, 0.1]]), torch.tensor([[0.1, 0.0]])]
    t = [torch.tensor([[0.0, 0.04]]), torch.tensor([[0.04, 0.0]])]
    # teacher view 0 at T=0.04 is softmax([0, 1]); student view 1 at T=0.1 is softmax([1, 0]):
    # H = -(1/(1+e)) log(e/(1+e)) - (e/(1+e)) log(1/(1+e)) = log(1+e) - 1/(1+e) = 1.04432...
    # H(t1, s0) is the same by symmetry, so the mean over the two pairs is that number.
    got = dino_loss(s, t, torch.zeros(1, 2), 0.1, 0.04)
    assert got.item() == pytest.approx(math.log(1 + math.e) - 1 / (1 + math.e), rel=1e-6)
    assert got.item() == pytest.approx(1.04432, abs=1e-5)


@pytest.mark.parametrize("n_global,n_local", [(2, 0), (2, 4), (2, 8)])
@pytest.mark.parametrize("k", [3, 64, 1000])
@pytest.mark.parametrize("temps", [(0.1, 0.04), (0.1, 0.07), (0.2, 0.02)])
def test_matches_pseudocode(n_global, n_local, k, temps):
    g = torch.Generator().manual_seed(k + n_local)
    b = 5
    student = [torch.randn(b, k, generator=g) for _ in range(n_global + n_local)]
    teacher = [torch.randn(b, k, generator=g) for _ in range(n_global)]
    center = torch.randn(1, k, generator=g) * 0.1
    ours = dino_loss(student, teacher, center, *temps).item()
    ref = pseudocode_loss([s.double().numpy() for s in student], [t.double().numpy() for t in teacher],
                          center.double().numpy(), *temps)
    assert ours == pytest.approx(ref, rel=1e-5)


def test_same_view_pairs_are_skipped():
    g = torch.Generator().manual_seed(0)
    t = [torch.randn(4, 10, generator=g) for _ in range(2)]
    s = [torch.randn(4, 10, generator=g) for _ in range(3)]
    c = torch.zeros(1, 10)

    def h(ti, si):
        return -(F.softmax((t[ti] - c) / 0.04, -1) * F.log_softmax(s[si] / 0.1, -1)).sum(-1).mean()

    cross = torch.stack([h(ti, si) for ti in range(2) for si in range(3) if si != ti]).mean()
    every = torch.stack([h(ti, si) for ti in range(2) for si in range(3)]).mean()
    got = dino_loss(s, t, c)
    assert got.item() == pytest.approx(cross.item(), rel=1e-6)
    assert got.item() != pytest.approx(every.item(), rel=1e-3)


def test_single_view_is_an_error():
    with pytest.raises(ValueError):
        dino_loss([torch.zeros(2, 3)], [torch.zeros(2, 3)], torch.zeros(1, 3))


def test_teacher_gets_no_gradient():
    t = [torch.randn(3, 8, requires_grad=True) for _ in range(2)]
    s = [torch.randn(3, 8, requires_grad=True) for _ in range(4)]
    dino_loss(s, t, torch.zeros(1, 8)).backward()
    assert all(x.grad is None for x in t)
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)


def test_center_update_is_an_ema_of_teacher_means():
    loss = DINOLoss(out_dim=4, total_steps=10, center_momentum=0.9)
    t = [torch.ones(2, 4) * 2.0, torch.ones(2, 4) * 4.0]           # batch mean = 3
    loss.update_center(t)
    assert torch.allclose(loss.center, torch.full((1, 4), 0.3))
    loss.update_center(t)
    assert torch.allclose(loss.center, torch.full((1, 4), 0.9 * 0.3 + 0.1 * 3))


def test_forward_uses_old_center_then_updates():
    loss = DINOLoss(out_dim=4, total_steps=10)
    s = [torch.randn(2, 4) for _ in range(3)]
    t = [torch.randn(2, 4) for _ in range(2)]
    expected = dino_loss(s, t, torch.zeros(1, 4))
    assert loss(s, t, 0).item() == pytest.approx(expected.item())
    assert loss.center.abs().sum() > 0


def test_teacher_temperature_warmup_endpoints():
    loss = DINOLoss(out_dim=4, total_steps=100, warmup_teacher_temp=0.04, teacher_temp=0.07,
                    warmup_teacher_temp_steps=30)
    assert loss.teacher_temp(0) == pytest.approx(0.04)
    assert loss.teacher_temp(29) == pytest.approx(0.07)
    assert loss.teacher_temp(99) == pytest.approx(0.07)


def test_diagnostics_entropy_bounds():
    loss = DINOLoss(out_dim=16, total_steps=10)
    uniform = [torch.zeros(3, 16), torch.zeros(3, 16)]
    d = loss.diagnostics(uniform + [torch.zeros(3, 16)], uniform, 0)
    assert d["teacher_entropy"] == pytest.approx(math.log(16), rel=1e-5)
    assert d["kl"] == pytest.approx(0.0, abs=1e-6)
    onehot = torch.full((1, 16), -1e4)
    onehot[0, 0] = 0
    assert entropy(F.softmax(onehot, -1)).item() == pytest.approx(0.0, abs=1e-6)


def test_koleo_hand_computed():
    # unit vectors at 0, 90 and 180 degrees: every nearest neighbour is sqrt(2) away
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]) * 3.0   # scale must not matter
    assert koleo_loss(x).item() == pytest.approx(-math.log(math.sqrt(2)), rel=1e-5)


@pytest.mark.parametrize("n,d", [(2, 3), (16, 8), (64, 128)])
def test_koleo_matches_brute_force(n, d):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n + d))
    u = (x / x.norm(dim=1, keepdim=True)).numpy().astype(np.float64)
    dist = np.sqrt(((u[:, None] - u[None]) ** 2).sum(-1)) + np.diag(np.full(n, np.inf))
    expected = -np.log(dist.min(1)).mean()
    assert koleo_loss(x).item() == pytest.approx(expected, rel=1e-4)


def test_koleo_gradient_spreads_features():
    # two near-duplicates and one far point: a step down the gradient moves the pair apart
    x = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0]], requires_grad=True)
    koleo_loss(x).backward()
    before = F.normalize(x.detach(), dim=1)
    moved = F.normalize(x.detach() - 0.01 * x.grad, dim=1)
    assert (moved[0] - moved[1]).norm() > (before[0] - before[1]).norm()


def test_masked_patch_loss_hand_computed():
    # patch 1: the centred teacher is uniform and the student says (3/4, 1/4) at temperature 0.1;
    # patch 2: the teacher is sure of prototype 0, the student spreads (1/2, 1/2)
    student = torch.tensor([[0.1 * math.log(3.0), 0.0], [0.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0], [21.0, 0.0]])
    center = torch.tensor([[1.0, 0.0]])
    p0 = 1 / (1 + math.exp(-20 / 0.04))                       # ~1: softmax((20, 0) / 0.04)
    h1 = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    h2 = -(p0 * math.log(0.5) + (1 - p0) * math.log(0.5))
    got = masked_patch_loss(student, teacher, center, student_temp=0.1, teacher_temp=0.04)
    assert got.item() == pytest.approx((h1 + h2) / 2, rel=1e-5)


@pytest.mark.parametrize("n,k", [(1, 8), (7, 64), (40, 256)])
def test_masked_patch_loss_matches_numpy(n, k):
    g = torch.Generator().manual_seed(n)
    s, t, c = (torch.randn(rows, k, generator=g) for rows in (n, n, 1))
    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    # iBOT: every masked patch compares the same view's teacher and student (no cross-view pairs)
    expected = -(softmax((t.numpy() - c.numpy()) / 0.07) * np.log(softmax(s.numpy() / 0.1))).sum(-1).mean()
    assert masked_patch_loss(s, t, c, 0.1, 0.07).item() == pytest.approx(expected, rel=1e-5)


def test_patch_loss_teacher_gets_no_gradient_and_center_is_an_ema():
    s = torch.randn(5, 16, requires_grad=True)
    t = torch.randn(5, 16, requires_grad=True)
    patch = PatchLoss(16, center_momentum=0.9)
    first = patch(s, t, teacher_temp=0.04)
    first.backward()
    assert t.grad is None and s.grad is not None
    assert torch.allclose(patch.center, 0.1 * t.detach().mean(0, keepdim=True))
    assert first.item() == pytest.approx(masked_patch_loss(s, t, torch.zeros(1, 16)).item())
