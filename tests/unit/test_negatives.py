"""Hard-negative captions: the generators on real-looking captions, the shard members, the batch."""

import json

import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

from clipkit.config.compose import compose_config
from clipkit.config.schema import HardNegativesConfig, SampleKeysConfig
from clipkit.config.validate import check_config
from clipkit.data.decode import SampleDecoder
from clipkit.data.negatives import NegativeCaptions, demo, swap_attributes, swap_relations
from clipkit.errors import ConfigError


def test_swap_attributes_exchanges_colours_nouns_and_sizes():
    assert swap_attributes("A red dog sleeps on a blue sofa.") == [
        "A blue dog sleeps on a red sofa.",
        "A red sofa sleeps on a blue dog.",
    ]
    assert swap_attributes("a small cat next to a large dog") == [
        "a small dog next to a large cat",
        "a large cat next to a small dog",
    ]
    assert swap_attributes("a big elephant") == ["a small elephant"]  # one size word: its opposite


def test_swap_attributes_keeps_articles_and_capitals_right():
    assert swap_attributes("An apple on a table") == ["A table on an apple"]
    assert swap_attributes("an orange car behind a red bus") == [
        "a red car behind an orange bus",
        "an orange bus behind a red car",
    ]


def test_swap_relations_flips_the_relation_phrase():
    assert swap_relations("a cat sitting in front of a tv") == ["a cat sitting behind a tv"]
    assert swap_relations("The lamp is to the left of the bed, above the rug") == [
        "The lamp is to the right of the bed, above the rug",
        "The lamp is to the left of the bed, below the rug",
    ]
    assert swap_relations("Left of the door") == ["Right of the door"]


@pytest.mark.parametrize(
    "caption",
    [
        "two people walking together",  # one noun, no colour, no size
        "a photo of the beach at sunset",
        "the same red ball and red ball",  # equal words: nothing to exchange
        "",
    ],
)
def test_swap_attributes_refuses_what_it_cannot_contradict(caption):
    assert swap_attributes(caption) == []


def test_relations_refuse_captions_without_one_and_words_inside_others():
    assert swap_relations("a bright lefty overhead kick") == []  # no whole relation word
    assert swap_relations("a dog on the grass") == []


def test_demo_generator_reaches_one_shape_and_sound_captions():
    assert demo("a picture of a red circle") == [
        "a picture of a green circle",
        "a picture of a blue circle",
        "a picture of a yellow circle",
        "a picture of a purple circle",
        "a picture of an orange circle",
        "a picture of a red square",
        "a picture of a red triangle",
        "a picture of a red cross",
    ]
    sounds = demo("three short loud high beeps")
    assert "three short loud low beeps" in sounds and "three short quiet high beeps" in sounds
    assert "two short loud high beeps" in sounds and "three short loud high buzzes" in sounds
    assert not any("tall" in s for s in sounds)  # "short" is a duration there, not a size
    scene = demo("a small red circle to the left of a large blue square")
    assert scene == [
        "a small blue circle to the left of a large red square",
        "a small red square to the left of a large blue circle",
        "a large red circle to the left of a small blue square",
        "a small red circle to the right of a large blue square",
    ]
    assert len(scene) == 4  # what keeps the words comes first: no replacements where it exists


def test_k_negatives_are_drawn_the_same_for_the_same_sample():
    pick = NegativeCaptions(HardNegativesConfig(source="demo", k=2))
    sample = {"__key__": "s0001"}
    first = pick(sample, "a small red circle to the left of a large blue square")
    assert len(first) == 2 and first == pick(sample, "a small red circle to the left of a large blue square")
    others = {
        tuple(pick({"__key__": f"s{i:04d}"}, "a small red circle to the left of a large blue square"))
        for i in range(20)
    }
    assert len(others) > 5  # drawn per sample, not always the first ones


def test_shard_members_and_the_collated_batch():
    decoder = SampleDecoder(
        SampleKeysConfig(),
        {},
        tokenizer=SimpleTokenizer(context_length=16),
        negatives=NegativeCaptions(HardNegativesConfig(source="shards", k=2)),
    )
    rows = [
        decoder({"__key__": "a", "txt": b"a red dog", "neg.txt": b"a blue dog\n\na red cat\na red sofa\n"}),
        decoder({"__key__": "b", "txt": b"a cat", "neg.json": json.dumps(["a dog"]).encode()}),
        decoder({"__key__": "c", "txt": b"a tree"}),
    ]
    assert len(rows[0]["text_negatives"]) == 2
    assert set(rows[0]["text_negatives"]) < {"a blue dog", "a red cat", "a red sofa"}
    assert rows[1]["text_negatives"] == ["a dog"] and rows[2]["text_negatives"] == []
    batch = decoder.collate(rows)
    assert batch["text_negatives"].shape == (3, 2, 16)
    assert batch["has_text_negatives"].tolist() == [[True, True], [True, False], [False, False]]
    assert torch.equal(batch["text_negatives"][1, 0], SimpleTokenizer(context_length=16)(["a dog"])[0])
    assert not batch["text_negatives"][2].any() and batch["rows_with_negatives"] == 2


def test_a_bad_neg_json_is_a_corrupt_sample():
    from clipkit.data.decode import CorruptSample

    decoder = SampleDecoder(
        SampleKeysConfig(),
        {},
        tokenizer=SimpleTokenizer(context_length=16),
        negatives=NegativeCaptions(HardNegativesConfig(source="shards")),
    )
    with pytest.raises(CorruptSample, match="neg.json must hold a list of strings"):
        decoder({"__key__": "a", "txt": b"a cat", "neg.json": b'{"negatives": 3}'})


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["loss.contrastive.hard_negatives.source=swap_colours"], "loss.contrastive.hard_negatives.source"),
        (
            ["loss.contrastive.hard_negatives.source=demo", "loss.contrastive.hard_negatives.k=0"],
            "loss.contrastive.hard_negatives.k",
        ),
        (
            ["loss.contrastive.hard_negatives.source=demo", "loss.contrastive.hard_negatives.weight=0"],
            "loss.contrastive.hard_negatives.weight",
        ),
        (
            ["loss.contrastive.hard_negatives.source=demo", "loss.contrastive.weight=0", "loss.sigmoid.weight=1"],
            "loss.contrastive.hard_negatives.source",
        ),
        (["loss.contrastive.debias=1"], "loss.contrastive.debias"),
        (["loss.contrastive.hardness=-1"], "loss.contrastive.hardness"),
    ],
)
def test_bad_settings_are_named(overrides, key):
    with pytest.raises(ConfigError) as error:
        check_config(compose_config(["experiment=demo_image_text", *overrides]))
    assert error.value.key == key
