"""The uint8 training crop: torchvision's crop distribution, open_clip's pixels, ToTensor+Normalize's floats."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.transform import AugmentationCfg, image_transform
from PIL import Image
from torchvision.transforms import Normalize, RandomResizedCrop, ToTensor

from clipkit.data.image_crop import ImageNormalizer, TrainImageDecoder, dct_reduction

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def photo(width, height, mode="RGB", fmt="JPEG"):
    """Smooth structure (gradients, a low-frequency pattern, a disc): a misplaced crop shows."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    disc = ((x - width * 0.3) ** 2 + (y - height * 0.6) ** 2 < (min(width, height) * 0.2) ** 2) * 90
    pixels = np.stack([255 * x / width, 255 * y / height, 128 + 60 * np.sin(x / 23) * np.cos(y / 31) + disc], -1)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def test_the_crops_are_torchvisions_for_the_same_generator():
    decoder = TrainImageDecoder(64, (0.08, 1.0))
    reference = RandomResizedCrop(64, scale=(0.08, 1.0))
    for seed in range(50):
        image = Image.open(io.BytesIO(photo(97 + seed, 150 - seed)))
        torch.manual_seed(seed)
        ours = decoder.crop_box(image.height, image.width)
        torch.manual_seed(seed)
        assert ours == reference.get_params(image.convert("RGB"), reference.scale, reference.ratio)


@pytest.mark.parametrize("size,interpolation", [(224, "bicubic"), (96, "bilinear")])
def test_without_dct_scaling_the_pixels_are_open_clips_within_rounding(size, interpolation):
    """open_clip's training crop is bicubic whatever its (eval) interpolation."""
    reference = image_transform(
        size, is_train=True, mean=MEAN, std=STD, interpolation=interpolation, aug_cfg=AugmentationCfg(scale=(0.9, 1.0))
    )
    decoder, normalize = TrainImageDecoder(size, (0.9, 1.0)), ImageNormalizer(MEAN, STD)
    data = photo(int(size * 1.6), int(size * 1.3))  # every crop < 2x size: decoded at full size
    for seed in range(5):
        torch.manual_seed(seed)
        expected = reference(Image.open(io.BytesIO(data)))
        torch.manual_seed(seed)
        ours = decoder(data)
        assert ours.dtype == torch.uint8 and ours.shape == (3, size, size)
        levels = (normalize(ours[None])[0] - expected).abs() * torch.tensor(STD).view(3, 1, 1) * 255
        # the two resamplers round their fixed-point passes differently: a level here and there
        assert (levels > 1.01).float().mean() < 1e-3 and levels.max() < 8


