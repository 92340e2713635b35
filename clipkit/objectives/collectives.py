"""How a loss term reaches the rows of the other processes: three differentiable collectives.

``LOCAL`` is the single-process case (every hook is the identity); ``process_group()`` uses the
initialised torch.distributed group. Every process must make the same calls in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from clipkit import distributed

Gather = Callable[[torch.Tensor], tuple[torch.Tensor, int]]


def no_gather(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    return x, 0


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass(frozen=True)
class Collectives:
    gather: Gather  # every process's rows in rank order, and the offset of this process's rows
    ring_pass: Callable[[torch.Tensor], torch.Tensor]  # the previous process's tensor of this shape
    sum: Callable[[torch.Tensor], torch.Tensor]  # the sum over processes
    world_size: int = 1


LOCAL = Collectives(no_gather, _same, _same, 1)


def process_group(world_size: int) -> Collectives:
    return Collectives(
        distributed.gather_with_grad, distributed.ring_pass_with_grad, distributed.all_reduce_sum_with_grad, world_size
    )
