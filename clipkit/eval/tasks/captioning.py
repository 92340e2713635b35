"""``captioning``: a caption generated per item (eval.generation) and scored against the item's
reference captions (``txt``, one per line) with the COCO scorers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from clipkit import distributed as dist_utils
from clipkit.config.checks import RunFacts
from clipkit.errors import ConfigError
from clipkit.eval.captioning import caption_scores
from clipkit.eval.eval_set import EvalSet, require_samples
from clipkit.eval.tasks.base import EVAL_TASKS, EvalTask, TaskResult
from clipkit.models.generate import decode_caption, generate

if TYPE_CHECKING:
    from clipkit.eval.runner import Evaluator
    from clipkit.models.multimodal import MultiModalModel

EXAMPLES = 8  # generated captions kept in eval/<set>.json beside the scores


@EVAL_TASKS.register("captioning")
class Captioning(EvalTask):
    def check(self, key: str, run: RunFacts, modality: str) -> None:
        if modality not in run.caption_sources:
            raise ConfigError(
                f"{key}.task",
                f"captioning {modality} needs '{modality}' in model.caption.sources {list(run.caption_sources)}",
            )

    def run(self, evaluator: Evaluator, model: MultiModalModel, eval_set: EvalSet) -> TaskResult:
        """Generates a caption per item and scores it against the item's reference captions."""
        generation, env = evaluator.cfg.generation, evaluator.env
        generator = torch.Generator(evaluator.device).manual_seed(generation.seed + env.rank)
        pairs: list[tuple] = []
        for inputs, captions in evaluator.loader(eval_set):
            with evaluator.autocast():
                tokens = generate(model, eval_set.modality, inputs.to(evaluator.device), generation, generator)
            pairs.extend((decode_caption(evaluator.tokenizer, t), refs) for t, refs in zip(tokens.cpu(), captions))
        everything = [p for rank_pairs in dist_utils.gather_objects(pairs) for p in rank_pairs]
        require_samples(eval_set, len(everything))
        scores = None
        if env.is_main:  # METEOR starts a JVM: score once, share the result
            scores = caption_scores(
                {i: refs for i, (_, refs) in enumerate(everything)},
                {i: caption for i, (caption, _) in enumerate(everything)},
            )
        scores = dist_utils.broadcast_object(scores)
        examples = [{"generated": caption, "references": refs} for caption, refs in everything[:EXAMPLES]]
        return TaskResult({**scores, "num_samples": len(everything)}, examples)
