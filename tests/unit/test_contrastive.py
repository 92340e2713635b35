import math

import pytest
import torch
import torch.nn.functional as F

from clipkit.objectives.contrastive import HardNegatives, NegativeRule, clip_loss


def naive_clip_loss(a, b, scale):
    """Per-row reference: -log softmax of the matching entry, both directions, averaged."""
    n = a.shape[0]
    total = 0.0
    for i in range(n):
        row = torch.stack([scale * a[i] @ b[j] for j in range(n)])
        col = torch.stack([scale * b[i] @ a[j] for j in range(n)])
        total += -(row[i] - torch.logsumexp(row, 0)) - (col[i] - torch.logsumexp(col, 0))
    return total / (2 * n)


def test_clip_loss_matches_naive_reference():
    torch.manual_seed(0)
    a = F.normalize(torch.randn(7, 5, dtype=torch.float64), dim=-1)
    b = F.normalize(torch.randn(7, 5, dtype=torch.float64), dim=-1)
    scale = torch.tensor(math.exp(2.0), dtype=torch.float64)
    assert torch.allclose(clip_loss(a, b, scale), naive_clip_loss(a, b, scale), atol=1e-10)


def test_perfect_alignment_gives_near_zero_loss():
    a = torch.eye(4)
    assert clip_loss(a, a.clone(), torch.tensor(100.0)) < 1e-6


def test_gather_hook_scores_local_rows_against_all_columns():
    """A fake 'other rank' holding extra rows: labels must point at this rank's offset."""
    torch.manual_seed(1)
    a_all = F.normalize(torch.randn(6, 4, dtype=torch.float64), dim=-1)
    b_all = F.normalize(torch.randn(6, 4, dtype=torch.float64), dim=-1)
    scale = torch.tensor(10.0, dtype=torch.float64)
    local = slice(2, 4)

    def gather(x):
        if x.ndim == 1:  # the validity mask: every row valid on the fake other ranks
            return torch.ones(6, dtype=x.dtype), 2
        full = a_all if x.data_ptr() == a_all[local].data_ptr() else b_all
        return full, 2

    local_loss = clip_loss(a_all[local], b_all[local], scale, gather)
    logits = scale * a_all @ b_all.T
    labels = torch.arange(6)
    expected = (F.cross_entropy(logits[local], labels[local]) + F.cross_entropy(logits.T[local], labels[local])) / 2
    assert torch.allclose(local_loss, expected, atol=1e-10)


def test_rows_without_a_partner_are_neither_scored_nor_negatives():
    torch.manual_seed(2)
    a = F.normalize(torch.randn(8, 5, dtype=torch.float64), dim=-1)
    b = F.normalize(torch.randn(8, 5, dtype=torch.float64), dim=-1)
    valid = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0], dtype=torch.bool)
    scale = torch.tensor(7.0, dtype=torch.float64)
    masked = clip_loss(a, b, scale, valid=valid)
    assert torch.allclose(masked, naive_clip_loss(a[valid], b[valid], scale), atol=1e-10)


