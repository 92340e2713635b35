"""Starting a model from an open_clip model on disk (``model.init.open_clip=PATH``).

What users have: an open_clip ``local-dir`` folder (as ``clipkit-export`` writes it), an
open_clip_train checkpoint (``epoch_N.pt``: the weights under ``state_dict``, with DDP's
``module.`` prefixes), or a hub download's ``open_clip_pytorch_model.bin`` /
``open_clip_model.safetensors``. clipkit's image and text towers are open_clip's own modules, so the
weights load by renaming keys (``visual.*`` -> the image tower, ``text.*`` -> the text tower, the
scalars -> the image_text pair's), and nothing is left to chance: every tensor of the two towers must
come from the file with its exact shape, and every tensor of the file must land somewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from open_clip.model import convert_to_custom_text_state_dict

from clipkit.errors import CheckpointError
from clipkit.modalities.image import IMAGE
from clipkit.modalities.text import TEXT
from clipkit.models.multimodal import MultiModalModel
from clipkit.models.towers.base import read_state_dict

log = logging.getLogger(__name__)

KEY = "model.init.open_clip"
# open_clip's local-dir layout, which clipkit-export writes too: the config, the weights, and the
# key prefix of each tower (CustomTextCLIP's layout).
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
FOLDER_FILES = (WEIGHTS_FILE, "open_clip_pytorch_model.bin")  # a hub download may hold either
PREFIXES = {IMAGE: "visual.", TEXT: "text."}  # open_clip's CLIP: its visual and text towers
# Prefixes wrappers add to every key: DDP's, and torch.compile's.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Parts of an open_clip model the run may not have: left out with a warning, not an error.
OPTIONAL_PARTS = {"text_decoder.": "CoCa caption decoder", "logit_bias": "SigLIP bias"}


def weights_file(path: str) -> Path:
    """The weights file ``path`` names, itself or inside a local-dir folder."""
    given = Path(path).expanduser()
    if given.is_dir():
        for name in FOLDER_FILES:
            if (given / name).is_file():
                return given / name
        raise CheckpointError(f"{KEY}: {given} holds none of {', '.join(FOLDER_FILES)}")
    if not given.is_file():
        raise CheckpointError(f"{KEY}: no such file or folder: {given}")
    return given


def read_open_clip_state(path: str) -> dict[str, torch.Tensor]:
    """The file's open_clip state dict in CustomTextCLIP's layout (text tower under ``text.``)."""
    state = read_state_dict(str(weights_file(path)))
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{KEY}: {path} holds no state dict")
    for prefix in WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return convert_to_custom_text_state_dict(state)


def _targets(model: MultiModalModel, state: dict[str, torch.Tensor], towers: Sequence[str]) -> dict[str, str]:
    """File key -> model key, for the towers taken (and with both, the heads)."""
    targets: dict[str, str] = {}
    for modality in towers:
        for key in model.towers[modality].encoder.state_dict():
            targets[PREFIXES[modality] + key] = f"towers.{modality}.encoder.{key}"
    if set(towers) != set(PREFIXES):
        return targets
    if model.caption is not None:
        for key in model.caption.decoder.state_dict():
            targets[f"text_decoder.{key}"] = f"caption.decoder.{key}"
    sigmoid = "logit_bias" in state and "image_text" in model.sigmoid_biases
    if sigmoid or ("image_text" in model.sigmoid_scales and "image_text" not in model.logit_scales):
        targets["logit_scale"] = "sigmoid_scales.image_text"
    elif "image_text" in model.logit_scales:
        targets["logit_scale"] = "logit_scales.image_text"
    if sigmoid:
        targets["logit_bias"] = "sigmoid_biases.image_text"
    return targets


def load_open_clip_init(model: MultiModalModel, path: str, towers: Sequence[str] = tuple(PREFIXES)) -> None:
    """Copies the open_clip model at ``path`` into ``model``'s ``towers`` (with both image and
    text, also its caption decoder, logit scale and SigLIP bias, where the model has them); other
    towers keep their own initialisation. Raises CheckpointError naming the first key that is
    missing, unexpected or of another shape."""
    unknown = [t for t in towers if t not in PREFIXES or t not in model.towers]
    if unknown or not towers:
        raise CheckpointError(
            f"model.init.towers: an open_clip model fills the image and text towers; "
            f"{', '.join(unknown) or 'none'} asked, this model has {', '.join(model.towers)}"
        )
    state = read_open_clip_state(path)
    targets = _targets(model, state, towers)
    own = model.state_dict()
    missing = [key for key in targets if key not in state and not key.startswith("logit_")]
    if missing:
        raise CheckpointError(
            f"{KEY}: {path} lacks {missing[0]} (and {len(missing) - 1} more tensors of this "
            "model): it is another architecture"
        )
    loaded: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in targets:
            target = own[targets[key]]
            value = value.reshape(target.shape) if value.numel() == target.numel() == 1 else value
            if value.shape != target.shape:
                raise CheckpointError(
                    f"{KEY}: {path}: {key} has shape {list(value.shape)}, this model's {list(target.shape)}"
                )
            loaded[targets[key]] = value
        elif any(key.startswith(part) for part in OPTIONAL_PARTS) or any(
            key.startswith(PREFIXES[m]) or key == "logit_scale" for m in PREFIXES if m not in towers
        ):
            continue  # a part this model lacks, or a tower (and so the scale) not taken
        else:
            raise CheckpointError(f"{KEY}: {path} has {key}, which this model has no place for")
    left_out = sorted(
        {
            name
            for part, name in OPTIONAL_PARTS.items()
            if any(key.startswith(part) and key not in targets for key in state)
        }
    )
    if left_out:
        log.warning("%s: this model has no %s; left out of %s", KEY, " or ".join(left_out), path)
    model.load_state_dict(loaded, strict=False)
    log.info(
        "initialised the %s tower%s from the open_clip model %s (%d tensors)",
        " and ".join(towers),
        "s" if len(towers) > 1 else "",
        path,
        len(loaded),
    )
