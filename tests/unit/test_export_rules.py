"""What each export format accepts, without training."""

import pytest
import torch

from clipkit.config.compose import compose_config
from clipkit.config.validate import check_config
from clipkit.errors import ExportError
from clipkit.export.open_clip import export_open_clip, open_clip_state_dict
from clipkit.models.build import build_bundle
from tests.conftest import TINY_AUDIO, TINY_MODEL


def bundle(overrides):
    checked = check_config(compose_config(overrides))
    return checked, build_bundle(checked, torch.device("cpu"))


def test_open_clip_refuses_a_model_without_image_and_text_towers(tmp_path):
    checked, built = bundle(
        [
            "model=audio_text_small",
            "model.towers.text.width=32",
            "model.towers.text.heads=2",
            "model.towers.text.layers=1",
            "eval=none",
            "~loss.contrastive.pair_weights.image_audio",
            "~loss.anchors.image_audio",
        ]
    )
    with pytest.raises(ExportError, match="format=onnx"):
        export_open_clip(checked, built.model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


COCA = [
    "experiment=demo_coca",
    *TINY_MODEL,
    *TINY_AUDIO,
    "model.caption.heads=2",
    "model.caption.pooler_heads=2",
    "model.towers.image.attn_pooler_heads=2",
    "model.towers.image.attn_pooler_queries=5",
]


def test_a_coca_model_exports_as_open_clips_coca(tmp_path):
    import open_clip

    checked, built = bundle(COCA)
    model = built.model.eval()
    export_open_clip(checked, model, tmp_path / "coca")
    loaded, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'coca'}")
    loaded.eval()
    images, text = torch.randn(2, 3, 32, 32), built.tokenizer(["a small red circle", "three short high beeps"])
    with torch.no_grad():
        theirs = loaded(images, text)
        _, image_tokens = model.towers["image"].forward_with_tokens(images)
        _, text_tokens = model.towers["text"].forward_with_tokens(text)
        ours = model.caption.logits("image", image_tokens, text_tokens[:, :-1])
        assert type(loaded).__name__ == "CoCa"
        assert (theirs["logits"] - ours).abs().max() <= 1e-5
        assert (theirs["image_features"] - model.encode("image", images)).abs().max() <= 1e-5


def test_a_caption_decoder_open_clip_cannot_express_is_refused(tmp_path):
    checked, built = bundle([*COCA, "model.towers.image.attentional_pool=false"])
    with pytest.raises(ExportError, match="attentional_pool"):
        export_open_clip(checked, built.model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_siglip_model_exports_its_temperature_and_bias():
    _, built = bundle(["loss=siglip", *TINY_MODEL, *TINY_AUDIO])
    state = open_clip_state_dict(built.model)
    assert state["logit_scale"].item() == pytest.approx(2.302585, rel=1e-5) and state["logit_bias"].item() == -10.0
    assert any(key.startswith("visual.") for key in state) and any(key.startswith("text.") for key in state)


def test_a_timm_image_tower_exports_with_the_same_embeddings(tmp_path):
    import open_clip

    checked, built = bundle(
        [
            "experiment=demo_image_text",
            "model=timm_resnet50",
            "eval=none",
            "model.towers.image.model_name=test_convnext",
            "model.towers.image.image_size=32",
            "model.towers.image.pool=avg",
            "model.towers.image.proj=linear",
            *[o for o in TINY_MODEL if "towers.image" not in o],
        ]
    )
    assert checked.towers["image"].model_name == "test_convnext"
    model = built.model.eval()
    export_open_clip(checked, model, tmp_path / "timm")
    loaded, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'timm'}")
    loaded.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (loaded.encode_image(images, normalize=True) - model.encode("image", images)).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "interpolation,resize_mode", [("bicubic", "shortest"), ("bilinear", "longest"), ("bicubic", "squash")]
)
def test_eval_preprocessing_is_what_open_clip_builds_from_the_export_bit_for_bit(interpolation, resize_mode):
    """clipkit-eval's image input equals what open_clip (and so CLIP_benchmark) makes of the same
    image from the exported preprocess_cfg, so an exported model scores the same there."""
    import io

    import numpy as np
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    from clipkit.export.open_clip import open_clip_config

    checked, built = bundle(
        [
            "experiment=demo_image_text",
            *TINY_MODEL,
            "eval=none",
            f"data.image.interpolation={interpolation}",
            f"data.image.resize_mode={resize_mode}",
        ]
    )
    theirs = image_transform_v2(
        PreprocessCfg(**open_clip_config(checked, built.model)["preprocess_cfg"]), is_train=False
    )
    rng = np.random.default_rng(0)
    for width, height in ((57, 40), (33, 90)):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        ours = built.eval_loaders()["image"](buffer.getvalue())
        assert torch.equal(ours, theirs(Image.open(io.BytesIO(buffer.getvalue()))))
