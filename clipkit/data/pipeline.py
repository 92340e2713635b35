"""The training data stream: webdataset shards -> decoded samples -> batch dicts.

Every process (rank) and DataLoader worker reads its own slot of the shards. The stream is a
deterministic function of (seed, epoch, slot), so a resumed run replays it and skips what was
already consumed. Every random draw after the shard order and the shuffle buffer is a function of
the sample's position in its slot's pass (the number of raw samples taken before it): which source
it comes from, which caption it gives, and the random augmentation of its image and audio. A
resumed run therefore continues with the same samples, augmented the same way, whatever the
number of data workers.
Batches carry the bookkeeping with them:

- ``position``: (worker, raw samples taken per source, pool offset) when the batch was made. The
  trainer keeps the latest one per worker; resuming skips that many raw samples (read, never
  decoded). With ``data.bucket_pool`` (clipkit.data.length_buckets) the counts are those before the
  current pool, and the offset is how much of the pool's order was used: a resumed run reads the
  pool again, orders it the same way and goes on at the offset.
- ``num_skipped``: samples lost since the previous batch: corrupt ones, and those missing from
  unreadable or cut shards (as far as ``sizes.json`` tells); ``num_unreadable_shards``: such shards.
- ``num_rows``: the batch size; 0 in the record that closes a worker's stream with its last skips.

One DataLoader serves every pass: its workers persist, and each pass reads the epoch number from
shared memory when it starts (``TrainStream.set_epoch``). Starting workers anew for every pass costs
a fork of the trainer and a copy of every page it writes afterwards, which on a small data set
slowed each step by a fifth.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipkit.data.decode import CorruptSample, SampleDecoder
from clipkit.data.length_buckets import bucketed_order, caption_lengths
from clipkit.data.shards import ShardSource, shard_sizes
from clipkit.data.weighted import weighted_order
from clipkit.errors import DataError
from clipkit.lifetime import data_worker_init, end_workers_at_exit

log = logging.getLogger(__name__)


@dataclass
class StreamState:
    """Where this process's stream is: the epoch, the raw samples taken per source by each
    DataLoader worker, and the samples and shards lost so far. After a resume, ``replay`` is what
    each worker had taken of the resumed epoch, for the loader to skip once."""

    workers: int = 0
    endless: bool = False  # resampled with no pass length: a resume cannot replay it
    epoch: int = 0
    taken: dict[int, list[int]] = field(default_factory=dict)
    pool_offsets: dict[int, int] = field(default_factory=dict)  # per worker, with data.bucket_pool
    skipped: int = 0
    unreadable_shards: int = 0
    last_worker: int = -1  # the worker of the last record taken in this pass
    replay: dict[int, list[int]] = field(default_factory=dict)
    replay_offsets: dict[int, int] = field(default_factory=dict)
    replay_first_worker: int = 0

    def consume(self, record: dict) -> None:
        worker, counts, offset = record["position"]
        self.taken[int(worker)] = list(counts)
        self.pool_offsets[int(worker)] = int(offset)
        self.last_worker = int(worker)
        self.skipped += record["num_skipped"]
        self.unreadable_shards += record["num_unreadable_shards"]

    def state_dict(self) -> dict[str, object]:
        return {
            "epoch": self.epoch,
            "taken": {str(k): v for k, v in self.taken.items()},
            "pool_offsets": {str(k): v for k, v in self.pool_offsets.items()},
            "last_worker": self.last_worker,
            "skipped": self.skipped,
            "unreadable_shards": self.unreadable_shards,
            "workers": self.workers,
        }

    def next_pass(self) -> None:
        self.epoch += 1
        self.taken = {}
        self.pool_offsets = {}
        self.last_worker = -1

    def load_process_states(self, states: list[dict], rank: int, world_size: int) -> None:
        """Rank 0 carries the run's counts of skipped samples and unreadable shards. The resumed
        epoch is replayed exactly when the processes and workers are as saved, else restarted from
        its beginning; an endless stream continues with fresh draws."""
        self.epoch = int(states[0]["epoch"])
        self.skipped = sum(int(s["skipped"]) for s in states) if rank == 0 else 0
        self.unreadable_shards = sum(int(s.get("unreadable_shards", 0)) for s in states) if rank == 0 else 0
        if self.endless:
            self.epoch += 1
        elif len(states) == world_size and int(states[0]["workers"]) == self.workers:
            self.replay = {int(k): list(v) for k, v in states[rank]["taken"].items()}
            self.replay_offsets = {int(k): int(v) for k, v in states[rank].get("pool_offsets", {}).items()}
            # The DataLoader takes its workers' records in turn, always from worker 0 first: the
            # replay starts the turn at the worker after the one that made the last record taken.
            if self.workers:
                self.replay_first_worker = (int(states[rank].get("last_worker", -1)) + 1) % self.workers
        elif rank == 0:
            log.warning(
                "processes x data.workers changed (%d x %d -> %d x %d): restarting epoch %d from its beginning",
                len(states),
                states[0]["workers"],
                world_size,
                self.workers,
                self.epoch,
            )


class _DataLosses:
    """What a worker's stream lost, counted in samples: corrupt or refused samples, and the samples
    missing from shards that failed to read or ended early (a cut file), as far as ``sizes.json``
    says how many a shard holds; such shards are also counted, and named in a warning. ``muted`` while
    a resumed run replays what the interrupted one had read (and counted) already."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.samples = 0
        self.shards = 0
        self.muted = False

    def corrupt(self, exc: Exception) -> None:
        if not self.muted:
            self.samples += 1
            log.warning("skipping a sample: %s", exc)

    def shard_read(self, url: str, samples_read: int, error: str | None) -> None:
        expected = self.sizes.get(url)
        lost = max(0, expected - samples_read) if expected is not None else 0
        if self.muted or (error is None and not lost):
            return
        self.shards += 1
        self.samples += lost
        read = (
            f"read {samples_read} of its {expected} samples"
            if expected is not None
            else f"read {samples_read} samples (no sizes.json entry: how many were lost is unknown)"
        )
        log.warning("unreadable shard %s: %s%s", url, read, f" ({error})" if error else "")


