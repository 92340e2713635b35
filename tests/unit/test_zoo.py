"""open_clip's model zoo by name: every architecture clipkit claims builds exactly open_clip's
module tree, each refused one says why, and the config keys compose, override and refuse."""

import dataclasses

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CustomTextCLIP, convert_to_custom_text_state_dict

from clipkit.config.compose import compose_config
from clipkit.config.validate import check_config
from clipkit.errors import ConfigError
from clipkit.models.multimodal import build_model
from clipkit.models.towers.image import ResNetConfig, TimmConfig, ViTConfig
from clipkit.models.zoo import ArchRefused, arch_towers, zoo

ZOO = zoo()
BUILT = sorted(name for name, arch in ZOO.items() if not isinstance(arch, ArchRefused))
REFUSED = sorted(name for name, arch in ZOO.items() if isinstance(arch, ArchRefused))


def _shapes(state: dict) -> dict:
    return {key: tuple(value.shape) for key, value in state.items() if key not in ("logit_scale", "logit_bias")}


def test_the_zoo_covers_every_open_clip_name():
    assert set(ZOO) == set(open_clip.list_models())
    assert len(BUILT) >= 90 and {"ViT-B-32", "ViT-L-14", "RN50", "convnext_base", "EVA02-B-16"} <= set(BUILT)


@pytest.mark.parametrize("name", BUILT)
def test_architecture_builds_open_clips_module_tree(name):
    """At full size, on the meta device (no memory, no time): clipkit's towers have exactly the
    tensors, names and shapes of the model open_clip builds from the same name."""
    arch = arch_towers(name)
    config = dict(open_clip.get_model_config(name))
    their_class = CustomTextCLIP if config.pop("custom_text", False) else CLIP  # as create_model picks
    with torch.device("meta"):
        ours = build_model(arch.embed_dim, {"image": arch.image, "text": arch.text}, ["image_text"])
        theirs = their_class(**config)
    expected = _shapes(convert_to_custom_text_state_dict(theirs.state_dict()))
    got = {
        **{f"visual.{k}": tuple(v.shape) for k, v in ours.towers["image"].encoder.state_dict().items()},
        **{f"text.{k}": tuple(v.shape) for k, v in ours.towers["text"].encoder.state_dict().items()},
    }
    assert got == expected


@pytest.mark.parametrize("name", REFUSED)
def test_refused_architecture_says_why(name):
    with pytest.raises(ArchRefused) as refused:
        arch_towers(name)
    assert any(word in str(refused.value) for word in ("Hugging Face", "CoCa", "clipkit")), str(refused.value)


# One architecture per tower kind, shrunk where the real size is slow on a CPU: with the same
# random weights, clipkit's towers and open_clip's model embed alike (activation and all).
SHRUNK = {
    "ViT-B-32-quickgelu": dict(
        image=dict(width=64, layers=2, head_width=32, image_size=64), text=dict(width=64, heads=2, layers=2)
    ),
    "RN50": dict(
        image=dict(width=16, image_size=64, head_width=16, layers=[1, 1, 1, 1]), text=dict(width=64, heads=2, layers=2)
    ),
    "MobileCLIP-S1": dict(image=dict(image_size=64), text=dict(width=64, heads=2, layers=2)),
}


@pytest.mark.parametrize("name", sorted(SHRUNK))
def test_shrunk_architecture_embeds_as_open_clip(name):
    arch = arch_towers(name)
    image = dataclasses.replace(arch.image, **SHRUNK[name]["image"])
    text = dataclasses.replace(arch.text, **SHRUNK[name]["text"])
    torch.manual_seed(0)
    ours = build_model(arch.embed_dim, {"image": image, "text": text}, ["image_text"]).eval()
    theirs = CLIP(
        arch.embed_dim,
        image.open_clip_cfg(),
        text.open_clip_cfg(),
        quick_gelu=open_clip.get_model_config(name).get("quick_gelu", False),
    ).eval()
    state = convert_to_custom_text_state_dict(theirs.state_dict())
    ours.towers["image"].encoder.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("visual.")})
    ours.towers["text"].encoder.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("text.")})
    images = torch.randn(2, 3, image.image_size, image.image_size)
    tokens = torch.randint(1, 400, (2, text.context_length))
    with torch.no_grad():
        assert torch.allclose(ours.encode("image", images), theirs.encode_image(images, normalize=True), atol=1e-6)
        assert torch.allclose(ours.encode("text", tokens), theirs.encode_text(tokens, normalize=True), atol=1e-6)


def test_quick_gelu_reaches_both_towers():
    arch = arch_towers("ViT-B-32-quickgelu")
    assert isinstance(arch.image, ViTConfig) and arch.image.quick_gelu and arch.text.quick_gelu
    assert not arch_towers("ViT-B-32").image.quick_gelu
    assert isinstance(arch_towers("RN50").image, ResNetConfig)
    timm = arch_towers("EVA02-B-16").image
    assert isinstance(timm, TimmConfig) and timm.model_name == "eva02_base_patch16_clip_224" and timm.proj == "none"


def test_model_arch_composes_with_overrides_on_top():
    raw = compose_config(
        [
            "experiment=demo_image_text",
            "model.arch=ViT-B-16",
            "model.towers.image.patch_dropout=0.5",
            "model.towers.text.layers=3",
        ]
    )
    checked = check_config(raw)
    image, text = checked.towers["image"], checked.towers["text"]
    assert checked.cfg.model.arch == "ViT-B-16" and checked.cfg.model.embed_dim == 512
    assert (image.patch_size, image.width, image.patch_dropout) == (16, 768, 0.5)
    assert (text.width, text.layers) == (512, 3)
    same = check_config(compose_config(["experiment=demo_image_text", "model=open_clip", "model/arch=RN50"]))
    assert same.towers["image"].name == "resnet" and same.cfg.model.embed_dim == 1024


def test_overrides_stay_type_checked():
    with pytest.raises(ConfigError, match="model.towers.image.width"):
        check_config(
            compose_config(["experiment=demo_image_text", "model.arch=ViT-B-32", "model.towers.image.width=wide"])
        )


@pytest.mark.parametrize(
    "name, reason",
    [
        ("ViT-B-16-SigLIP", "Hugging Face tokenizer"),
        ("roberta-ViT-B-32", "Hugging Face model"),
        ("ViT-B-3", "did you mean"),
    ],
)
def test_arch_refused_before_any_work(name, reason):
    with pytest.raises(ConfigError, match=reason):
        compose_config([f"model.arch={name}"])
