import pytest
import torch
from safetensors.torch import save_file

from clipkit.errors import CheckpointError, ConfigError
from clipkit.models.multimodal import build_model
from clipkit.models.towers import TOWERS
from clipkit.models.towers.image import ResNetConfig, TimmConfig, ViTConfig
from clipkit.models.towers.text import TextTransformerConfig, build_tokenizer

VIT = dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16)


def test_registry_lists_builtin_towers():
    assert {"vit", "timm", "transformer"} <= set(TOWERS.names())


def test_vit_and_text_towers_embed_to_embed_dim():
    model = build_model(
        24,
        {"image": ViTConfig(**VIT), "text": TextTransformerConfig(context_length=8, width=32, heads=2, layers=1)},
        ["image_text"],
    )
    tokens = build_tokenizer(model.towers["text"].config)(["a red circle", "a blue square"])
    everything = {"image": torch.ones(2, dtype=torch.bool), "text": torch.ones(2, dtype=torch.bool)}
    out = model({"image": torch.randn(2, 3, 32, 32), "text": tokens}, everything)
    assert out["image"].shape == (2, 24) and out["text"].shape == (2, 24)
    assert torch.allclose(out["image"].norm(dim=-1), torch.ones(2), atol=1e-5)
    assert model.logit_scale("image_text").item() == pytest.approx(1 / 0.07, rel=1e-4)


def test_logit_scale_is_clamped_at_max():
    model = build_model(
        8,
        {"image": ViTConfig(**VIT), "text": TextTransformerConfig(context_length=8, width=32, heads=2, layers=1)},
        ["image_text"],
    )
    with torch.no_grad():
        model.logit_scales["image_text"].fill_(10.0)
    assert model.logit_scale("image_text").item() == pytest.approx(100.0)
    model.clamp_logit_scales()
    assert model.logit_scales["image_text"].item() == pytest.approx(torch.log(torch.tensor(100.0)).item())


def test_checkpoints_with_scalar_logit_scales_still_load():
    """Per-pair values are (1,) since FSDP came (it shards no scalars); older files hold scalars."""
    towers = {"image": ViTConfig(**VIT), "text": TextTransformerConfig(context_length=8, width=32, heads=2, layers=1)}
    model = build_model(8, towers, ["image_text"])
    old = {k: (v.reshape(()) if k.startswith("logit_scales.") else v) for k, v in model.state_dict().items()}
    old["logit_scales.image_text"] = torch.tensor(1.5)
    model.load_state_dict(old, strict=True)
    assert model.logit_scales["image_text"].shape == (1,) and model.logit_scales["image_text"].item() == 1.5


def test_timm_backbone_tower():
    tower = TOWERS.get("timm").build(TimmConfig(model_name="resnet18", image_size=32), 16)
    assert tower(torch.randn(2, 3, 32, 32)).shape == (2, 16)


def test_a_timm_name_or_input_size_that_cannot_work_is_named():
    """An unknown timm name, and a timm ViT (one input size, fixed when built) at another size:
    one-line errors, not timm's RuntimeError or an assertion at the first forward. A hybrid
    backbone whose stem takes any size passes, though its patch embedding names one."""
    with pytest.raises(
        ConfigError,
        match=r"^model.towers.image.model_name: 'resnet_18' is not a timm model \(did you mean 'resnet18'\?\)",
    ):
        TimmConfig(model_name="resnet_18").check("model.towers.image", 16)
    TimmConfig(model_name="hf-hub:timm/resnet18").check("model.towers.image", 16)  # resolved by timm when built
    with pytest.raises(ConfigError, match=r"64 px inputs do not fit timm's vit_tiny_patch16_224 \(Input height \(64\)"):
        TOWERS.get("timm").build(TimmConfig(model_name="vit_tiny_patch16_224", image_size=64), 16)
    tower = TOWERS.get("timm").build(TimmConfig(model_name="vit_tiny_patch16_224", image_size=224), 16)
    assert tower(torch.randn(1, 3, 224, 224)).shape == (1, 16)
    with torch.device("meta"):  # open_clip's ViTamin-XL-384 config builds it at 256 px
        TOWERS.get("timm").build(TimmConfig(model_name="vitamin_xlarge_384", image_size=256), 16)


