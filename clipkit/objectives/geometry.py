"""Uniformity and alignment (Wang & Isola 2020), and cross-modal uniformity, as loss terms.

As in "It's Not a Modality Gap: Characterizing and Addressing the Contrastive Gap" (Fahim et al.
2024), added to the two-tower contrastive loss to spread each modality over the sphere and pull
partners together, which closes the gap between the modalities' embedding clouds:

- uniformity(x) = log mean_{i != j} exp(-t |x_i - x_j|^2)
- alignment(x, y) = mean_i |x_i - y_i|^alpha
- cross-uniformity(x, y) = log mean_{i != j} exp(-t |x_i - y_j|^2)

Each is over the global batch's rows that carry both modalities. Each process scores its own rows
against every process's columns (B x N, never N x N) and the partial sums are added across
processes differentiably, so every process holds the global value; DDP's averaging of the
gradients then gives exactly the gradient of the global term. Embeddings are unit vectors, so
|x - y|^2 <= 4 and exp(-t d^2) needs no log-sum-exp guard for moderate t.
"""

from __future__ import annotations

import torch

from clipkit.objectives.collectives import LOCAL, Collectives


def _squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T).clamp(min=0)


def _valid(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return torch.ones(x.shape[0], dtype=torch.bool, device=x.device) if valid is None else valid


def _off_diagonal_log_mean_exp(
    x: torch.Tensor, y: torch.Tensor, t: float, comm: Collectives, valid: torch.Tensor
) -> torch.Tensor:
    """log mean over valid i != j of exp(-t |x_i - y_j|^2), i local, j global."""
    all_y, offset = comm.gather(y)
    all_valid = comm.gather(valid.to(x.dtype))[0].detach() > 0.5
    scored = valid[:, None] & all_valid[None, :]
    rows = torch.arange(x.shape[0], device=x.device)
    scored[rows, rows + offset] = False
    partial = (torch.exp(-t * _squared_distances(x, all_y)) * scored).sum()
    count = comm.sum(scored.sum().float()).detach()  # fp32: bf16 would round N^2
    # With no pair scored, log(1) = 0 with a zero gradient, decided on the device (no host read).
    return torch.log(torch.where(count > 0, comm.sum(partial) / count.clamp(min=1), 1.0))


def uniformity(
    x: torch.Tensor, t: float = 2.0, comm: Collectives = LOCAL, valid: torch.Tensor | None = None
) -> torch.Tensor:
    return _off_diagonal_log_mean_exp(x, x, t, comm, _valid(x, valid))


def cross_uniformity(
    x: torch.Tensor, y: torch.Tensor, t: float = 2.0, comm: Collectives = LOCAL, valid: torch.Tensor | None = None
) -> torch.Tensor:
    return _off_diagonal_log_mean_exp(x, y, t, comm, _valid(x, valid))


def alignment(
    x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0, comm: Collectives = LOCAL, valid: torch.Tensor | None = None
) -> torch.Tensor:
    valid = _valid(x, valid)
    count = comm.sum(valid.sum().float()).detach()
    # |d|^alpha as (|d|^2)^(alpha/2): no square root, whose gradient is undefined at d = 0.
    distance = ((x - y) ** 2).sum(1).clamp(min=1e-12) ** (alpha / 2)
    return comm.sum((distance * valid).sum()) / count.clamp(min=1)  # no valid row: an exact zero
