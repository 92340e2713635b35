"""A source whose samples give no pair of the model both its modalities is refused by name."""

import pytest

from clipkit.data.shards import ShardSource, check_sources_feed_pairs
from clipkit.data.write import write_shards
from clipkit.errors import ConfigError

KEYS = {"image": ["jpg", "png"], "text": ["txt"], "audio": ["flac"]}


def shard(tmp_path, name, members):
    write_shards(({"__key__": f"s{i}", **{ext: b"x" for ext in members}} for i in range(4)), tmp_path / name, name, 10)
    return ShardSource([str(next((tmp_path / name).glob("*.tar")))])


def test_each_source_needs_one_complete_pair(tmp_path):
    images = shard(tmp_path, "images", ["png", "txt"])
    sounds = shard(tmp_path, "sounds", ["flac", "txt"])
    check_sources_feed_pairs([images, sounds], KEYS, ["image_text", "audio_text"])  # each feeds one pair
    with pytest.raises(ConfigError, match=r"data.train.shards\[1\]: .* members \['flac', 'txt'\]"):
        check_sources_feed_pairs([images, sounds], KEYS, ["image_text"])
    with pytest.raises(ConfigError, match=r"data.keys.image=\['jpg'\]"):
        check_sources_feed_pairs([images], {**KEYS, "image": ["jpg"]}, ["image_text"])
