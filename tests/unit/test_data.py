import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipkit.config.schema import ImageTransformConfig, SampleKeysConfig
from clipkit.data.decode import ImageLoader, SampleDecoder
from clipkit.data.pipeline import StreamState, TrainStream, batches, make_loader, seeded_draws
from clipkit.data.shards import count_samples, resolve_sources
from clipkit.data.transforms import build_eval_image_transform, build_train_image_loader
from clipkit.data.write import write_shards
from clipkit.errors import DataError
from clipkit.models.towers.text import TextTransformerConfig, build_tokenizer


def png(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def make_samples(n, corrupt=()):
    for i in range(n):
        if i in corrupt:
            yield {"__key__": f"s{i}", "png": b"not an image", "txt": "broken"}
        elif i % 2:
            yield {"__key__": f"s{i}", "png": png((i, 0, 0)), "json": json.dumps({"caption": f"sample {i}"})}
        else:
            yield {"__key__": f"s{i}", "png": png((i, 0, 0)), "txt": f"sample {i}"}


def decoder(context_length=8):
    return SampleDecoder(
        SampleKeysConfig(),
        {"image": ImageLoader(build_eval_image_transform(ImageTransformConfig(), 16))},
        build_tokenizer(TextTransformerConfig(context_length=context_length)),
    )


def stream(tmp_path, batch_size=4, workers=0, skip=None, shuffle=10, epoch=0, first_worker=0):
    sources = resolve_sources(str(tmp_path / "shard-{000000..000003}.tar"))
    return make_loader(
        TrainStream(
            sources,
            decoder(),
            batch_size,
            False,
            shuffle,
            seed=3,
            epoch=epoch,
            rank=0,
            world_size=1,
            skip=skip,
            first_worker=first_worker,
        ),
        workers,
    )


@pytest.fixture
def shards(tmp_path):
    write_shards(make_samples(40, corrupt={5, 17}), tmp_path, "shard", 10)
    return tmp_path


def test_batches_have_every_modality_and_skip_corrupt_samples(shards):
    records = list(stream(shards))
    batches = [r for r in records if r["num_rows"]]
    assert len(batches) == 9  # 38 good samples -> 9 full batches of 4, the partial one dropped
    first = batches[0]
    assert first["image"].shape == (4, 3, 16, 16) and first["text"].shape == (4, 8)
    assert first["has_image"].all() and first["has_text"].all()
    assert sum(r["num_skipped"] for r in records) == 2  # wherever they fell, both are counted


def test_lost_samples_are_counted_as_samples_and_cut_shards_named(shards, caplog):
    """A shard cut inside a tar header ends silently (Python's tarfile stops there), one cut inside
    a member's data raises: both are named, and every sample either arrives or is counted."""
    members = tarfile.open(shards / "shard-000001.tar").getmembers()
    with open(shards / "shard-000001.tar", "r+b") as f:
        f.truncate(members[8].offset + 100)  # inside the header of sample 14's first member
    members = tarfile.open(shards / "shard-000002.tar").getmembers()
    with open(shards / "shard-000002.tar", "r+b") as f:
        f.truncate(members[12].offset_data + 50)  # inside the data of sample 26's first member
    records = list(stream(shards, batch_size=1))
    skipped = sum(r["num_skipped"] for r in records)
    assert sum(r["num_rows"] for r in records) + skipped == 40
    assert skipped == 1 + 6 + 4  # sample 5 corrupt; 14-19 (17 among them) and 26-29 cut off
    assert sum(r["num_unreadable_shards"] for r in records) == 2
    named = [r.getMessage() for r in caplog.records if "unreadable shard" in r.getMessage()]
    assert len(named) == 2 and "shard-000001.tar: read 4 of its 10 samples" in named[0]


def test_json_captions_are_read(shards):
    tokenizer = build_tokenizer(TextTransformerConfig(context_length=8))
    seen = {tuple(t.tolist()) for b in stream(shards, batch_size=2) if b["num_rows"] for t in b["text"]}
    odd = {tuple(tokenizer([f"sample {i}"])[0].tolist()) for i in range(1, 40, 2) if i not in (5, 17)}
    assert odd <= seen  # odd samples carry their caption in a json member


def test_a_caption_comes_from_the_first_non_empty_json_field_or_a_weighted_draw():
    """data.keys.caption_field as a list (alt text and recaptions): without weights the first
    non-empty field wins; with caption_field_weights the order is drawn per sample in proportion
    to them (0: fallback only), from the generator the pipeline seeds by the sample's position."""
    from clipkit.data.decode import decode_caption

    def read(meta, fields, weights=None):
        return decode_caption("json", json.dumps(meta).encode(), fields, weights)

    both = {"alt": "a dog", "recap": "a brown dog on grass", "empty": " "}
    assert read(both, ["alt", "recap"]) == "a dog"
    assert read(both, ["empty", "missing", "recap"]) == "a brown dog on grass"
    assert read({"alt": "a dog", "recap": None}, ["recap", "alt"], [1.0, 0.0]) == "a dog"  # fallback
    with pytest.raises(ValueError, match="no non-empty string field 'empty' or 'missing'"):
        read(both, ["empty", "missing"])
    draws = []
    for position in range(2000):
        with seeded_draws(position):
            draws.append(read(both, ["alt", "recap"], [1.0, 3.0]))
    assert 0.70 < draws.count("a brown dog on grass") / len(draws) < 0.80
    with seeded_draws(7):
        again = read(both, ["alt", "recap"], [1.0, 3.0])
    assert again == draws[7]
    assert {read(both, ["alt", "recap"], [0.0, 1.0]) for _ in range(50)} == {"a brown dog on grass"}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.keys.caption_field=[]"], "data.keys.caption_field: needs a field name or a list of them"),
        (
            ["data.keys.caption_field=[a,b]", "data.keys.caption_field_weights=[1]"],
            "one weight >= 0 per caption field (2)",
        ),
        (["data.keys.caption_field=[a,b]", "data.keys.caption_field_weights=[0,0]"], "not all 0"),
    ],
)
def test_caption_field_settings_are_checked(overrides, message):
    from clipkit.config.compose import compose_config
    from clipkit.config.validate import check_config
    from clipkit.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        check_config(compose_config(overrides))


