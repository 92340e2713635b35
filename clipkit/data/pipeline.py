"""The training data stream: webdataset shards -> decoded samples -> batch dicts.

Every process (rank) and DataLoader worker reads its own slot of the shards. The stream is a
deterministic function of (seed, epoch, slot), so a resumed run replays it and skips what was
already consumed. Batches carry that bookkeeping with them:

- ``position``: (worker, raw samples taken per source) when the batch was made. The trainer keeps
  the latest one per worker; resuming skips that many raw samples (read, never decoded).
- ``num_skipped``: corrupt samples and unreadable shard members skipped since the previous batch.
- ``num_rows``: the batch size; 0 in the record that closes a worker's stream with its last skips.

One DataLoader serves every pass: its workers persist, and each pass reads the epoch number from
shared memory when it starts (``TrainStream.set_epoch``). Starting workers anew for every pass costs
a fork of the trainer and a copy of every page it writes afterwards, which on a small data set
slowed each step by a fifth.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipkit.data.decode import CorruptSample, SampleDecoder
from clipkit.data.shards import ShardSource
from clipkit.errors import DataError

log = logging.getLogger(__name__)

MODALITIES = ("image", "text", "audio")


@dataclass
class StreamState:
    """Where a stream is: the epoch, the raw samples taken per source by each DataLoader worker,
    and the corrupt samples skipped so far."""

    epoch: int = 0
    taken: Dict[int, List[int]] = field(default_factory=dict)
    skipped: int = 0

    def consume(self, record: dict) -> None:
        worker, counts = record["position"]
        self.taken[int(worker)] = list(counts)
        self.skipped += record["num_skipped"]


class _SkipCounter:
    """Worker-local count of skipped samples; webdataset calls it as an exception handler."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, exc: Exception) -> bool:
        self.count += 1
        log.warning("skipping unreadable data: %s", exc)
        return True  # keep going


def seeded_rng(*parts: object) -> random.Random:
    """A generator seeded from its parts, the same in every process (unlike salted ``hash``)."""
    return random.Random("/".join(map(str, parts)))


def _slot_urls(urls: Sequence[str], epoch: int, seed: int, slot: int, slots: int) -> List[str]:
    order = list(urls)
    seeded_rng(seed, epoch, "shards").shuffle(order)
    return order[slot::slots]


