"""The model trained by clipkit: one tower per modality, the objectives' per-pair scales, and an
optional caption decoder."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from clipkit.models.caption import CaptionHead, CaptionHeadConfig, scored_positions
from clipkit.models.towers import TOWERS, Tower, TowerConfig
from clipkit.models.towers.base import below_two_dimensions

# Scores a forward's outputs: the model (for its learnable scales) and the outputs -> loss terms.
LossFn = Callable[["MultiModalModel", dict[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class PairParameters:
    """Initial values of the learnable per-pair parameters of the objectives that are on; None:
    the objective is off and its parameters do not exist (DDP requires every parameter to train)."""

    contrastive_scale: float | None = math.log(1 / 0.07)  # log logit scale of InfoNCE
    sigmoid: tuple[float, float] | None = None  # (log temperature, bias) of the sigmoid loss
    max_logit_scale: float = 100.0


def _per_pair(pairs: list[str], value: float | None) -> nn.ParameterDict:
    """One learnable value per pair, of shape (1,) rather than a scalar: FSDP shards no scalars."""
    if value is None:
        return nn.ParameterDict()
    return nn.ParameterDict({pair: nn.Parameter(torch.full((1,), float(value))) for pair in pairs})


_PER_PAIR = ("logit_scales.", "sigmoid_scales.", "sigmoid_biases.")


def _per_pair_values_as_vectors(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Load-time: the scalar per-pair values of checkpoints written before they became (1,)."""
    for key, value in state_dict.items():
        if key.startswith(tuple(prefix + p for p in _PER_PAIR)) and value.ndim == 0:
            state_dict[key] = value.reshape(1)


