"""model.init.open_clip: open_clip models as open_clip itself saves them load into clipkit's towers
with identical embeddings; anything else is refused naming the first offending key."""

import pytest
import torch
from open_clip.model import CLIP, CustomTextCLIP
from safetensors.torch import save_file

from clipkit.errors import CheckpointError
from clipkit.export.open_clip import open_clip_state_dict
from clipkit.models.multimodal import PairParameters, build_model
from clipkit.models.open_clip_init import WEIGHTS_FILE, load_open_clip_init
from clipkit.models.towers.audio import AudioCNNConfig
from clipkit.models.towers.image import ViTConfig
from clipkit.models.towers.text import TextTransformerConfig

IMAGE = ViTConfig(image_size=32, patch_size=8, width=32, layers=2, head_width=16)
TEXT = TextTransformerConfig(context_length=16, width=32, heads=2, layers=2)
EMBED = 24


def clipkit_model(seed: int, parameters: PairParameters = PairParameters(), **towers):
    torch.manual_seed(seed)
    return build_model(EMBED, {"image": IMAGE, "text": TEXT, **towers}, ["image_text"], parameters).eval()


def open_clip_model(cls=CLIP, **kwargs):
    torch.manual_seed(123)
    model = cls(EMBED, IMAGE.open_clip_cfg(), TEXT.open_clip_cfg(), **kwargs).eval()
    with torch.no_grad():
        model.logit_scale.fill_(3.3)
    return model


def assert_same_embeddings(ours, theirs):
    images = torch.randn(3, 3, 32, 32)
    tokens = torch.randint(1, 1000, (3, 16))
    with torch.no_grad():
        for got, expected in (
            (ours.encode("image", images), theirs.encode_image(images, normalize=True)),
            (ours.encode("text", tokens), theirs.encode_text(tokens, normalize=True)),
        ):
            assert (got - expected).abs().max().item() <= 1e-6


def save_training_checkpoint(model, path):
    """As open_clip_train writes epoch_N.pt: the DDP-wrapped state dict with the run's bookkeeping."""
    torch.save(
        {
            "epoch": 3,
            "name": "run",
            "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
            "optimizer": {"state": {}, "param_groups": []},
        },
        path,
    )


@pytest.mark.parametrize("layout", ["epoch_pt", "pytorch_bin", "safetensors_folder"])
@pytest.mark.parametrize("cls", [CLIP, CustomTextCLIP])
def test_model_saved_by_open_clip_loads_with_identical_embeddings(tmp_path, layout, cls):
    theirs = open_clip_model(cls)
    if layout == "epoch_pt":
        path = tmp_path / "epoch_3.pt"
        save_training_checkpoint(theirs, path)
    elif layout == "pytorch_bin":
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(theirs.state_dict(), path)
    else:  # a hub download's folder: the weights beside open_clip_config.json
        path = tmp_path
        save_file(theirs.state_dict(), str(tmp_path / "open_clip_model.safetensors"))
    ours = clipkit_model(seed=7)
    load_open_clip_init(ours, str(path))
    assert_same_embeddings(ours, theirs)
    assert ours.logit_scales["image_text"].item() == pytest.approx(3.3)


def test_clipkit_export_round_trip(tmp_path):
    """A clipkit model -> the open_clip export's weights -> another clipkit model: the same."""
    source = clipkit_model(seed=1)
    save_file(open_clip_state_dict(source), str(tmp_path / WEIGHTS_FILE))
    copy = clipkit_model(seed=2)
    load_open_clip_init(copy, str(tmp_path))
    for key, value in source.state_dict().items():
        assert torch.equal(copy.state_dict()[key], value), key


def test_sigmoid_model_takes_scale_and_bias(tmp_path):
    theirs = open_clip_model(CustomTextCLIP, init_logit_bias=-7.0)
    save_file(theirs.state_dict(), str(tmp_path / "open_clip_model.safetensors"))
    ours = clipkit_model(seed=3, parameters=PairParameters(contrastive_scale=None, sigmoid=(2.3, -10.0)))
    load_open_clip_init(ours, str(tmp_path))
    assert ours.sigmoid_biases["image_text"].item() == pytest.approx(-7.0)
    assert ours.sigmoid_scales["image_text"].item() == pytest.approx(3.3)


def test_other_towers_keep_their_own_weights(tmp_path):
    """Binding a new tower to a frozen open_clip space: the audio tower stays as initialised."""
    theirs = open_clip_model()
    torch.save(theirs.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    audio = AudioCNNConfig(channels=[8, 16], n_mels=32)
    ours = clipkit_model(seed=4, audio=audio)
    before = {k: v.clone() for k, v in ours.towers["audio"].state_dict().items()}
    load_open_clip_init(ours, str(tmp_path / "open_clip_pytorch_model.bin"))
    assert_same_embeddings(ours, theirs)
    assert all(torch.equal(ours.towers["audio"].state_dict()[k], v) for k, v in before.items())


def test_another_architecture_is_refused_naming_the_key(tmp_path):
    wider = CLIP(
        EMBED,
        ViTConfig(image_size=32, patch_size=8, width=64, layers=2, head_width=16).open_clip_cfg(),
        TEXT.open_clip_cfg(),
    )
    torch.save(wider.state_dict(), tmp_path / "wide.bin")
    with pytest.raises(CheckpointError, match=r"visual\.class_embedding has shape \[64\], this model's \[32\]"):
        load_open_clip_init(clipkit_model(seed=5), str(tmp_path / "wide.bin"))
    deeper = CLIP(
        EMBED,
        IMAGE.open_clip_cfg(),
        TextTransformerConfig(context_length=16, width=32, heads=2, layers=3).open_clip_cfg(),
    )
    torch.save(deeper.state_dict(), tmp_path / "deep.bin")
    with pytest.raises(
        CheckpointError, match=r"has text\.transformer\.resblocks\.2\.\S+, which this model has no place"
    ):
        load_open_clip_init(clipkit_model(seed=5), str(tmp_path / "deep.bin"))
    state = open_clip_model().state_dict()
    del state["visual.proj"]
    torch.save(state, tmp_path / "partial.bin")
    with pytest.raises(CheckpointError, match=r"lacks visual\.proj"):
        load_open_clip_init(clipkit_model(seed=5), str(tmp_path / "partial.bin"))


def test_unusable_paths_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="holds none of open_clip_model.safetensors"):
        load_open_clip_init(clipkit_model(seed=6), str(tmp_path))
    with pytest.raises(CheckpointError, match="no such file"):
        load_open_clip_init(clipkit_model(seed=6), str(tmp_path / "absent.bin"))
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_open_clip_init(clipkit_model(seed=6), str(tmp_path / "junk.bin"))


def test_lit_takes_the_image_tower_alone(tmp_path):
    """model.init.towers=[image]: a pretrained image tower, a text tower and scale of its own."""
    theirs = open_clip_model()
    torch.save(theirs.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    ours = clipkit_model(seed=8)
    text_before = {k: v.clone() for k, v in ours.towers["text"].state_dict().items()}
    load_open_clip_init(ours, str(tmp_path / "open_clip_pytorch_model.bin"), towers=["image"])
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ours.encode("image", images) - theirs.encode_image(images, normalize=True)).abs().max() <= 1e-6
    assert all(torch.equal(ours.towers["text"].state_dict()[k], v) for k, v in text_before.items())
    assert ours.logit_scales["image_text"].item() != pytest.approx(3.3)
    with pytest.raises(CheckpointError, match="model.init.towers"):
        load_open_clip_init(ours, str(tmp_path / "open_clip_pytorch_model.bin"), towers=["audio"])
