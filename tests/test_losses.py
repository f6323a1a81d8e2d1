"""Training losses (docs/methods.md §5): optima, hand-computed cases, CSRA as cross_entropy(sim/τ, arange),
stop-gradient, global normalisation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from coral_bench.train.losses import (LOSSES, LossInputs, LossSettings, combine, csra_loss, csra_pairs, loss_parts,
                                      regression_loss, soft_ce_loss, topk_distill_loss)

D = torch.float64


def make_inputs(pred, target, head_weight, valid=None, rows=None):
    """LossInputs over [B, T, H] tensors with a linear head (logits = f @ W.T)."""
    pred = tuple(pred)
    b, t, _ = target.shape
    valid = torch.ones(b, t, dtype=torch.bool) if valid is None else valid
    rows = valid if rows is None else rows
    head = lambda f: f @ head_weight.T  # noqa: E731
    logp = torch.log_softmax(head(target[rows]), -1)
    return LossInputs(pred=pred, valid=(valid,) * len(pred), target=target, rows=rows, target_logp=logp, head=head)


def value(parts, name):
    part = next(p for p in parts if p.name == name)
    return float(part.sum / part.count)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- regression ----------------------------------------------------------------------------
def test_regression_zero_at_optimum_and_hand_computed():
    target = torch.randn(2, 3, 4, dtype=D, generator=gen())
    w = torch.randn(5, 4, dtype=D, generator=gen(1))
    assert value(regression_loss(make_inputs([target.clone()], target, w), LossSettings()), "regression/1") == 0.0
    # One slot, hidden 2: differences 0.5 (quadratic zone: 0.5·d²) and 3 (linear zone: |d| − 0.5).
    t1 = torch.zeros(1, 1, 2, dtype=D)
    p1 = torch.tensor([[[0.5, -3.0]]], dtype=D)
    parts = regression_loss(make_inputs([p1], t1, w[:, :2]), LossSettings())
    assert value(parts, "regression/1") == pytest.approx((0.5 * 0.25 + 2.5) / 2, abs=1e-15)


# ---- soft CE / top-K -------------------------------------------------------------------------
def test_soft_ce_equals_entropy_at_optimum_and_is_minimal_there():
    target = torch.randn(1, 4, 3, dtype=D, generator=gen())
    w = torch.randn(6, 3, dtype=D, generator=gen(1))
    inputs = make_inputs([target.clone()], target, w)
    p = torch.softmax(target[0] @ w.T, -1)
    entropy = float(-(p * p.log()).sum(-1).mean())
    assert value(soft_ce_loss(inputs, LossSettings()), "ce/1") == pytest.approx(entropy, abs=1e-12)
    other = make_inputs([target + 0.3 * torch.randn(target.shape, dtype=D, generator=gen(2))], target, w)
    assert value(soft_ce_loss(other, LossSettings()), "ce/1") > entropy  # Gibbs: CE ≥ H, equality at p̂ = p


def test_soft_ce_and_topk_hand_computed():
    # Identity head over V = H = 4: logits are the features themselves.
    w = torch.eye(4, dtype=D)
    target = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]], dtype=D))  # p exactly
    pred = torch.log(torch.tensor([[[0.25, 0.25, 0.25, 0.25]]], dtype=D))  # p̂ uniform
    inputs = make_inputs([pred], target, w)
    assert value(soft_ce_loss(inputs, LossSettings()), "ce/1") == pytest.approx(math.log(4), abs=1e-12)
    topk = topk_distill_loss(inputs, LossSettings(distill_k=2, distill_weight=1.0))
    assert value(topk, "topk/1") == pytest.approx((0.5 + 0.3) * math.log(4), abs=1e-12)
    at_opt = topk_distill_loss(make_inputs([target.clone()], target, w), LossSettings(distill_k=2, distill_weight=1.0))
    assert value(at_opt, "topk/1") == pytest.approx(-(0.5 * math.log(0.5) + 0.3 * math.log(0.3)), abs=1e-12)


def test_rows_outside_valid_do_not_count():
    target = torch.randn(1, 5, 3, dtype=D, generator=gen())
    pred = torch.randn(1, 5, 3, dtype=D, generator=gen(1))
    w = torch.randn(7, 3, dtype=D, generator=gen(2))
    valid = torch.tensor([[True, False, True, True, False]])
    masked = make_inputs([pred], target, w, valid=valid)
    kept = make_inputs([pred[:, valid[0]]], target[:, valid[0]], w)
    for fn in (regression_loss, soft_ce_loss, topk_distill_loss):
        a, b = fn(masked, LossSettings(distill_k=3)), fn(kept, LossSettings(distill_k=3))
        assert float(a[0].count) == 3
        assert float(a[0].sum) == pytest.approx(float(b[0].sum), abs=1e-12)


# ---- CSRA ------------------------------------------------------------------------------------
def csra_settings(**kw):
    return LossSettings(csra_weight=1.0, **kw)


def test_csra_equals_cross_entropy_of_cosines_hand_built():
    """One sequence, 2 steps, slots 1…4 (slot 0 has no step-2 history): csra/1-2 =
    cross_entropy(cos(F_1, F_2)/τ, arange), with the positive in the denominator; csra/2-1 is the
    transposed case."""
    f1 = torch.randn(1, 5, 3, dtype=D, generator=gen())
    f2 = torch.randn(1, 5, 3, dtype=D, generator=gen(1))
    tau = 0.07
    parts = csra_loss(make_inputs([f1, f2], f1, torch.eye(3, dtype=D)), csra_settings(csra_temperature=tau))
    cos = F.cosine_similarity(f1[0, 1:, None, :], f2[0, None, 1:, :], dim=-1)  # [4, 4] by hand
    want12 = F.cross_entropy(cos / tau, torch.arange(4), reduction="mean")
    want21 = F.cross_entropy(cos.T / tau, torch.arange(4), reduction="mean")
    assert value(parts, "csra/1-2") == pytest.approx(float(want12), abs=1e-12)
    assert value(parts, "csra/2-1") == pytest.approx(float(want21), abs=1e-12)
    assert {p.name for p in parts} == {"csra/1-2", "csra/2-1"}
    assert all(p.weight == 0.5 for p in parts)  # λ averaged over ordered pairs


def test_csra_pairs_and_history_slots():
    assert csra_pairs(3, "symmetric") == ((1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2))
    assert csra_pairs(3, "step1-stopgrad") == ((1, 2), (1, 3))
    f = [torch.randn(2, 6, 4, dtype=D, generator=gen(i)) for i in range(3)]
    parts = csra_loss(make_inputs(f, f[0], torch.eye(4, dtype=D)), csra_settings())
    counts = {p.name: int(p.count) for p in parts}
    # t ≥ max(a, b) − 1 for both steps of a pair: pairs with step 3 lose slots 0 and 1 of each sequence.
    assert counts["csra/1-2"] == counts["csra/2-1"] == 2 * 5
    assert counts["csra/1-3"] == counts["csra/3-2"] == 2 * 4


def test_csra_minimal_when_aligned():
    orth = torch.linalg.qr(torch.randn(8, 8, dtype=D, generator=gen()))[0][:6]  # 6 orthonormal rows
    aligned = make_inputs([orth[None], 2.0 * orth[None], orth[None] + 0.0], orth[None], torch.eye(8, dtype=D))
    rand = make_inputs([torch.randn(1, 6, 8, dtype=D, generator=gen(i)) for i in range(3)], orth[None],
                       torch.eye(8, dtype=D))
    s = csra_settings()
    a = sum(float(p.sum / p.count) for p in csra_loss(aligned, s))
    r = sum(float(p.sum / p.count) for p in csra_loss(rand, s))
    # aligned, orthogonal candidates: each term = log(1 + (n − 1)·exp(−1/τ)) ≈ 0
    n_terms = len(csra_pairs(3, "symmetric"))
    for p in csra_loss(aligned, s):
        n = int(p.count)
        assert float(p.sum / p.count) == pytest.approx(math.log(1 + (n - 1) * math.exp(-1 / 0.07)), rel=1e-9)
    assert a < 1e-4 * n_terms < r


def test_csra_stopgrad_anchor_gets_no_gradient():
    f = [torch.randn(2, 5, 4, dtype=D, generator=gen(i), requires_grad=True) for i in range(3)]
    for anchor, step1_grad in (("step1-stopgrad", False), ("symmetric", True)):
        for x in f:
            x.grad = None
        parts = csra_loss(make_inputs(f, f[0].detach(), torch.eye(4, dtype=D)), csra_settings(csra_anchor=anchor))
        sum(p.sum for p in parts).backward()
        assert (f[0].grad is not None and bool(f[0].grad.abs().max() > 0)) == step1_grad
        assert f[1].grad.abs().max() > 0 and f[2].grad.abs().max() > 0


def test_csra_in_batch_single_process_uses_every_sequence():
    f = [torch.randn(2, 4, 3, dtype=D, generator=gen(i)) for i in range(2)]
    inputs = make_inputs(f, f[0], torch.eye(3, dtype=D))
    same = csra_loss(inputs, csra_settings())
    batch = csra_loss(inputs, csra_settings(csra_negatives="in-batch"))
    flat = [F.normalize(x[:, 1:].reshape(6, 3), dim=-1) for x in f]  # slots t ≥ 1 of both sequences
    want = F.cross_entropy(flat[0] @ flat[1].T / 0.07, torch.arange(6), reduction="sum")
    assert float(batch[0].sum) == pytest.approx(float(want), abs=1e-10)
    assert float(batch[0].sum) > float(same[0].sum)  # more negatives, larger loss
    one = make_inputs([x[:1] for x in f], f[0][:1], torch.eye(3, dtype=D))  # one sequence: the two agree
    assert float(csra_loss(one, csra_settings(csra_negatives="in-batch"))[0].sum) == pytest.approx(
        float(csra_loss(one, csra_settings())[0].sum), abs=1e-12)


# ---- registry and normalisation --------------------------------------------------------------
def test_registry_skips_zero_weights():
    f = [torch.randn(1, 4, 3, dtype=D, generator=gen(i)) for i in range(2)]
    inputs = make_inputs(f, f[0], torch.randn(5, 3, dtype=D, generator=gen(9)))
    assert set(LOSSES) == {"regression", "soft_ce", "topk", "csra"}
    names = {p.name.split("/")[0] for p in loss_parts(inputs, LossSettings())}
    assert names == {"regression", "ce"}
    names = {p.name.split("/")[0] for p in loss_parts(inputs, LossSettings(distill_weight=1.0, csra_weight=0.1))}
    assert names == {"regression", "ce", "topk", "csra"}


@dataclass(frozen=True)
class OtherHalf:
    """A fake 2-process group: all-reduce adds the other process's (precomputed) numbers."""

    other: torch.Tensor
    world_size: int = 2

    def sum(self, x):
        return x + self.other