def test_sizes_json_gives_epoch_length(shards):
    assert count_samples(resolve_sources(str(shards / "shard-{000000..000003}.tar"))) == 40


@pytest.mark.parametrize("consumed", [3, 4])
def test_resume_continues_exactly_where_the_stream_was(shards, consumed):
    """After an odd number of batches too: the loader's turn over its 2 workers goes on."""
    full = [b for b in stream(shards, workers=2) if b["num_rows"]]
    saved = StreamState(workers=2)
    for batch in full[:consumed]:
        saved.consume(batch)
    state = StreamState(workers=2)
    state.load_process_states([saved.state_dict()], rank=0, world_size=1)
    resumed = [
        b for b in stream(shards, workers=2, skip=state.replay, first_worker=state.replay_first_worker) if b["num_rows"]
    ]
    assert [b["position"] for b in resumed] == [b["position"] for b in full[consumed:]]
    assert all(torch.equal(a["text"], b["text"]) for a, b in zip(resumed, full[consumed:]))


def test_a_resume_at_a_passs_last_batch_goes_on_with_the_next_pass(shards):
    """A checkpoint at an epoch's end (or epochs raised after a finished run) replays its pass to
    nothing; the stream goes on with the next pass, as the uninterrupted one does, not an error."""
    uninterrupted = batches(stream(shards, workers=2), StreamState(workers=2))
    # a pass: 4 full batches from each worker's 19 good samples
    first_pass, rest = [next(uninterrupted) for _ in range(8)], [next(uninterrupted) for _ in range(5)]
    assert rest[0]["position"] == [0, [5], 0]  # the next pass's first batch
    saved = StreamState(workers=2)
    for batch in first_pass:
        saved.consume(batch)
    state = StreamState(workers=2)
    state.load_process_states([saved.state_dict()], rank=0, world_size=1)
    loader = stream(shards, workers=2, skip=state.replay, first_worker=state.replay_first_worker, epoch=state.epoch)
    resumed = batches(loader, state)
    assert [next(resumed)["position"] for _ in range(5)] == [b["position"] for b in rest]
    assert state.epoch == 1


def test_epochs_reshuffle_shard_order(shards):
    first = [b["text"] for b in stream(shards, epoch=0, shuffle=0) if b["num_rows"]]
    second = [b["text"] for b in stream(shards, epoch=1, shuffle=0) if b["num_rows"]]
    assert not all(torch.equal(a, b) for a, b in zip(first, second))


