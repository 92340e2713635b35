"""Caption generation from a model with a caption head: greedy, beam search, top-k / top-p sampling.

Two interchangeable ways to score the next token:

- ``CachedDecoding`` (default) keeps each self-attention layer's keys and values, of the text
  tower and of the multimodal decoder, and the cross-attention keys and values of the source's
  pooled tokens, so every step runs the network on one new token: linear in the caption length.
- ``FullDecoding`` re-runs open_clip's modules every step on the prefix padded to the full context
  (the text tower's mask has that size): the reference the cached path is tested against.

Both implement ``step(tokens) -> next-token logits`` and ``reorder(rows)`` (beam search keeps
the rows of the surviving beams).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from clipkit.config.checks import positive
from clipkit.errors import ConfigError
from clipkit.models.caption import PAD_ID
from clipkit.registry import Registry

SOT_ID, EOT_ID = 49406, 49407  # open_clip's tokenizer: start and end of text


@dataclass
class GenerationConfig:
    """How the captioning task generates (model.caption's decoder)."""

    strategy: str = "beam"  # a registered strategy: greedy | beam | sample
    max_length: int = 24  # tokens generated after the start token, end token included
    num_beams: int = 3
    length_penalty: float = 1.0  # beam scores are divided by length ** length_penalty
    temperature: float = 1.0  # sample: logits / temperature
    top_k: int = 0  # sample: keep the k most likely tokens (0: all)
    top_p: float = 1.0  # sample: keep the smallest set of tokens with this much probability
    use_cache: bool = True  # keys and values of earlier tokens kept: linear, not quadratic, cost
    seed: int = 0  # sample: the generator's seed

    def check(self, key: str) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"{key}.strategy", f"'{self.strategy}' is not one of {', '.join(STRATEGIES.names())}")
        for name in ("max_length", "num_beams", "temperature"):
            positive(f"{key}.{name}", getattr(self, name))
        positive(f"{key}.top_k", self.top_k, allow_zero=True)
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"{key}.top_p", f"must lie in (0, 1], got {self.top_p}")


