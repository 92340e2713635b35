"""Each objective preset trains the demo end to end and logs its terms separately."""

import json

import pytest

from tests.conftest import demo_overrides, run_cli

PAIRS = ("image_text", "audio_text", "image_audio")


def terms(*names: str) -> set:
    return {f"loss/{name}/{pair}" for name in names for pair in PAIRS}


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset, logged",
    [
        ("loss=siglip", terms("sigmoid") | {"sigmoid_scale/image_text", "sigmoid_bias/audio_text"}),
        ("loss=clip_unif_align", terms("contrastive", "uniformity", "alignment")),
        ("loss=clip_unif_align_xunif", terms("contrastive", "uniformity", "alignment", "cross_uniformity")),
    ],
)
def test_loss_preset_trains_the_demo_and_logs_each_term(tmp_path, small_demo, preset, logged):
    run_dir = tmp_path / "run"
    result = run_cli(
        "clipkit-train",
        [
            *demo_overrides(small_demo),
            preset,
            f"hydra.run.dir={run_dir}",
            "trainer.max_steps=4",
            "trainer.log_every_n_steps=2",
            "eval=demo_image_text",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "loss/total" in line][
        -1
    ]
    logged_terms = {key for key in last if key.startswith("loss/") and key != "loss/total"}
    assert logged <= set(last) and logged_terms == {t for t in logged if t.startswith("loss/")}
    assert all(abs(last[key]) < 1e6 for key in logged)  # finite numbers
    geometry = json.loads((run_dir / "eval" / "scenes.json").read_text())["metrics"]
    assert {
        "modality_gap",
        "uniformity_image",
        "uniformity_text",
        "alignment",
        "matched_cosine",
        "linear_separability",
    } <= set(geometry)


@pytest.mark.slow
def test_coca_preset_captions_images_and_sounds(tmp_path, small_demo):
    run_dir = tmp_path / "run"
    result = run_cli(
        "clipkit-train",
        [
            *demo_overrides(small_demo),
            "experiment=demo_coca",
            f"hydra.run.dir={run_dir}",
            "trainer.max_steps=4",
            "trainer.log_every_n_steps=2",
            "eval.generation.max_length=8",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "loss/total" in line][
        -1
    ]
    assert {"loss/caption/image", "loss/caption/audio", "loss/contrastive/image_text"} <= set(last)
    for name in ("scene_captioning", "sound_captioning"):
        record = json.loads((run_dir / "eval" / f"{name}.json").read_text())
        assert record["task"] == "captioning"
        assert {"bleu_4", "cider_d", "rouge_l"} <= set(record["metrics"])
        assert record["examples"] and record["examples"][0]["references"]