def test_persistent_workers_read_each_pass_as_a_fresh_loader_would(shards):
    """One loader serves every pass; its workers must see each new epoch number."""
    loader = stream(shards, workers=2)
    data = batches(loader, StreamState())
    persistent = [next(data) for _ in range(24)]  # 9 batches a pass: two passes and part of a third
    fresh = [b for epoch in range(3) for b in stream(shards, workers=2, epoch=epoch) if b["num_rows"]]
    assert [b["position"] for b in persistent] == [b["position"] for b in fresh[:24]]
    assert all(torch.equal(a["text"], b["text"]) for a, b in zip(persistent, fresh))


def test_too_few_shards_for_reader_slots_is_an_error(shards):
    with pytest.raises(DataError, match="fewer than the 5 reader slots"):
        stream(shards, workers=5)


def test_weighted_sources_mix_in_proportion(tmp_path):
    for name, count in (("a", 3), ("b", 1)):
        samples = ({"__key__": f"{name}{i}", "png": png((0, 0, 0)), "txt": name} for i in range(count * 20))
        write_shards(samples, tmp_path, name, 20)
    sources = resolve_sources(
        [
            {"shards": str(tmp_path / "a-{000000..000002}.tar"), "weight": 3},
            {"shards": str(tmp_path / "b-000000.tar"), "weight": 1},
        ]
    )
    tokenizer = build_tokenizer(TextTransformerConfig(context_length=8))
    a_tokens = tokenizer(["a"])[0]
    loader = make_loader(TrainStream(sources, decoder(), 8, True, 10, seed=0, epoch=0, rank=0, world_size=1), 0)
    texts = []
    for batch in loader:
        texts.extend(batch["text"])
        if len(texts) >= 800:
            break
    share_a = sum(torch.equal(t, a_tokens) for t in texts) / len(texts)
    assert 0.70 < share_a < 0.80, share_a


