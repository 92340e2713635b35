"""The compositionality eval: its rule, and the demo's set."""

import re

import pytest
import torch
import torch.nn.functional as F
import webdataset as wds

from clipkit.config.schema import EvalDatasetConfig
from clipkit.errors import ConfigError
from clipkit.eval.compositionality import compositionality_metrics, true_caption_wins
from clipkit.eval.datasets import open_eval_set


def test_the_true_caption_must_beat_every_perturbed_one():
    torch.manual_seed(0)
    items, captions = F.normalize(torch.randn(5, 4), dim=-1), F.normalize(torch.randn(5, 4), dim=-1)
    negatives = F.normalize(torch.randn(9, 4), dim=-1)
    owner = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4])
    expected = []
    for i in range(5):
        true = float(items[i] @ captions[i])
        expected.append(all(true > float(items[i] @ negatives[j]) for j in range(9) if owner[j] == i))
    assert true_caption_wins(items, captions, negatives, owner).tolist() == expected
    tie = true_caption_wins(items[:1], captions[:1], captions[:1], torch.tensor([0]))
    assert tie.tolist() == [False]  # a caption the model cannot tell from its negative is no win


def test_accuracy_overall_and_per_category():
    metrics = compositionality_metrics([True, False, True, True], ["swap_att", "swap_att", "replace_rel", "swap_att"])
    assert metrics == {"acc": 0.75, "acc_replace_rel": 1.0, "acc_swap_att": pytest.approx(2 / 3), "num_samples": 4}


def words(caption):
    return sorted(re.findall(r"[a-z]+", caption))


def test_the_demo_set_contradicts_each_caption_with_its_own_words(small_demo):
    """swap_colours and swap_sizes use the very words of the caption (a bag of words cannot tell
    them apart); swap_positions changes only the relation."""
    samples = list(
        wds.WebDataset(
            sorted(str(p) for p in (small_demo / "eval/compositions/test").glob("*.tar")), shardshuffle=False
        )
    )
    categories = [s["category.txt"].decode() for s in samples]
    assert len(samples) == 48 and {c: categories.count(c) for c in set(categories)} == {
        "swap_colours": 16,
        "swap_sizes": 16,
        "swap_positions": 16,
    }
    for sample in samples:
        caption, negative = sample["txt"].decode(), sample["neg.txt"].decode()
        assert caption != negative and "webp" in sample
        if sample["category.txt"] == b"swap_positions":
            changed = {w for w in caption.split()} ^ {w for w in negative.split()}
            assert changed in ({"left", "right"}, {"above", "below"})
        else:
            assert words(caption) == words(negative)


def test_a_compositionality_set_without_perturbed_captions_is_skipped_sample_by_sample(small_demo):
    from clipkit.eval.tasks.compositionality import read_composition as _composition

    with pytest.raises(ValueError, match="at least one perturbed one"):
        _composition({"txt": b"a red circle"})
    assert _composition({"txt": b"a red circle\n", "neg.txt": b"a blue circle\n\n"}).category == "all"
    with pytest.raises(ConfigError, match="cannot be matched"):
        open_eval_set(
            "c", EvalDatasetConfig(root=str(small_demo / "eval/compositions"), task="compositionality", against="audio")
        )


def test_sounds_are_evaluated_like_images(tmp_path, small_demo):
    """An audio compositionality set (sounds with a caption and a perturbed one) through the
    evaluator of a tri-modal model."""
    import random

    from clipkit.config.compose import compose_config
    from clipkit.config.validate import check_config
    from clipkit.data.demo_audio import Sound, encode_flac, render
    from clipkit.data.write import write_eval_set
    from clipkit.eval.runner import Evaluator
    from clipkit.models.build import build_bundle
    from clipkit.train.precision import autocast_factory
    from tests.conftest import demo_overrides

    rng = random.Random(0)
    sounds = [
        (Sound("beep", "high", "three", "loud"), "three short loud low beeps", "pitch"),
        (Sound("buzz", "low", "long", "quiet", "rising"), "a long quiet low buzz slowly falling", "contour"),
        (Sound("hiss", "high", "one", "loud"), "a short loud high rasp", "timbre"),
    ]
    write_eval_set(
        tmp_path / "sound_compositions",
        (
            {
                "__key__": f"s{i}",
                "flac": encode_flac(render(sound, rng)),
                "txt": sound.captions()[0],
                "neg.txt": negative,
                "category.txt": category,
            }
            for i, (sound, negative, category) in enumerate(sounds * 2)
        ),
        per_shard=4,
        dataset_type="compositionality",
    )
    checked = check_config(
        compose_config(
            [
                *demo_overrides(small_demo),
                "eval=none",
                f"+eval.datasets.sounds.root={tmp_path / 'sound_compositions'}",
                "+eval.datasets.sounds.task=compositionality",
                "+eval.datasets.sounds.modality=audio",
            ]
        )
    )
    cpu = torch.device("cpu")
    bundle = build_bundle(checked, cpu)
    evaluator = Evaluator(checked.cfg.eval, bundle.eval_loaders(), bundle.tokenizer, cpu, autocast_factory("fp32", cpu))
    metrics = evaluator.run(bundle.model, 0, None)["sounds"]
    assert metrics["num_samples"] == 6
    assert set(metrics) == {"acc", "acc_contour", "acc_pitch", "acc_timbre", "num_samples"}
    assert all(metrics[k] in (0.0, 0.5, 1.0) for k in ("acc_contour", "acc_pitch", "acc_timbre"))