def test_a_dct_scaled_decode_keeps_the_crop_in_place():
    """On ramps (red along x, green along y; any resampling keeps a ramp), against the same crop cut
    from the full-size decode: off by at most the rounding of the box to the reduced image's
    pixels (half of one, k/2 full-size pixels), where a misplaced box is off by tens of levels."""
    width, height = 400, 300
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    ramps = np.stack([255 * x / width, 255 * y / height, np.full_like(x, 128)], -1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(ramps).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    full = torch.from_numpy(np.array(Image.open(io.BytesIO(data))))
    decoder = TrainImageDecoder(32, (0.5, 1.0))
    reductions = set()
    for seed in range(20):
        torch.manual_seed(seed)
        top, left, crop_height, crop_width = decoder.crop_box(height, width)
        reduction = dct_reduction(crop_width, crop_height, 32)
        reductions.add(reduction)
        crop = full[top : top + crop_height, left : left + crop_width].permute(2, 0, 1)[None]
        expected = F.interpolate(crop, size=(32, 32), mode="bicubic", antialias=True)[0, :2].float()
        torch.manual_seed(seed)
        ours = decoder(data)[:2].float()
        assert (ours - expected).abs().mean() <= reduction / 2 * 255 / height + 1
    assert reductions == {4, 8}  # every crop >= 150 px: decoded at 1/4 or 1/8


def test_dct_reduction_keeps_the_crop_at_least_the_target_size():
    assert dct_reduction(447, 900, 224) == 1
    assert dct_reduction(448, 448, 224) == 2
    assert dct_reduction(1000, 950, 224) == 4
    assert dct_reduction(1792, 1800, 224) == 8


@pytest.mark.parametrize("mode,fmt", [("L", "JPEG"), ("P", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG")])
def test_any_image_mode_becomes_three_uint8_channels(mode, fmt):
    torch.manual_seed(0)
    out = TrainImageDecoder(48, (0.9, 1.0))(photo(120, 100, mode, fmt))
    assert out.shape == (3, 48, 48) and out.dtype == torch.uint8


def test_a_truncated_jpeg_fails_in_the_decoder():
    data = photo(300, 300)
    with pytest.raises(OSError):
        TrainImageDecoder(64, (0.9, 1.0))(data[: len(data) // 2])


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_an_image_over_max_pixels_is_refused_from_its_header(fmt, monkeypatch):
    """data.image.max_pixels: judged before any decode (none runs), on either decode path and for
    the device decode's worker side; at the limit the image passes."""
    from clipkit.data.device_decode import DeferredImageDecoder

    data = photo(120, 100, fmt=fmt)
    assert TrainImageDecoder(32, (0.9, 1.0), max_pixels=120 * 100)(data).shape == (3, 32, 32)

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded an image over the limit")

    monkeypatch.setattr("simplejpeg.decode_jpeg", no_decode)
    monkeypatch.setattr(Image.Image, "load", no_decode)
    for decoder in (TrainImageDecoder, DeferredImageDecoder):
        with pytest.raises(ValueError, match=r"image of 120 x 100 px is over data.image.max_pixels \(11_999 px\)"):
            decoder(32, (0.9, 1.0), max_pixels=120 * 100 - 1)(data)


def test_normalising_a_uint8_batch_is_totensor_and_normalize_bit_for_bit():
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    expected = torch.stack(
        [Normalize(MEAN, STD)(ToTensor()(Image.fromarray(p.permute(1, 2, 0).numpy()))) for p in pixels]
    )
    assert torch.equal(ImageNormalizer(MEAN, STD)(pixels), expected)
    stand_in = torch.zeros(2, 3, 8, 8)
    assert ImageNormalizer(MEAN, STD)(stand_in) is stand_in  # absent images' float zeros pass as they are


def test_the_aspect_ratio_range_and_the_colour_augmentations():
    """data.image.train_crop_ratio bounds the crops' shapes; with color_jitter_prob and
    gray_scale_prob at 1 every crop is jittered, then grey, the same for the same draws."""
    from clipkit.data.image_crop import ColourAugment

    data = photo(160, 90)
    square = TrainImageDecoder(32, (0.3, 1.0), ratio=(1.0, 1.0))
    for seed in range(20):
        torch.manual_seed(seed)
        _, _, height, width = square.crop_box(90, 160)
        assert height == width
    plain = TrainImageDecoder(32, (0.9, 1.0))
    grey = TrainImageDecoder(32, (0.9, 1.0), colour=ColourAugment((0.4, 0.4, 0.4, 0.1), 1.0, 1.0))
    torch.manual_seed(0)
    original = plain(data)
    torch.manual_seed(0)
    augmented = grey(data)
    assert augmented.dtype == torch.uint8 and augmented.shape == original.shape
    assert torch.equal(augmented[0], augmented[1]) and torch.equal(augmented[1], augmented[2])
    assert not torch.equal(original[0], original[1])
    torch.manual_seed(0)
    assert torch.equal(grey(data), augmented)  # drawn from torch's generator: a resume redraws them
    jittered = TrainImageDecoder(32, (0.9, 1.0), colour=ColourAugment((0.4, 0.4, 0.4, 0.1), 1.0, 0.0))
    torch.manual_seed(0)
    assert not torch.equal(jittered(data), original)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("train_crop_ratio", [1.5, 1.0], "needs [min, max]"),
        ("train_crop_scale", [0.5, 1.2], "needs [min, max]"),
        ("color_jitter", [0.4, 0.4, 0.4], "needs [brightness, contrast, saturation, hue]"),
        ("gray_scale_prob", 1.5, "must lie in [0, 1]"),
        ("max_pixels", 0, "must be > 0"),
    ],
)
def test_image_transform_values_are_checked(field, value, message):
    from clipkit.data.transforms import ImageTransformConfig
    from clipkit.errors import ConfigError

    with pytest.raises(ConfigError, match=f"data.image.{field}: {message}".replace("[", r"\[")):
        ImageTransformConfig(**{field: value}).check("data.image", "cpu")
    with pytest.raises(ConfigError, match="they need data.decode_device=cpu"):
        ImageTransformConfig(color_jitter_prob=0.5).check("data.image", "cuda")