def noise_png(seed):
    pixels = torch.randint(0, 256, (24, 24, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_resumed_stream_is_bit_identical_with_workers_augmentation_and_mixing(tmp_path):
    """Random crops, two weighted sources (the smaller one runs out before the resume point) and
    two data workers: the batches after a resume are those of the uninterrupted stream."""
    for name, count, per_shard in (("a", 48, 12), ("b", 8, 4)):  # 24 + 4 samples per worker
        samples = (
            {"__key__": f"{name}{i}", "png": noise_png(i + 1000 * (name == "b")), "txt": f"{name} {i}"}
            for i in range(count)
        )
        write_shards(samples, tmp_path, name, per_shard)
    sources = resolve_sources(
        [
            {"shards": str(tmp_path / "a-{000000..000003}.tar"), "weight": 2},
            {"shards": str(tmp_path / "b-{000000..000001}.tar"), "weight": 1},
        ]
    )
    train_decoder = SampleDecoder(
        SampleKeysConfig(),
        {"image": build_train_image_loader(ImageTransformConfig(), 16)},
        build_tokenizer(TextTransformerConfig(context_length=8)),
    )

    def run(skip=None):
        stream = TrainStream(sources, train_decoder, 4, False, 10, seed=5, epoch=0, rank=0, world_size=1, skip=skip)
        return [b for b in make_loader(stream, 2) if b["num_rows"]]

    full = run()
    # resumed while both sources are live in both workers, then in one, then in neither
    for done, b_used_up in ((2, [False, False]), (4, [False, True]), (10, [True, True])):
        state = StreamState()
        for batch in full[:done]:
            state.consume(batch)
        assert [state.taken[worker][1] == 4 for worker in (0, 1)] == b_used_up
        resumed = run(skip=state.taken)
        assert len(resumed) == len(full) - done
        for before, after in zip(full[done:], resumed):
            assert before["position"] == after["position"]
            assert torch.equal(before["text"], after["text"]) and torch.equal(before["image"], after["image"])
    raw = {"png": noise_png(0), "txt": b"x"}  # and the crops do vary: the test could fail
    with seeded_draws(1):
        one = train_decoder(raw)["image"]
    with seeded_draws(2):
        assert not torch.equal(one, train_decoder(raw)["image"])


LOADER_LEFT_RUNNING = """
import sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from tests.unit.test_data import stream
RECORDS = iter(stream(Path(sys.argv[1]), workers=2))  # alive at exit: workers never shut down
next(RECORDS)
print("left running")
"""


def test_a_process_ending_with_its_loader_running_exits_quietly(shards):
    """The workers of a loader still open at exit are ended (not waited for forever), without
    the DataLoader reporting them as failed workers (a traceback after a good run)."""
    root = str(Path(__file__).parents[2])
    result = subprocess.run(
        [sys.executable, "-c", LOADER_LEFT_RUNNING, str(shards), root], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "left running", result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]


def varied_captions(tmp_path, n=96, corrupt=(), no_caption=()):
    """Captions as web alt text has them: most of 1 to 3 words, one in six of 12, in a random order;
    ``corrupt``: samples whose image is not one, ``no_caption``: samples with an empty caption."""
    rng = __import__("random").Random(0)
    samples = (
        {
            "__key__": f"v{i}",
            "png": b"not an image" if i in corrupt else noise_png(i),
            "txt": " ".join(["word"] * (12 if rng.random() < 1 / 6 else rng.randint(1, 3))) + f" {i}"
            if i not in no_caption
            else " ",
        }
        for i in range(n)
    )
    write_shards(samples, tmp_path, "v", 12)
    return resolve_sources(str(tmp_path / "v-{000000..000007}.tar"))


def bucketed_stream(sources, pool, batch=4, skip=None, skip_offsets=None, first_worker=0):
    stream = TrainStream(
        sources,
        SampleDecoder(
            SampleKeysConfig(),
            {"image": build_train_image_loader(ImageTransformConfig(), 16)},
            build_tokenizer(TextTransformerConfig(context_length=24)),
            text_pad_multiple=2,
        ),
        batch,
        False,
        10,
        seed=1,
        epoch=0,
        rank=0,
        world_size=1,
        skip=skip,
        first_worker=first_worker,
        bucket_pool=pool,
        skip_offsets=skip_offsets,
    )
    return [b for b in make_loader(stream, 2)]


def test_length_buckets_batch_captions_of_one_length_and_use_every_sample_once(tmp_path):
    sources = varied_captions(tmp_path)
    plain, bucketed = bucketed_stream(sources, None, batch=8), bucketed_stream(sources, 24, batch=8)
    assert len(plain) == len(bucketed) == 12  # 2 workers x 48 samples, batches of 8

    def captions(batches):  # each row without its padding
        return sorted(tuple(v for v in row.tolist() if v) for b in batches for row in b["text"])

    assert captions(bucketed) == captions(plain)
    widths = [sum(b["text"].shape[1] for b in batches) for batches in (plain, bucketed)]
    assert widths[1] < 0.75 * widths[0], widths  # 120 of 168 positions


@pytest.mark.parametrize("consumed", [1, 3, 6, 9])
def test_a_resumed_bucketed_stream_goes_on_exactly_and_counts_each_loss_once(tmp_path, consumed):
    """Resumed inside a pool and at its end, with corrupt images (found as the batches are made)
    and empty captions (found as the pools are ordered) in the pools."""
    sources = varied_captions(tmp_path, corrupt={7, 30, 61}, no_caption={12, 50})
    full = [b for b in bucketed_stream(sources, 12)]
    rows = [b for b in full if b["num_rows"]]
    saved = StreamState(workers=2)
    for batch in rows[:consumed]:
        saved.consume(batch)
    state = StreamState(workers=2)
    state.load_process_states([saved.state_dict()], rank=0, world_size=1)
    resumed = bucketed_stream(
        sources, 12, skip=state.replay, skip_offsets=state.replay_offsets, first_worker=state.replay_first_worker
    )
    assert [b["position"] for b in resumed if b["num_rows"]] == [b["position"] for b in rows[consumed:]]
    for before, after in zip(rows[consumed:], (b for b in resumed if b["num_rows"])):
        assert torch.equal(before["text"], after["text"]) and torch.equal(before["image"], after["image"])
    last = next(i for i, b in enumerate(full) if b is rows[consumed - 1])
    lost_before = sum(b["num_skipped"] for b in full[: last + 1])
    assert lost_before + sum(b["num_skipped"] for b in resumed) == sum(b["num_skipped"] for b in full) == 5