@dataclass
class _OpenedShard:
    url: str
    read: int = 0
    error: str | None = None


def _read_shards(urls: Iterator[str], losses: _DataLosses) -> Iterator[dict]:
    """The raw samples of the shards ``urls`` names, one after the other, telling ``losses`` what
    each gave. webdataset opens a shard once the previous one is exhausted, but hands out the
    previous one's last sample only after that (when a new key starts): a shard is judged when
    a sample of a later one arrives, or at the end."""
    opened: list[_OpenedShard] = []

    def urls_opened() -> Iterator[dict]:
        for url in urls:
            opened.append(_OpenedShard(url))
            yield {"url": url}

    def damaged(exc: Exception) -> bool:  # webdataset's handler: errors concern the newest shard
        opened[-1].error = opened[-1].error or str(exc)
        return True  # go on with the next shard

    for sample in wds.tarfile_to_samples(handler=damaged)(urls_opened()):
        url = sample.get("__url__")
        shard = next((s for s in reversed(opened) if s.url == url), None)
        if shard is not None:
            shard.read += 1
        if shard is opened[-1]:
            for done in opened[:-1]:
                losses.shard_read(done.url, done.read, done.error)
            del opened[:-1]
        yield sample
    for done in opened:
        losses.shard_read(done.url, done.read, done.error)


def seeded_rng(*parts: object) -> random.Random:
    """A generator seeded from its parts, the same in every process (unlike salted ``hash``)."""
    return random.Random("/".join(map(str, parts)))


def position_seed(*parts: object) -> int:
    """A 63-bit seed from its parts, the same in every process and Python version."""
    return int.from_bytes(hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest(), "little") >> 1


