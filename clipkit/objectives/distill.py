"""Distillation from a frozen teacher (``loss.distill``): the student's logit distributions over a
pair's columns are pulled towards the teacher's, row by row and in both directions.

For local rows i against the global batch's columns j, with the student's scale s and embeddings
(a, b) and the teacher's scale t and embeddings (ta, tb):

    KL( softmax_j(t * ta_i . tb_j) || softmax_j(s * a_i . b_j) )   and the same from b to a,

averaged over the two directions and over the valid rows of the global batch. open_clip's
DistillClipLoss takes the cross-entropy with the teacher's distribution instead; the two differ by
the teacher's entropy, a constant, so their gradients are the same; the KL is 0 where the student
matches. The teacher's embeddings are gathered across processes as the student's are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipkit.objectives.collectives import Gather, no_gather


def distill_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    teacher_a: torch.Tensor,
    teacher_b: torch.Tensor,
    logit_scale: torch.Tensor,
    teacher_scale: torch.Tensor,
    gather: Gather = no_gather,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    rows = a.shape[0]
    if valid is None:
        valid = torch.ones(rows, dtype=torch.bool, device=a.device)
    all_a, _ = gather(a)
    all_b, _ = gather(b)
    all_ta, _ = gather(teacher_a.detach())
    all_tb, _ = gather(teacher_b.detach())
    all_valid = gather(valid.to(a.dtype))[0].detach() > 0.5
    processes = all_a.shape[0] // rows
    blocked = ~all_valid[None, :]  # columns without a partner are no candidates, as in InfoNCE

    def log_distribution(scale: torch.Tensor, x: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        logits = scale * x @ columns.T
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 under autocast
        return logits.masked_fill(blocked, torch.finfo(logits.dtype).min).log_softmax(dim=1)

    per_row = (
        F.kl_div(
            log_distribution(logit_scale, a, all_b),
            log_distribution(teacher_scale, teacher_a, all_tb),
            reduction="none",
            log_target=True,
        ).sum(1)
        + F.kl_div(
            log_distribution(logit_scale, b, all_a),
            log_distribution(teacher_scale, teacher_b, all_ta),
            reduction="none",
            log_target=True,
        ).sum(1)
    ) / 2
    return (per_row * valid).sum() * processes / all_valid.sum().clamp(min=1)