class Strategy:
    """How the next token of each row is chosen; rows are beams where ``beams`` says so."""

    def beams(self, cfg: GenerationConfig) -> int:
        return 1

    def step(
        self,
        decoding,
        tokens: torch.Tensor,
        finished: torch.Tensor,
        scores: torch.Tensor,
        logits: torch.Tensor,
        cfg: GenerationConfig,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows' tokens with one more, which rows have ended, and the beams' scores."""
        raise NotImplementedError


STRATEGIES: Registry[Strategy] = Registry("generation strategy")


class FullDecoding:
    def __init__(self, model, memory: torch.Tensor) -> None:
        self.text = model.towers["text"].encoder
        self.decoder = model.caption.decoder
        self.memory = memory

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        # Padded to the full context (the text tower's mask has that size); both networks are
        # causal, so the padding does not change the logits at the last real position.
        length = tokens.shape[1]
        padded = F.pad(tokens, (0, self.text.context_length - length), value=PAD_ID)
        _, features = self.text(padded)
        return self.decoder(self.memory, features)[:, length - 1]

    def reorder(self, rows: torch.Tensor) -> None:
        self.memory = self.memory[rows]


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def _attend(attn: nn.MultiheadAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    heads = attn.num_heads
    out = F.scaled_dot_product_attention(_heads(q, heads), _heads(k, heads), _heads(v, heads))
    out = out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def _projections(attn: nn.MultiheadAttention, x: torch.Tensor) -> list[torch.Tensor]:
    """q, k, v of ``x`` with the packed input projection of nn.MultiheadAttention."""
    return list(F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))


def _mlp(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class CachedDecoding:
    def __init__(self, model, memory: torch.Tensor) -> None:
        self.text = model.towers["text"].encoder
        if getattr(self.text, "cls_emb", None) is not None:
            raise ValueError("cached decoding needs a text tower without an appended class token")
        self.decoder = model.caption.decoder
        self.self_blocks: list[ResidualAttentionBlock] = [*self.text.transformer.resblocks, *self.decoder.resblocks]
        self.cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.self_blocks)
        self.memory_kv = []
        for block in self.decoder.cross_attn:
            _, k, v = _projections(block.attn, block.ln_1_kv(memory))
            self.memory_kv.append((k, v))
        self.position = 0

    def _self_attention(self, i: int, x: torch.Tensor) -> torch.Tensor:
        block = self.self_blocks[i]
        q, k, v = _projections(block.attn, block.ln_1(x))
        if self.cache[i] is not None:
            k, v = torch.cat([self.cache[i][0], k], 1), torch.cat([self.cache[i][1], v], 1)
        self.cache[i] = (k, v)
        return _mlp(block, x + block.ls_1(_attend(block.attn, q, k, v)))

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits after ``tokens``, of which only the last is new since the previous step."""
        if tokens.shape[1] != self.position + 1:
            raise ValueError("cached decoding takes one new token per step")
        x = self.text.token_embedding(tokens[:, -1:]) + self.text.positional_embedding[self.position]
        layers = len(self.text.transformer.resblocks)
        for i in range(layers):
            x = self._self_attention(i, x)
        x = self.text.ln_final(x)
        for j, cross in enumerate(self.decoder.cross_attn):
            x = self._self_attention(layers + j, x)
            k, v = self.memory_kv[j]
            q = _projections(cross.attn, cross.ln_1(x))[0]
            x = _mlp(cross, x + cross.ls_1(_attend(cross.attn, q, k, v)))
        self.position += 1
        return (self.decoder.ln_final(x) @ self.decoder.text_projection)[:, -1]

    def reorder(self, rows: torch.Tensor) -> None:
        self.cache = [None if kv is None else (kv[0][rows], kv[1][rows]) for kv in self.cache]
        self.memory_kv = [(k[rows], v[rows]) for k, v in self.memory_kv]


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def _finish(tokens: torch.Tensor, finished: torch.Tensor, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = chosen.masked_fill(finished, PAD_ID)
    return torch.cat([tokens, chosen[:, None]], 1), finished | (chosen == EOT_ID)


@torch.no_grad()
def generate(
    model,
    source: str,
    inputs: torch.Tensor,
    cfg: GenerationConfig | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, <= 1 + max_length) token ids: the start token, the caption, its end token, then padding."""
    cfg = cfg or GenerationConfig()
    strategy = STRATEGIES.get(cfg.strategy).build()
    _, source_tokens = model.towers[source].forward_with_tokens(inputs)
    memory = model.caption.memory(source, source_tokens)
    beams = strategy.beams(cfg)
    memory = memory.repeat_interleave(beams, dim=0)
    decoding = (CachedDecoding if cfg.use_cache else FullDecoding)(model, memory)
    rows = memory.shape[0]
    tokens = torch.full((rows, 1), SOT_ID, dtype=torch.long, device=memory.device)
    finished = torch.zeros(rows, dtype=torch.bool, device=memory.device)
    scores = torch.zeros(rows, device=memory.device)
    if beams > 1:  # all beams start equal: expand only the first
        scores.view(-1, beams)[:, 1:] = float("-inf")
    context = model.towers["text"].encoder.context_length
    for _ in range(min(cfg.max_length, context - 1)):
        logits = decoding.step(tokens).float()
        logits[:, [PAD_ID, SOT_ID]] = float("-inf")  # never generated: 0 marks "no token" here
        tokens, finished, scores = strategy.step(decoding, tokens, finished, scores, logits, cfg, generator)
        if finished.all():
            break
    if beams > 1:
        lengths = (tokens[:, 1:] != PAD_ID).sum(1).clamp(min=1).float()
        best = (scores / lengths**cfg.length_penalty).view(-1, beams).argmax(1)
        tokens = tokens.view(-1, beams, tokens.shape[1])[torch.arange(best.shape[0]), best]
    return tokens


@STRATEGIES.register("greedy", GenerationConfig)
class Greedy(Strategy):
    def step(self, decoding, tokens, finished, scores, logits, cfg, generator):
        return (*_finish(tokens, finished, logits.argmax(-1)), scores)


@STRATEGIES.register("sample", GenerationConfig)
class Sample(Strategy):
    def step(self, decoding, tokens, finished, scores, logits, cfg, generator):
        probs = _filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1)
        return (*_finish(tokens, finished, torch.multinomial(probs, 1, generator=generator)[:, 0]), scores)


@STRATEGIES.register("beam", GenerationConfig)
class BeamSearch(Strategy):
    def beams(self, cfg: GenerationConfig) -> int:
        return cfg.num_beams

    def step(self, decoding, tokens, finished, scores, logits, cfg, generator):
        return _beam_step(decoding, tokens, finished, scores, logits, cfg.num_beams)


def _beam_step(
    decoding,
    tokens: torch.Tensor,
    finished: torch.Tensor,
    scores: torch.Tensor,
    logits: torch.Tensor,
    beams: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    log_probs = logits.log_softmax(-1)
    # A finished beam continues only with padding, at no cost, so its score stays as it ended.
    ended = torch.full_like(log_probs, float("-inf"))
    ended[:, PAD_ID] = 0.0
    log_probs = torch.where(finished[:, None], ended, log_probs)
    vocab = log_probs.shape[-1]
    candidates = (scores[:, None] + log_probs).view(-1, beams * vocab)
    top_scores, top = candidates.topk(beams, dim=-1)
    origin = (top // vocab + torch.arange(top.shape[0], device=top.device)[:, None] * beams).view(-1)
    decoding.reorder(origin)
    chosen = (top % vocab).view(-1)
    tokens = torch.cat([tokens[origin], chosen[:, None]], 1)
    finished = finished[origin] | (chosen == EOT_ID)
    return tokens, finished, top_scores.view(-1)


def decode_caption(tokenizer, ids: torch.Tensor) -> str:
    """The text between the start token and the end token (or the padding)."""
    words = []
    for token in ids.tolist()[1:]:
        if token in (EOT_ID, PAD_ID):
            break
        words.append(token)
    return tokenizer.decode(words).strip()
