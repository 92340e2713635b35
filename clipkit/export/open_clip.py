"""Export to open_clip's ``local-dir`` format: ``open_clip_config.json`` + ``open_clip_model.safetensors``.

clipkit's image and text towers are open_clip's own modules (VisionTransformer or TimmModel, and
TextTransformer), so the export renames keys and copies tensors: ``towers.image.encoder.*`` ->
``visual.*``, ``towers.text.encoder.*`` -> ``text.*`` (open_clip's CustomTextCLIP layout,
``custom_text: true``), the image–text pair's logit scale (and SigLIP bias) -> ``logit_scale``
(``logit_bias``); a caption decoder over an attention-pooling ViT (model=tiny_coca) ->
``text_decoder.*`` of open_clip's CoCa. Then ``open_clip.create_model_and_transforms('local-dir:DIR')`` and
``open_clip.get_tokenizer('local-dir:DIR')`` load it, and so does CLIP_benchmark.

open_clip's CLIP has exactly an image and a text tower: a model with an audio tower exports its
image–text part (with a warning), and one without both towers is refused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file

from clipkit.atomic import staged_folder
from clipkit.config.validate import CheckedConfig
from clipkit.errors import ExportError
from clipkit.modalities.image import IMAGE
from clipkit.modalities.text import TEXT
from clipkit.models.multimodal import MultiModalModel
from clipkit.models.open_clip_init import CONFIG_FILE, PREFIXES, WEIGHTS_FILE

log = logging.getLogger(__name__)


def _set_fields(cfg) -> dict:
    """The dataclass's fields that are not None (open_clip's loaders take a missing key as its
    default, but some break on an explicit null, e.g. text_cfg.tokenizer_kwargs)."""
    return {key: value for key, value in asdict(cfg).items() if value is not None}


def open_clip_config(checked: CheckedConfig, model: MultiModalModel) -> dict:
    image, text = checked.towers[IMAGE], checked.towers[TEXT]
    model_cfg = {
        "embed_dim": checked.cfg.model.embed_dim,
        "vision_cfg": _set_fields(image.open_clip_cfg()),
        "text_cfg": _set_fields(text.open_clip_cfg()),
        "custom_text": True,
    }
    if _quick_gelu(checked) == {True}:
        model_cfg["quick_gelu"] = True
    if model.caption is not None:  # open_clip builds a CoCa when multimodal_cfg is present
        head = checked.cfg.model.caption
        model_cfg["vision_cfg"]["output_tokens"] = model_cfg["text_cfg"]["output_tokens"] = True
        model_cfg["multimodal_cfg"] = {
            "context_length": text.context_length,
            "vocab_size": text.vocab_size,
            "width": text.width,
            "heads": head.heads,
            "layers": head.layers,
        }
    if "image_text" in model.logit_scales:  # so that a model trained from this config starts as clipkit's
        model_cfg["init_logit_scale"] = checked.cfg.model.init_logit_scale
    elif "image_text" in model.sigmoid_biases:
        model_cfg["init_logit_bias"] = float(model.sigmoid_biases["image_text"])
    transform = checked.cfg.data.image
    preprocess_cfg = {
        "size": image.image_size,
        "mean": list(transform.mean),
        "std": list(transform.std),
        "interpolation": transform.interpolation,
        "resize_mode": transform.resize_mode,
    }
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}


def open_clip_state_dict(model: MultiModalModel) -> dict[str, torch.Tensor]:
    state = {}
    for modality, prefix in PREFIXES.items():
        for key, value in model.towers[modality].encoder.state_dict().items():
            state[prefix + key] = value
    if model.caption is not None:
        for key, value in model.caption.decoder.state_dict().items():
            state[f"text_decoder.{key}"] = value
    # open_clip's are scalars; clipkit's per-pair values have shape (1,).
    if "image_text" in model.logit_scales:
        state["logit_scale"] = model.logit_scales["image_text"].reshape(())
    else:  # a SigLIP model
        state["logit_scale"] = model.sigmoid_scales["image_text"].reshape(())
        state["logit_bias"] = model.sigmoid_biases["image_text"].reshape(())
    return {key: value.detach().cpu().contiguous().clone() for key, value in state.items()}


def _quick_gelu(checked: CheckedConfig) -> set:
    """The activations of the towers that have the choice (a ViT's and the text tower's)."""
    return {tower.quick_gelu for tower in (checked.towers[IMAGE], checked.towers[TEXT]) if hasattr(tower, "quick_gelu")}


def check_exportable(checked: CheckedConfig, model: MultiModalModel) -> None:
    towers = set(checked.towers)
    if not {IMAGE, TEXT} <= towers or "image_text" not in model.pairs:
        raise ExportError(
            f"format=open_clip needs an image and a text tower trained as the pair image_text "
            f"(this model: towers {', '.join(sorted(towers))}, pairs {', '.join(model.pairs)}); "
            "use format=onnx, which exports every tower"
        )
    own = [m for m in (IMAGE, TEXT) if not hasattr(checked.towers[m], "open_clip_cfg")]
    if own:
        raise ExportError(
            f"format=open_clip needs towers open_clip builds; the '{checked.towers[own[0]].name}' {own[0]} "
            "tower is not one of them; use format=onnx, which exports every tower"
        )
    if len(_quick_gelu(checked)) > 1:
        raise ExportError(
            "format=open_clip: open_clip has one quick_gelu switch for both towers, but "
            "model.towers.image.quick_gelu and model.towers.text.quick_gelu differ; use format=onnx"
        )
    if model.caption is not None:
        head = checked.cfg.model.caption
        if IMAGE not in head.sources or not model.towers[IMAGE].tokens_pooled or head.mlp_ratio != 4.0:
            raise ExportError(
                "format=open_clip: a caption decoder exports as open_clip's CoCa only when it "
                "captions images from a ViT with attentional_pool=true (as model=tiny_coca) and "
                "model.caption.mlp_ratio=4; use format=onnx for the towers"
            )
    extra = towers - {IMAGE, TEXT}
    if extra:
        log.warning(
            "format=open_clip holds the image and text towers; the %s tower is left out (format=onnx exports it)",
            ", ".join(sorted(extra)),
        )


def export_open_clip(checked: CheckedConfig, model: MultiModalModel, out: Path) -> Path:
    """Writes ``out`` whole or not at all (a temporary folder renamed into place)."""
    check_exportable(checked, model)
    out = Path(out).expanduser()
    with staged_folder(out) as staging:
        (staging / CONFIG_FILE).write_text(json.dumps(open_clip_config(checked, model), indent=2) + "\n")
        save_file(open_clip_state_dict(model), str(staging / WEIGHTS_FILE))
        (staging / WEIGHTS_FILE).chmod(0o644)
    return out