def test_a_timm_pool_the_backbone_refuses_is_named():
    with pytest.raises(
        ConfigError, match=r"^model.towers.image.pool: 'bad' does not fit timm's resnet18: Invalid pool"
    ):
        TOWERS.get("timm").build(TimmConfig(model_name="resnet18", image_size=32, pool="bad"), 16)
    vit = TimmConfig(model_name="vit_tiny_patch16_224", image_size=224, pool="abs_attn")
    with pytest.raises(ConfigError, match="attention pooling needs a 2-D feature map"), torch.device("meta"):
        TOWERS.get("timm").build(vit, 16)


def test_an_attention_pool_that_cannot_split_its_width_is_named():
    with pytest.raises(ConfigError, match="head_width: 512 does not split evenly into 10 attention heads"):
        ResNetConfig(width=16, head_width=48).check("model.towers.image", 16)
    ResNetConfig(width=16, head_width=64).check("model.towers.image", 16)


def test_lock_freezes_tower_and_grad_checkpointing_is_set():
    tower = TOWERS.get("vit").build(ViTConfig(**VIT, lock=True, grad_checkpointing=True), 16)
    assert not any(p.requires_grad for p in tower.parameters())
    assert tower.encoder.transformer.grad_checkpointing
    partly = TOWERS.get("vit").build(ViTConfig(**VIT, lock=True, unlocked_groups=1), 16)
    assert any(p.requires_grad for p in partly.parameters())


def test_local_weights_are_loaded(tmp_path):
    source = TOWERS.get("vit").build(ViTConfig(**VIT), 16)
    path = tmp_path / "tower.safetensors"
    save_file({k: v.contiguous() for k, v in source.encoder.state_dict().items()}, str(path))
    loaded = TOWERS.get("vit").build(ViTConfig(**VIT, weights=str(path)), 16)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded(x), source(x))
    with pytest.raises(CheckpointError, match="does not fit"):
        TOWERS.get("vit").build(ViTConfig(**{**VIT, "width": 64, "head_width": 32}, weights=str(path)), 16)


def test_fsdp_units_are_each_towers_blocks():
    from clipkit.train.parallel import shard_units

    vit = TOWERS.get("vit").build(ViTConfig(**VIT), 8)
    text = TOWERS.get("transformer").build(TextTransformerConfig(context_length=8, width=32, heads=2, layers=3), 8)
    resnet = TOWERS.get("timm").build(TimmConfig(model_name="resnet18", image_size=32), 8)
    assert shard_units(vit) == list(vit.encoder.transformer.resblocks)
    assert shard_units(text) == list(text.encoder.transformer.resblocks)
    assert shard_units(resnet) == [getattr(resnet.encoder.trunk, f"layer{i}") for i in range(1, 5)]


@pytest.mark.parametrize("pool_type", ["argmax", "first"])
def test_a_text_tower_encodes_captions_cut_after_their_padding_as_padded(pool_type):
    """data.text_pad_multiple: rows cut after the longest caption (open_clip 3.3 needs its causal
    mask cut too) give the embeddings and caption-head token features of the full context."""
    from clipkit.data.text_length import used_length
    from clipkit.models.towers.text import build_text_transformer

    torch.manual_seed(0)
    tower = build_text_transformer(TextTransformerConfig(width=32, heads=2, layers=2, pool_type=pool_type), 16)
    tower.eval().enable_tokens()
    tokens = build_tokenizer(TextTransformerConfig())(["a dog", "a red square left of a small blue circle", "!"])
    length = used_length(tokens, 8)
    assert length == 16 and torch.equal(tokens[:, 16:], torch.zeros_like(tokens[:, 16:]))
    full, full_tokens = tower.forward_with_tokens(tokens)
    cut, cut_tokens = tower.forward_with_tokens(tokens[:, :length])
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(cut_tokens, full_tokens[:, :length], atol=1e-5, rtol=0)