class MultiModalModel(nn.Module):
    def __init__(
        self,
        towers: dict[str, Tower],
        pairs: Iterable[str],
        embed_dim: int,
        parameters: PairParameters = PairParameters(),
        caption: CaptionHead | None = None,
    ) -> None:
        super().__init__()
        self.towers = nn.ModuleDict(towers)
        self.pairs: list[str] = list(pairs)
        self.logit_scales = _per_pair(self.pairs, parameters.contrastive_scale)
        sigmoid = parameters.sigmoid or (None, None)
        self.sigmoid_scales = _per_pair(self.pairs if parameters.sigmoid else [], sigmoid[0])
        self.sigmoid_biases = _per_pair(self.pairs if parameters.sigmoid else [], sigmoid[1])
        self.max_log_logit_scale = math.log(parameters.max_logit_scale)
        self.embed_dim = embed_dim
        self.caption = caption
        self.register_load_state_dict_pre_hook(_per_pair_values_as_vectors)
        if caption is not None:
            for modality in ("text", *caption.sources):
                self.towers[modality].enable_tokens()

    def no_weight_decay(self) -> set[str]:
        """The parameters the optimizer trains without weight decay: each tower's own (see
        Tower.no_weight_decay), the per-pair scales and biases, and the caption decoder's biases
        and norm gains."""
        names = {f"towers.{m}.{name}" for m, tower in self.towers.items() for name in tower.no_weight_decay()}
        names |= {name for name, _ in self.named_parameters() if name.startswith(_PER_PAIR)}
        if self.caption is not None:
            names |= {f"caption.{name}" for name in below_two_dimensions(self.caption)}
        return names

    @property
    def modalities(self) -> list[str]:
        return list(self.towers.keys())

    def encode(self, modality: str, inputs: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.towers[modality](inputs)
        return F.normalize(features, dim=-1) if normalize else features

    def logit_scale(self, pair: str) -> torch.Tensor:
        """exp of the learnable log scale; the clamp keeps it at most max_logit_scale."""
        return self.logit_scales[pair].clamp(max=self.max_log_logit_scale).exp()

    def sigmoid_scale(self, pair: str) -> torch.Tensor:
        return self.sigmoid_scales[pair].clamp(max=self.max_log_logit_scale).exp()

    def sigmoid_bias(self, pair: str) -> torch.Tensor:
        return self.sigmoid_biases[pair]

    @torch.no_grad()
    def clamp_logit_scales(self) -> None:
        """Called after each optimizer step, as CLIP does, so the stored value stays in range."""
        for scale in [*self.logit_scales.values(), *self.sigmoid_scales.values()]:
            scale.clamp_(0.0, self.max_log_logit_scale)

    def scale_metrics(self) -> dict[str, float]:
        """The current logit scales (and sigmoid biases), named as metrics.jsonl logs them; under
        FSDP a collective, so every process calls it."""
        return {
            **{f"logit_scale/{p}": _read(self.logit_scale(p)) for p in self.logit_scales},
            **{f"sigmoid_scale/{p}": _read(self.sigmoid_scale(p)) for p in self.sigmoid_scales},
            **{f"sigmoid_bias/{p}": _read(self.sigmoid_bias(p)) for p in self.sigmoid_biases},
        }

    def forward(
        self, batch: dict[str, torch.Tensor], present: dict[str, torch.Tensor], loss: LossFn | None = None
    ) -> dict[str, torch.Tensor]:
        """(B, D) normalised embeddings for every modality; rows lacking it (``present[m]`` false)
        are zero. Only present rows are encoded. ``present`` may stay on the host (the trainer's
        masks do): the rows to encode are then found there, without waiting for the device. Where
        no row has a modality, one row is encoded with weight zero, so that every tower is in every
        step's graph: DDP/FSDP and the gathers of every process then see the same tensors,
        whichever modalities their batches carry.

        With ``batch["text_negatives"]`` (B, K, L) and its mask ``present["text_negatives"]``, also
        ``text_negatives`` (B, K, D): the hard-negative captions' embeddings, zero where absent.

        With a caption head, also per source s: ``caption_nll/s`` (B,), each row's summed
        next-token loss of its caption, and ``caption_tokens/s``, the tokens scored (0 on rows
        lacking s or text).

        With ``loss``, returns ``loss(self, outputs)`` instead: the objective then runs inside the
        forward of whatever wraps the model (DDP, FSDP), which is where FSDP gathers the learnable
        scales it uses, and the wrapper sees one module with every trained parameter."""
        out: dict[str, torch.Tensor] = {}
        tokens: dict[str, torch.Tensor] = {}
        for modality in self.modalities:
            inputs, rows = batch[modality], present[modality]
            index, weight = _rows_or_stand_in(rows, inputs.device)
            tower = self.towers[modality]
            selected = inputs[index]
            negatives = modality == "text" and "text_negatives" in batch
            if negatives:  # hard-negative captions: encoded in the same call as the captions
                negative_rows = present["text_negatives"]
                negative_index, negative_weight = _rows_or_stand_in(negative_rows.flatten(), inputs.device)
                selected = torch.cat([selected, batch["text_negatives"].flatten(0, 1)[negative_index]])
            if tower.returns_tokens:
                encoded, token_features = tower.forward_with_tokens(selected)
                tokens[modality] = _scatter_rows(token_features[: len(index)] * weight, index, rows.shape[0])
            else:
                encoded = tower(selected)
            if negatives:
                encoded, encoded_negatives = encoded[: len(index)], encoded[len(index) :]
                out["text_negatives"] = _scatter_rows(
                    F.normalize(encoded_negatives, dim=-1) * negative_weight, negative_index, negative_rows.numel()
                ).unflatten(0, tuple(negative_rows.shape))
            out[modality] = _scatter_rows(F.normalize(encoded, dim=-1) * weight, index, rows.shape[0])
        if self.caption is not None:
            for source in self.caption.sources:
                out.update(self._caption_terms(source, batch["text"], tokens, present))
        return out if loss is None else loss(self, out)

    def _caption_terms(
        self, source: str, text: torch.Tensor, tokens: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """``present["text_tokens"]``, a host copy of the token ids if the caller has one, lets the
        scored tokens be found on the host too."""
        rows = present[source] & present["text"]
        index, weight = _rows_or_stand_in(rows, text.device)
        scored = None
        if "text_tokens" in present:
            host_rows, _ = _rows_or_stand_in(rows, rows.device)
            scored = to_device_async(scored_positions(present["text_tokens"][host_rows]), text.device)
        nll, count = self.caption.token_nll(source, tokens[source][index], tokens["text"][index], text[index], scored)
        return {
            f"caption_nll/{source}": _scatter_rows(nll * weight, index, rows.shape[0]),
            f"caption_tokens/{source}": _scatter_rows(count * int(weight), index, rows.shape[0]),
        }


def _read(value: torch.Tensor) -> float:
    """A one-element tensor's value; FSDP shards it (collective: every process must read it)."""
    return (value.full_tensor() if isinstance(value, DTensor) else value).item()


def _rows_or_stand_in(rows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, float]:
    """The indices, on ``device``, of the rows marked true, weight 1; with none, row 0 as a stand-in
    of weight 0, so that the module still runs and stays in the graph (see MultiModalModel.forward).
    Their count sets the shapes that follow, so it must reach the host: from a host mask it is
    there already, from a device mask reading it waits for the device."""
    index = rows.nonzero().squeeze(1)
    index, weight = (index, 1.0) if index.numel() else (index.new_zeros(1), 0.0)
    return to_device_async(index, device), weight


def to_device_async(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``, copied without the host waiting for the device: a blocking copy
    waits for the stream, and so may one from pageable memory, so a host tensor is page-locked
    first (the batches from a pinning loader already are)."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _scatter_rows(values: torch.Tensor, index: torch.Tensor, rows: int) -> torch.Tensor:
    """A (rows, ...) tensor of zeros holding ``values`` at ``index``."""
    return values.new_zeros(rows, *values.shape[1:]).index_put((index,), values)


def build_model(
    embed_dim: int,
    towers: dict[str, TowerConfig],
    pairs: Iterable[str],
    parameters: PairParameters = PairParameters(),
    caption: CaptionHeadConfig | None = None,
) -> MultiModalModel:
    built = {modality: TOWERS.get(cfg.name).build(cfg, embed_dim) for modality, cfg in towers.items()}
    head = None
    if caption is not None and caption.sources:
        text = towers["text"]
        head = CaptionHead(
            caption,
            {s: built[s].token_width for s in caption.sources},
            {s for s in caption.sources if built[s].tokens_pooled},
            text.width,
            text.context_length,
            text.vocab_size,
        )
    return MultiModalModel(built, pairs, embed_dim, parameters, head)