def test_no_valid_row_gives_an_exact_zero_that_keeps_the_graph():
    a = torch.randn(4, 3, requires_grad=True)
    loss = clip_loss(a, torch.randn(4, 3), torch.tensor(10.0), valid=torch.zeros(4, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(a.grad, torch.zeros(4, 3))


def naive_direction(a, columns, scale, valid_rows, valid_columns, rule, column_log_weight):
    """Robinson et al.'s and DCL's formulas row by row with plain exponentials (float64)."""
    total = 0.0
    for i in range(a.shape[0]):
        if not valid_rows[i]:
            continue
        cos = [a[i] @ columns[j] for j in range(columns.shape[0])]
        positive = torch.exp(scale * cos[i])
        negatives = [j for j in range(columns.shape[0]) if j != i and valid_columns[j]]
        if not negatives:
            continue
        exps = torch.stack([torch.exp(scale * cos[j] + column_log_weight[j]) for j in negatives])
        importance = torch.stack([torch.exp(rule.hardness * cos[j]) for j in negatives])
        m = len(negatives)
        summed = m * (importance * exps).sum() / importance.sum()  # their reweight_neg
        if rule.debias:
            summed = torch.clamp((summed - rule.debias * m * positive) / (1 - rule.debias), min=m * torch.exp(-scale))
        total = total - torch.log(positive / (summed if rule.decoupled else positive + summed))
    return total


def naive_variant_loss(a, b, scale, rule, valid=None, hard=None, hard_present=None, hard_weight=1.0):
    n = a.shape[0]
    valid = torch.ones(n, dtype=torch.bool) if valid is None else valid
    columns, columns_valid, log_w = b, valid, torch.zeros(n, dtype=a.dtype)
    if hard is not None:
        columns = torch.cat([b, hard.flatten(0, 1)])
        columns_valid = torch.cat([valid, (hard_present & valid[:, None]).flatten()])
        log_w = torch.cat([log_w, torch.full((hard.shape[0] * hard.shape[1],), math.log(hard_weight), dtype=a.dtype)])
    forward = naive_direction(a, columns, scale, valid, columns_valid, rule, log_w)
    backward = naive_direction(b, a, scale, valid, valid, rule, torch.zeros(n, dtype=a.dtype))
    return (forward + backward) / (2 * valid.sum())


RULES = {
    "decoupled": NegativeRule(decoupled=True),
    "hardness": NegativeRule(hardness=3.0),
    "debiased": NegativeRule(hardness=2.0, debias=0.1),
    "debias_floor": NegativeRule(debias=0.6),  # large enough that the floor binds on some rows
    "all": NegativeRule(hardness=1.5, debias=0.05, decoupled=True),
}


@pytest.mark.parametrize("name", RULES)
def test_negative_rules_match_their_naive_formulas_values_and_gradients(name):
    torch.manual_seed(3)
    a = F.normalize(torch.randn(7, 5, dtype=torch.float64), dim=-1).requires_grad_()
    b = F.normalize(torch.randn(7, 5, dtype=torch.float64), dim=-1).requires_grad_()
    scale = torch.tensor(math.exp(1.5), dtype=torch.float64)
    valid = torch.tensor([1, 1, 0, 1, 1, 1, 0], dtype=torch.bool)
    got = clip_loss(a, b, scale, valid=valid, rule=RULES[name])
    want = naive_variant_loss(a, b, scale, RULES[name], valid)
    assert torch.allclose(got, want, atol=1e-10)
    assert all(
        torch.allclose(g, w, atol=1e-10)
        for g, w in zip(torch.autograd.grad(got, (a, b)), torch.autograd.grad(want, (a, b)))
    )


def test_hard_negative_columns_match_the_naive_formula_under_every_rule():
    torch.manual_seed(4)
    a = F.normalize(torch.randn(5, 4, dtype=torch.float64), dim=-1)
    b = F.normalize(torch.randn(5, 4, dtype=torch.float64), dim=-1)
    hard = F.normalize(torch.randn(5, 2, 4, dtype=torch.float64), dim=-1)
    present = torch.tensor([[1, 1], [1, 0], [0, 0], [1, 1], [0, 1]], dtype=torch.bool)
    valid = torch.tensor([1, 1, 1, 0, 1], dtype=torch.bool)
    scale = torch.tensor(5.0, dtype=torch.float64)
    for rule in [NegativeRule(), *RULES.values()]:
        got = clip_loss(a, b, scale, valid=valid, rule=rule, hard=HardNegatives(hard, present, weight=2.0))
        want = naive_variant_loss(a, b, scale, rule, valid, hard, present, hard_weight=2.0)
        assert torch.allclose(got, want, atol=1e-10), rule


def test_hard_negatives_raise_the_loss_of_a_caption_that_reads_like_its_negative():
    a = torch.eye(3, dtype=torch.float64)
    hard = F.normalize(torch.eye(3, dtype=torch.float64)[:, None, :] + 0.1, dim=-1)  # close to the positive
    scale = torch.tensor(10.0, dtype=torch.float64)
    plain = clip_loss(a, a.clone(), scale)
    with_hard = clip_loss(a, a.clone(), scale, hard=HardNegatives(hard, torch.ones(3, 1, dtype=torch.bool)))
    assert with_hard > plain + 0.1


def test_a_vanishing_hardness_is_plain_infonce():
    torch.manual_seed(5)
    a = F.normalize(torch.randn(6, 4, dtype=torch.float64), dim=-1)
    b = F.normalize(torch.randn(6, 4, dtype=torch.float64), dim=-1)
    scale = torch.tensor(20.0, dtype=torch.float64)
    assert torch.allclose(clip_loss(a, b, scale, rule=NegativeRule(hardness=1e-12)), clip_loss(a, b, scale), atol=1e-9)


def test_rules_stay_finite_at_clip_scale_in_float32_and_without_negatives():
    torch.manual_seed(6)
    a = F.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    scale = torch.tensor(100.0)
    one_valid = torch.tensor([1, 0, 0, 0], dtype=torch.bool)
    for rule in RULES.values():
        for valid in (None, one_valid):
            loss = clip_loss(a, a.detach() + 0.01, scale, valid=valid, rule=rule)
            (grad,) = torch.autograd.grad(loss, a)
            assert torch.isfinite(loss) and torch.isfinite(grad).all(), (rule, valid)


def test_debiasing_across_its_range_meets_the_floor_where_the_formula_falls_below_it():
    """From tau+ near 0 to near 1 each row passes from the debiased sum through the floor (sum
    minus tau+ M e^pos still positive but under M e^-scale) to below zero."""
    torch.manual_seed(7)
    a = F.normalize(torch.randn(6, 3, dtype=torch.float64), dim=-1)
    b = F.normalize(a + 0.3 * torch.randn(6, 3, dtype=torch.float64), dim=-1)
    scale = torch.tensor(1.5, dtype=torch.float64)
    for debias in torch.linspace(0.02, 0.98, 49).tolist():
        rule = NegativeRule(debias=debias)
        assert torch.allclose(clip_loss(a, b, scale, rule=rule), naive_variant_loss(a, b, scale, rule), atol=1e-10)


def test_plain_infonce_is_bit_for_bit_clips_formula():
    """The default path rounds as CLIP and open_clip do, (scale * a) @ b.T, so that the new rules
    leave default runs exactly as they were: the same loss and the same gradients, bit for bit."""
    torch.manual_seed(0)
    a = F.normalize(torch.randn(64, 32), dim=-1).requires_grad_()
    b = F.normalize(torch.randn(64, 32), dim=-1)
    scale = torch.tensor(14.3)
    labels = torch.arange(64)
    expected = (
        (
            F.cross_entropy(scale * a @ b.T, labels, reduction="sum")
            + F.cross_entropy(scale * b @ a.T, labels, reduction="sum")
        )
        / 2
        / 64
    )
    got = clip_loss(a, b, scale)
    assert torch.equal(got, expected)
    assert torch.equal(torch.autograd.grad(got, a)[0], torch.autograd.grad(expected, a)[0])