@contextlib.contextmanager
def seeded_draws(seed: int) -> Iterator[None]:
    """Inside, torch's CPU generator and Python's (what torchvision's and timm's transforms draw
    from) are seeded with ``seed``; outside, they are as before (with ``data.workers=0`` the
    decode runs in the training process, whose own draws must not move). The CPU generator is
    seeded alone: ``torch.manual_seed`` also visits every accelerator's, ~60 times as long."""
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)


def pick_source(weights: Sequence[float], exhausted: set[int], rng: random.Random) -> int:
    """A source drawn with probability proportional to its weight among those not exhausted.

    The draw orders all sources and takes the first not exhausted, so its result does not depend on
    when an exhaustion was discovered: a run resumed after a source ran out draws what the
    uninterrupted run drew."""
    return next(i for i in weighted_order(weights, rng.random) if i not in exhausted)


Place = tuple[list[int], int]  # raw samples taken per source, and the offset in the current pool


def _position(worker: int, place: Place, losses: _DataLosses, reported: tuple[int, int]) -> dict:
    """A record's bookkeeping: where the worker is, and what it lost since its previous record."""
    return {
        "position": (worker, *place),
        "num_skipped": losses.samples - reported[0],
        "num_unreadable_shards": losses.shards - reported[1],
    }


class _SlotReader:
    """The raw samples of one reader slot's pass, each with its position: the number of raw samples
    the slot took before it. With several sources, each sample's source is drawn with a generator
    seeded by its position. ``taken``: the raw samples taken so far, per source."""

    def __init__(
        self, streams: list[Iterator[dict]], weights: list[float], seed: int, epoch: int, slot: int, limit: int | None
    ) -> None:
        self.streams, self.weights = streams, weights
        self.seed, self.epoch, self.slot, self.limit = seed, epoch, slot, limit
        self.taken = [0] * len(streams)
        self.exhausted: set[int] = set()

    def skip(self, counts: Sequence[int]) -> None:
        """Take ``counts`` raw samples per source without handing them out (a resumed run's)."""
        for i, n in enumerate(counts[: len(self.streams)]):
            for _ in range(n):
                if next(self.streams[i], None) is None:
                    break
                self.taken[i] += 1

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        return self

    def __next__(self) -> tuple[int, dict]:
        while len(self.exhausted) < len(self.streams) and (self.limit is None or sum(self.taken) < self.limit):
            position = sum(self.taken)
            i = (
                0
                if len(self.streams) == 1
                else pick_source(
                    self.weights,
                    self.exhausted,
                    random.Random(position_seed(self.seed, self.epoch, self.slot, "mix", position)),
                )
            )
            raw = next(self.streams[i], None)
            if raw is None:
                self.exhausted.add(i)
                continue
            self.taken[i] += 1
            return position, raw
        raise StopIteration


def _slot_urls(urls: Sequence[str], epoch: int, seed: int, slot: int, slots: int) -> list[str]:
    order = list(urls)
    seeded_rng(seed, epoch, "shards").shuffle(order)
    return order[slot::slots]