def test_global_normalisation_shares_sum_to_the_whole():
    """Two shards with unequal valid counts: each normalised by the global count, the shares add up to
    the loss of the whole batch (what makes 2 processes equal 1)."""
    b, t, h, v = 3, 6, 4, 7
    target = torch.randn(b, t, h, dtype=D, generator=gen())
    pred = [torch.randn(b, t, h, dtype=D, generator=gen(i + 1)) for i in range(2)]
    w = torch.randn(v, h, dtype=D, generator=gen(5))
    valid = torch.rand(b, t, generator=gen(6)) > 0.3
    s = LossSettings(distill_weight=1.0, distill_k=3)
    whole = combine(loss_parts(make_inputs(pred, target, w, valid=valid), s), _Local())
    shards = [slice(0, 1), slice(1, 3)]
    parts = [loss_parts(make_inputs([p[sl] for p in pred], target[sl], w, valid=valid[sl]), s) for sl in shards]
    flat = [torch.cat([torch.stack([q.count.to(D) for q in ps]), torch.stack([q.sum.detach() for q in ps])])
            for ps in parts]
    shares = [combine(parts[0], OtherHalf(flat[1])), combine(parts[1], OtherHalf(flat[0]))]
    assert float(shares[0].local + shares[1].local) == pytest.approx(whole.value, abs=1e-12)
    assert shares[0].value == pytest.approx(whole.value, abs=1e-12)
    assert shares[0].terms == pytest.approx(whole.terms, abs=1e-12)


@dataclass(frozen=True)
class _Local:
    world_size: int = 1

    def sum(self, x):
        return x
