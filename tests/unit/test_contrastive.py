import math

import torch
import torch.nn.functional as F

from clipkit.objectives.contrastive import clip_loss


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
    expected = (F.cross_entropy(logits[local], labels[local])
                + F.cross_entropy(logits.T[local], labels[local])) / 2
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
