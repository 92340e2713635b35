"""The captioning head (CoCa, Yu et al. 2022), built from open_clip's CoCa blocks.

The text tower is CoCa's unimodal decoder: it is causal, so its token features at position t only
see tokens <= t. The multimodal decoder (open_clip's MultimodalTransformer) continues from them with
causal self-attention and cross-attention to the source's tokens, pooled by attention to
``n_queries`` (open_clip's AttentionalPooler; one pooler per source, so one decoder captions both
images and sounds), and predicts the next token. A tower that pools its tokens itself (open_clip's
CoCa image tower, ``attentional_pool``) needs no pooler here: that is open_clip's CoCa exactly.
Teacher-forced here; generation lives in :mod:`clipkit.models.generate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from open_clip.transformer import AttentionalPooler, MultimodalTransformer
from torch import nn

from clipkit.config.checks import positive
from clipkit.errors import ConfigError

PAD_ID = 0  # open_clip's tokenizer pads with 0


@dataclass
class CaptionHeadConfig:
    """A CoCa-style multimodal text decoder (open_clip's MultimodalTransformer, as wide as the text
    tower) that captions a source modality by cross-attending to its tower's token features,
    pooled to n_queries by attention. No sources: no decoder."""

    sources: list[str] = field(default_factory=list)  # e.g. [image, audio]
    layers: int = 2
    heads: int = 8
    n_queries: int = 64
    pooler_heads: int = 8
    mlp_ratio: float = 4.0

    def check(self, key: str, towers: frozenset[str], text_width: int | None) -> None:
        """``text_width``: the text tower's, which the decoder and its poolers share."""
        for source in self.sources:
            if source == "text" or source not in towers:
                raise ConfigError(
                    f"{key}.sources",
                    f"cannot caption from '{source}': sources are non-text towers (configured: {', '.join(towers)})",
                )
        if self.sources and "text" not in towers:
            raise ConfigError(f"{key}.sources", "captioning needs a text tower")
        for name in ("layers", "heads", "n_queries", "pooler_heads"):
            positive(f"{key}.{name}", getattr(self, name))
        for name in ("heads", "pooler_heads"):
            heads = getattr(self, name)
            if self.sources and text_width is not None and text_width % heads:
                raise ConfigError(
                    f"{key}.{name}",
                    f"the text tower's width {text_width}, which the decoder shares, does not split evenly into "
                    f"{heads} attention heads",
                )


def scored_positions(text: torch.Tensor) -> torch.Tensor:
    """(K, 2): the row and column, in text[:, 1:], of every next-token target that is not padding."""
    return (text[:, 1:] != PAD_ID).nonzero()


class CaptionHead(nn.Module):
    def __init__(
        self,
        cfg: CaptionHeadConfig,
        token_widths: dict[str, int],
        pooled: set[str],
        text_width: int,
        context_length: int,
        vocab_size: int,
    ) -> None:
        super().__init__()
        for source in pooled:
            if token_widths[source] != text_width:
                raise ConfigError(
                    "model.caption.sources",
                    f"the {source} tower pools its tokens to "
                    f"{token_widths[source]} wide, the decoder is as wide as the text tower "
                    f"({text_width}): make model.embed_dim equal to the text tower's width",
                )
        self.poolers = nn.ModuleDict(
            {
                source: nn.Identity()
                if source in pooled
                else AttentionalPooler(
                    text_width, token_widths[source], n_head=cfg.pooler_heads, n_queries=cfg.n_queries
                )
                for source in cfg.sources
            }
        )
        self.decoder = MultimodalTransformer(
            width=text_width,
            layers=cfg.layers,
            heads=cfg.heads,
            context_length=context_length,
            mlp_ratio=cfg.mlp_ratio,
            output_dim=vocab_size,
        )
        self._init_decoder(text_width, cfg.layers)

    @property
    def sources(self) -> list[str]:
        return list(self.poolers.keys())

    @torch.no_grad()
    def _init_decoder(self, width: int, layers: int) -> None:
        # MultimodalTransformer leaves its projection uninitialised (torch.empty) and does not
        # call its own init_parameters; this is that init (CLIP's text tower scheme).
        proj_std, attn_std, fc_std = width**-0.5 * (2 * layers) ** -0.5, width**-0.5, (2 * width) ** -0.5
        for block in [*self.decoder.resblocks, *self.decoder.cross_attn]:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.decoder.text_projection, std=width**-0.5)

    def memory(self, source: str, source_tokens: torch.Tensor) -> torch.Tensor:
        """(B, n_queries, width): what the decoder cross-attends to."""
        return self.poolers[source](source_tokens)

    def logits(self, source: str, source_tokens: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """(B, L, vocab): next-token logits at each position of the text tower's token features."""
        return self.decoder(self.memory(source, source_tokens), text_features)

    def token_nll(
        self,
        source: str,
        source_tokens: torch.Tensor,
        text_features: torch.Tensor,
        text: torch.Tensor,
        scored: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, the summed cross-entropy of predicting text[:, 1:] from the positions before,
        padding ignored, and the number of tokens scored. Only non-padding positions are
        projected onto the vocabulary, the costly part for short captions in a long context.

        ``scored``: those positions, (K, 2) row and column indices into text[:, 1:], found on the
        host by the caller from its copy of the tokens. Without it they are found here, and their
        count, which sets the shapes that follow, is read from the device: one wait."""
        decoder = self.decoder
        x, memory = text_features[:, :-1], self.memory(source, source_tokens)
        mask = decoder.attn_mask[: x.shape[1], : x.shape[1]]
        for block, cross in zip(decoder.resblocks, decoder.cross_attn):  # MultimodalTransformer.forward
            x = block(x, attn_mask=mask)
            x = cross(x, k_x=memory, v_x=memory)
        targets = text[:, 1:]
        if scored is None:
            scored = scored_positions(text)
        row, column = scored[:, 0], scored[:, 1]
        logits = decoder.ln_final(x[row, column]) @ decoder.text_projection
        nll = F.cross_entropy(logits.float(), targets[row, column], reduction="none")
        per_row = nll.new_zeros(targets.shape[0]).index_add(0, row, nll)
        count = row.new_zeros(targets.shape[0]).index_add(0, row, torch.ones_like(row))
        return per_row, count
