"""``compositionality`` (SugarCrepe's and ARO's test): must the true caption score above captions
that use the same words to say something else? Per sample: the item, ``txt`` (its true caption, the
first line), ``neg.txt`` (one or more perturbed captions, one per line) and optionally
``category.txt`` (e.g. swap_att, replace_rel; "all" where absent)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from clipkit import distributed as dist_utils
from clipkit.eval.compositionality import compositionality_metrics, true_caption_wins
from clipkit.eval.eval_set import EvalSet, member_lines, require_samples
from clipkit.eval.tasks.base import EVAL_TASKS, EvalTask, TaskResult
from clipkit.modalities.base import Loader

if TYPE_CHECKING:
    from clipkit.eval.runner import Evaluator
    from clipkit.models.multimodal import MultiModalModel


@dataclass(frozen=True)
class Composition:
    """A compositionality sample's texts: the true caption, the perturbed ones, their category."""

    caption: str
    negatives: list[str]
    category: str


def read_composition(sample: dict) -> Composition:
    captions = member_lines(sample, "txt")
    negatives = member_lines(sample, "neg.txt")
    if not captions or not negatives:
        raise ValueError("a compositionality sample needs a caption (txt) and at least one perturbed one (neg.txt)")
    category = sample.get("category.txt", b"").decode("utf-8").strip() or "all"
    return Composition(captions[0], negatives, category)


@EVAL_TASKS.register("compositionality")
class Compositionality(EvalTask):
    def target(self, sample: dict, eval_set: EvalSet, loaders: dict[str, Loader]) -> Composition:
        return read_composition(sample)

    def run(self, evaluator: Evaluator, model: MultiModalModel, eval_set: EvalSet) -> TaskResult:
        """Each item against its true caption and its perturbed ones."""
        wins: list[bool] = []
        categories: list[str] = []
        for inputs, compositions in evaluator.loader(eval_set):
            items = evaluator.encode(model, eval_set.modality, inputs)
            captions = evaluator.encode_texts(model, [c.caption for c in compositions])
            negatives = evaluator.encode_texts(model, [n for c in compositions for n in c.negatives])
            owner = torch.tensor([i for i, c in enumerate(compositions) for _ in c.negatives], device=items.device)
            wins.extend(true_caption_wins(items, captions, negatives, owner).tolist())
            categories.extend(c.category for c in compositions)
        everything = [
            pair for rank_pairs in dist_utils.gather_objects(list(zip(wins, categories))) for pair in rank_pairs
        ]
        require_samples(eval_set, len(everything))
        return TaskResult(compositionality_metrics([w for w, _ in everything], [c for _, c in everything]), [])