class TrainStream(IterableDataset):
    """``skip`` (per worker, raw samples per source) is what a resumed run already consumed of pass
    ``epoch``, the pass it starts in; later passes are read whole."""

    def __init__(self, sources: Sequence[ShardSource], decoder: SampleDecoder, batch_size: int,
                 resampled: bool, shuffle_buffer: int, seed: int, epoch: int, rank: int,
                 world_size: int, skip: Optional[Dict[int, List[int]]] = None) -> None:
        super().__init__()
        self.sources = list(sources)
        self.decoder = decoder
        self.batch_size = batch_size
        self.resampled = resampled
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self._epoch = torch.tensor(epoch).share_memory_()  # seen by persistent workers
        self.rank = rank
        self.world_size = world_size
        self.skip = skip or {}
        self.skip_epoch = epoch

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """The pass that the next ``iter()`` (here or in a persistent worker) reads."""
        self._epoch.fill_(epoch)

    def _raw_source(self, index: int, epoch: int, slot: int, slots: int, counter: _SkipCounter) -> Iterator[dict]:
        source = self.sources[index]
        rng = seeded_rng(self.seed, epoch, slot, index)
        if self.resampled:  # sample shards with replacement, forever
            urls: Iterator = (source.urls[rng.randrange(len(source.urls))] for _ in iter(int, 1))
        else:
            urls = iter(_slot_urls(source.urls, epoch, self.seed, slot, slots))
        raw = wds.tarfile_to_samples(handler=counter)({"url": u} for u in urls)
        if self.shuffle_buffer > 1:
            raw = wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng)(raw)
        return raw

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        slot, slots = self.rank * workers + worker, self.world_size * workers
        epoch = self.epoch
        counter = _SkipCounter()
        streams = [self._raw_source(i, epoch, slot, slots, counter) for i in range(len(self.sources))]
        taken = [0] * len(streams)
        # Replaying a resumed epoch: drop what this worker already delivered, before decoding.
        skip = self.skip.get(worker, []) if epoch == self.skip_epoch else []
        for i, n in enumerate(skip[: len(streams)]):
            for _ in range(n):
                if next(streams[i], None) is None:
                    break
                taken[i] += 1
        mix_rng = seeded_rng(self.seed, epoch, slot, "mix", *taken)
        live = list(range(len(streams)))
        samples: List[Dict[str, torch.Tensor]] = []
        reported = 0
        while live:
            i = live[0] if len(live) == 1 else mix_rng.choices(live, [self.sources[j].weight for j in live])[0]
            raw = next(streams[i], None)
            if raw is None:
                live.remove(i)
                continue
            taken[i] += 1
            try:
                samples.append(self.decoder(raw))
            except CorruptSample as exc:
                counter(exc)
                continue
            if len(samples) == self.batch_size:
                yield self._collate(samples, worker, taken, counter.count - reported)
                reported = counter.count
                samples = []
        # A partial last batch is dropped, as every rank must see full batches of the same size.
        # Skips counted since the last batch still travel, in a record with no rows.
        if counter.count > reported:
            yield {"position": (worker, list(taken)), "num_skipped": counter.count - reported, "num_rows": 0}

    @staticmethod
    def _collate(samples: List[Dict[str, torch.Tensor]], worker: int, taken: List[int],
                 skipped: int) -> dict:
        batch: dict = {"position": (worker, list(taken)), "num_skipped": skipped, "num_rows": len(samples)}
        for modality in MODALITIES:
            rows = [s.get(modality) for s in samples]
            present = [r is not None for r in rows]
            batch[f"has_{modality}"] = torch.tensor(present)
            if not any(present):
                continue
            template = next(r for r in rows if r is not None)
            batch[modality] = torch.stack([r if r is not None else torch.zeros_like(template) for r in rows])
        return batch


def check_reader_slots(sources: Sequence[ShardSource], world_size: int, workers: int) -> None:
    """In epoch mode every process x worker reads distinct shards, so each needs at least one."""
    slots = world_size * max(workers, 1)
    for i, source in enumerate(sources):
        if len(source.urls) < slots:
            raise DataError(
                f"data.train.shards: source {i} has {len(source.urls)} shards, fewer than the "
                f"{slots} reader slots (processes x data.workers); write more, smaller shards, "
                "lower data.workers, or set data.train.resampled=true")


def make_loader(stream: TrainStream, workers: int, pin_memory: bool = False) -> DataLoader:
    """One loader for every pass (its workers persist; see the module's docstring). ``pin_memory``
    (for a GPU): batches come in page-locked memory, so that their copies to the device run
    asynchronously."""
    if not stream.resampled:
        check_reader_slots(stream.sources, stream.world_size, workers)
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


def batches(loader: DataLoader, state: StreamState,
            all_have_batch: Callable[[bool], bool] = lambda have: have) -> Iterator[dict]:
    """Batches of ``loader`` (over a :class:`TrainStream`) across epochs, from ``state.epoch`` on,
    updating ``state`` as each is handed out.

    A new pass over the shards (reshuffled) starts when this process runs out, or, with several
    processes, when any of them does (``all_have_batch`` asks them all), so that every process
    takes the same number of steps.
    """
    stream: TrainStream = loader.dataset
    while True:
        stream.set_epoch(state.epoch)
        records = iter(loader)
        produced = 0
        while True:
            batch = next(records, None)
            while batch is not None and not batch["num_rows"]:  # bookkeeping only
                state.consume(batch)
                batch = next(records, None)
            if not all_have_batch(batch is not None):
                break
            state.consume(batch)
            produced += 1
            yield batch
        if produced == 0:
            raise DataError("data.train.shards: a full pass over the shards produced no complete "
                            "batch (too few samples for data.batch_size, or every sample corrupt)")
        state.epoch += 1
        state.taken = {}
