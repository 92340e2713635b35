"""The trainer's own stateful parts: its progress and each process's random generators."""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainProgress:
    step: int = 0
    samples_seen: int = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.samples_seen = int(state["step"]), int(state["samples_seen"])


class ProcessRNG:
    """Python's, NumPy's and torch's generators of this process, CPU and its GPU (dropout, patch
    dropout, SpecAugment: any draw made in the training process; data samples are seeded by their
    position, see clipkit.data.pipeline)."""

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state()
        state = {
            "python": random.getstate(),
            "torch": torch.get_rng_state(),
            "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))

    def load_process_states(self, states: list[dict[str, Any]], rank: int, world_size: int) -> None:
        """Each process continues its own generators; on another number of processes, each is
        seeded from the saved state and its rank, so that no two share a stream."""
        if len(states) == world_size:
            self.load_state_dict(states[rank])
            return
        digest = hashlib.sha256(states[0]["torch"].numpy().tobytes() + str(rank).encode()).digest()
        seed_everything(int.from_bytes(digest[:8], "little"))