class TrainStream(IterableDataset):
    """``skip`` (per worker, raw samples per source) is what a resumed run already consumed of pass
    ``epoch``, the pass it starts in; later passes are read whole. In that pass the DataLoader's
    worker ``i`` plays worker ``(i + first_worker) % workers``, so that the loader's turn (from its
    worker 0) goes on where the interrupted run's was. A resampled stream (shards drawn
    with replacement) is endless unless ``pass_samples`` cuts each slot's pass at that many raw
    samples, as open_clip's epochs of a resampled stream are: then a resume replays at most one
    pass. ``bucket_pool``: batches of similar caption length from pools of that many raw samples
    (clipkit.data.length_buckets); ``skip_offsets``: per worker, where in its current pool a
    resumed run goes on."""

    def __init__(
        self,
        sources: Sequence[ShardSource],
        decoder: SampleDecoder,
        batch_size: int,
        resampled: bool,
        shuffle_buffer: int,
        seed: int,
        epoch: int,
        rank: int,
        world_size: int,
        skip: dict[int, list[int]] | None = None,
        first_worker: int = 0,
        pass_samples: int | None = None,
        bucket_pool: int | None = None,
        skip_offsets: dict[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.sources = list(sources)
        self.decoder = decoder
        self.batch_size = batch_size
        self.resampled = resampled
        self.pass_samples = pass_samples
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self._epoch = torch.tensor(epoch).share_memory_()  # seen by persistent workers
        self.rank = rank
        self.world_size = world_size
        self.skip = skip or {}
        self.skip_offsets = skip_offsets or {}
        self.bucket_pool = bucket_pool
        self.skip_epoch = epoch
        self.first_worker = first_worker
        self.sizes = shard_sizes([url for source in self.sources for url in source.urls])

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """The pass that the next ``iter()`` (here or in a persistent worker) reads."""
        self._epoch.fill_(epoch)

    def _raw_source(self, index: int, epoch: int, slot: int, slots: int, losses: _DataLosses) -> Iterator[dict]:
        source = self.sources[index]
        rng = seeded_rng(self.seed, epoch, slot, index)
        if self.resampled:  # sample shards with replacement, forever
            urls: Iterator = (source.urls[rng.randrange(len(source.urls))] for _ in iter(int, 1))
        else:
            urls = iter(_slot_urls(source.urls, epoch, self.seed, slot, slots))
        raw = _read_shards(urls, losses)
        if self.shuffle_buffer > 1:
            raw = wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng)(raw)
        return raw

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        epoch = self.epoch
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        replaying = epoch == self.skip_epoch
        if replaying:
            worker = (worker + self.first_worker) % workers
        slot, slots = self.rank * workers + worker, self.world_size * workers
        losses = _DataLosses(self.sizes)
        streams = [self._raw_source(i, epoch, slot, slots, losses) for i in range(len(self.sources))]
        reader = _SlotReader(
            streams, [source.weight for source in self.sources], self.seed, epoch, slot, self.pass_samples
        )
        # Replaying a resumed epoch: drop what this worker already delivered, before decoding.
        losses.muted = True
        reader.skip(self.skip.get(worker, []) if replaying else [])
        losses.muted = False
        offset = self.skip_offsets.get(worker, 0) if replaying else 0
        decoded = (
            self._bucketed(reader, losses, epoch, slot, offset)
            if self.bucket_pool
            else self._in_order(reader, losses, epoch, slot)
        )
        samples: list[dict] = []
        reported = (0, 0)
        for sample, place in decoded:
            samples.append(sample)
            if len(samples) == self.batch_size:
                yield {**self.decoder.collate(samples), **_position(worker, place, losses, reported)}
                reported = (losses.samples, losses.shards)
                samples = []
        # A partial last batch is dropped, as every rank must see full batches of the same size.
        # Losses counted since the last batch still travel, in a record with no rows.
        if (losses.samples, losses.shards) != reported:
            yield {**_position(worker, (reader.taken, 0), losses, reported), "num_rows": 0}

    def _in_order(
        self, reader: _SlotReader, losses: _DataLosses, epoch: int, slot: int
    ) -> Iterator[tuple[dict, Place]]:
        """Decoded samples in the order they are read, each with the place after it."""
        for position, raw in reader:
            try:
                sample = self._decode(raw, position, epoch, slot)
            except CorruptSample as exc:
                losses.corrupt(exc)
                continue
            yield sample, (list(reader.taken), 0)

    def _bucketed(
        self, reader: _SlotReader, losses: _DataLosses, epoch: int, slot: int, offset: int
    ) -> Iterator[tuple[dict, Place]]:
        """Decoded samples pool by pool, each pool's in batch-sized groups of similar caption
        length (clipkit.data.length_buckets), each with the place after it. Only captions are
        decoded before the pool is ordered; images and sounds wait in their raw bytes."""
        while True:
            start = list(reader.taken)
            losses.muted = offset > 0  # a resumed pool: its losses were counted before
            pool = list(itertools.islice(reader, self.bucket_pool))
            captions: list[dict | None] = []
            for position, raw in pool:
                try:
                    with seeded_draws(position_seed(self.seed, epoch, slot, "caption", position)):
                        captions.append(self.decoder.caption(raw))
                except CorruptSample as exc:
                    losses.corrupt(exc)
                    captions.append(None)
            losses.muted = False
            if not pool:
                return
            kept = [i for i, caption in enumerate(captions) if caption is not None]
            lengths = caption_lengths(self.decoder.tokenizer, [captions[i].get("text") for i in kept])
            rng = seeded_rng(self.seed, epoch, slot, "buckets", sum(start))
            order = [kept[j] for j in bucketed_order(lengths, self.batch_size, rng)]
            for k in range(offset, len(order)):
                position, raw = pool[order[k]]
                try:
                    sample = self._decode(raw, position, epoch, slot, captions[order[k]])
                except CorruptSample as exc:
                    losses.corrupt(exc)
                    continue
                yield sample, ((list(reader.taken), 0) if k + 1 == len(order) else (start, k + 1))
            offset = 0

    def _decode(self, raw: dict, position: int, epoch: int, slot: int, caption: dict | None = None) -> dict:
        """A raw sample decoded with the draws of its position (its caption's, unless given)."""
        if caption is None:
            with seeded_draws(position_seed(self.seed, epoch, slot, "caption", position)):
                caption = self.decoder.caption(raw)
        with seeded_draws(position_seed(self.seed, epoch, slot, "augment", position)):
            members = self.decoder.members(raw)
        return self.decoder.combine(raw, members, caption)


def check_reader_slots(sources: Sequence[ShardSource], world_size: int, workers: int) -> None:
    """In epoch mode every process x worker reads distinct shards, so each needs at least one."""
    slots = world_size * max(workers, 1)
    for i, source in enumerate(sources):
        if len(source.urls) < slots:
            raise DataError(
                f"data.train.shards: source {i} has {len(source.urls)} shards, fewer than the "
                f"{slots} reader slots (processes x data.workers); write more, smaller shards, "
                "lower data.workers, or set data.train.resampled=true"
            )


def make_loader(stream: TrainStream, workers: int, pin_memory: bool = False) -> DataLoader:
    """One loader for every pass (its workers persist; see the module's docstring). ``pin_memory``
    (for a GPU): batches come in page-locked memory, so that their copies to the device run
    asynchronously."""
    if not stream.resampled:
        check_reader_slots(stream.sources, stream.world_size, workers)
    if workers:
        end_workers_at_exit()
    # A generator of its own: each pass's iter() draws the workers' base seed from it, never from
    # the process's, whose stream (dropout, SpecAugment) a resumed run must continue unmoved.
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
        worker_init_fn=data_worker_init,
        generator=torch.Generator().manual_seed(stream.seed),
    )


def batches(
    loader: DataLoader, state: StreamState, all_have_batch: Callable[[bool], bool] = lambda have: have
) -> Iterator[dict]:
    """Batches of ``loader`` (over a :class:`TrainStream`) across epochs, from ``state.epoch`` on,
    updating ``state`` as each is handed out.

    A new pass over the shards (reshuffled) starts when this process runs out, or, with several
    processes, when any of them does (``all_have_batch`` asks them all), so that every process
    takes the same number of steps.
    """
    stream: TrainStream = loader.dataset
    while True:
        stream.set_epoch(state.epoch)
        # A resume from a checkpoint at a pass's last batch (its epoch's end, or epochs raised
        # since) replays that pass to nothing: it goes on to the next one.
        replayed = state.epoch == stream.skip_epoch and any(map(any, stream.skip.values()))
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
        if produced == 0 and not replayed:
            raise DataError(
                "data.train.shards: a full pass over the shards produced no complete "
                "batch (too few samples for data.batch_size, or every sample corrupt)"
            )
        state.next_pass()
