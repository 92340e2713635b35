"""Lost training data is visible and counted in samples: a shard cut inside a tar header (which
Python's tarfile ends silently) and one cut inside a member are named in warnings, counted in
``unreadable_shards``, and their missing samples in ``skipped_samples``."""

import json
import shutil
import tarfile

import pytest

from tests.conftest import demo_overrides, run_cli


@pytest.mark.faults
@pytest.mark.slow
def test_cut_shards_are_named_and_their_samples_counted(tmp_path, small_demo):
    demo = tmp_path / "demo"
    shutil.copytree(small_demo, demo)
    shards = demo / "train" / "image_text"
    members = tarfile.open(shards / "demo-000001.tar").getmembers()
    with open(shards / "demo-000001.tar", "r+b") as f:
        f.truncate(members[20].offset + 100)  # inside a header: 10 samples of 2 members read
    members = tarfile.open(shards / "demo-000002.tar").getmembers()
    with open(shards / "demo-000002.tar", "r+b") as f:
        f.truncate(members[40].offset_data + 10)  # inside a member's data
    size = json.loads((shards / "sizes.json").read_text())["demo-000001.tar"]
    run_dir = tmp_path / "run"
    # The image shards alone (16 x 75 samples) in epoch mode, for more than one pass: each shard
    # is read whole.
    result = run_cli(
        "clipkit-train",
        [
            *demo_overrides(demo),
            f"hydra.run.dir={run_dir}",
            "eval=none",
            f'data.train.shards="{shards}/demo-{{000000..000015}}.tar"',
            "data.train.resampled=false",
            "trainer.max_steps=100",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert f"unreadable shard {shards / 'demo-000001.tar'}: read 10 of its {size} samples" in output
    assert f"unreadable shard {shards / 'demo-000002.tar'}: read 20 of its {size} samples" in output
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["unreadable_shards"] >= 2 and last["skipped_samples"] >= (size - 10) + (size - 20)
