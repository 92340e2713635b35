"""The sigmoid loss of SigLIP (Zhai et al. 2023) for one modality pair.

Every (row i, column j) of the global batch is an independent binary problem: is b_j the partner
of a_i? logit = t * a_i . b_j + bias, with a learnable temperature t and bias; the loss is the sum
of -log sigmoid(+-logit) over all pairs, divided by the number of rows.

Distributed without the global N x N matrix: each process scores its B rows against its own B
columns, then passes its columns around the ring of processes (world_size - 1 hops, the
"chunked" form of the paper, like open_clip's neighbour exchange). A process never holds more
than one B x B block of logits, and each hop moves B x D numbers, against N x D for a gather.
The gradient of a passed block travels back along the ring to its owner.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clipkit.objectives.collectives import LOCAL, Collectives


def _block_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    rows: torch.Tensor,
    columns: torch.Tensor,
    diagonal_positive: bool,
) -> torch.Tensor:
    logits = scale * a @ b.T + bias
    signs = -torch.ones_like(logits)
    if diagonal_positive:
        signs = signs + 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype)
    scored = rows[:, None] & columns[None, :]
    return -(F.logsigmoid(signs * logits) * scored).sum()


def sigmoid_loss(
    a: Tensor, b: Tensor, scale: Tensor, bias: Tensor, comm: Collectives = LOCAL, valid: Tensor | None = None
) -> Tensor:
    """a, b: (B, D) L2-normalised, row i matches row i. ``valid`` marks the rows carrying both
    modalities: only they are rows and columns. The result, averaged over processes (as DDP
    averages gradients), is the loss over the global batch divided by its count of valid rows."""
    if valid is None:
        valid = torch.ones(a.shape[0], dtype=torch.bool, device=a.device)
    total_valid = comm.sum(valid.sum().float()).detach()
    total = _block_loss(a, b, scale, bias, valid, valid, diagonal_positive=True)
    columns, column_valid = b, valid
    for _ in range(comm.world_size - 1):
        columns = comm.ring_pass(columns)
        column_valid = comm.ring_pass(column_valid.to(a.dtype)).detach() > 0.5
        total = total + _block_loss(a, columns, scale, bias, valid, column_valid, diagonal_positive=False)
    # No valid row: nothing is scored and the loss is an exact zero, still in the graph of every
    # input (DDP expects a gradient for each), without a branch that would read the count.
    return total * comm.world_size / total_valid.clamp(min=1)
