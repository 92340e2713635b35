"""``retrieval``: items against their captions (``txt``, one per line), or against the other
modality the samples carry (``against: audio``: image <-> audio), recall@k both ways."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from clipkit import distributed as dist_utils
from clipkit.eval.eval_set import EvalSet, member, require_samples
from clipkit.eval.retrieval import retrieval_metrics
from clipkit.eval.tasks.base import EVAL_TASKS, EvalTask, TaskResult
from clipkit.modalities.base import Loader

if TYPE_CHECKING:
    from clipkit.eval.runner import Evaluator
    from clipkit.models.multimodal import MultiModalModel


@EVAL_TASKS.register("retrieval")
class Retrieval(EvalTask):
    partners = None  # text, or the samples' other modality

    def target(self, sample: dict, eval_set: EvalSet, loaders: dict[str, Loader]):
        if eval_set.against == "text":
            return super().target(sample, eval_set, loaders)
        return loaders[eval_set.against](member(sample, eval_set.against))

    def run(self, evaluator: Evaluator, model: MultiModalModel, eval_set: EvalSet) -> TaskResult:
        if eval_set.against != "text":
            return self._paired(evaluator, model, eval_set)
        device = evaluator.device
        items = [torch.zeros(0, model.embed_dim, device=device)]
        texts: list[str] = []
        text_to_item: list[int] = []
        for inputs, captions in evaluator.loader(eval_set):
            first = sum(len(x) for x in items)
            items.append(evaluator.encode(model, eval_set.modality, inputs))
            for offset, caption_list in enumerate(captions):
                texts.extend(caption_list)
                text_to_item.extend([first + offset] * len(caption_list))
        text_embeddings = evaluator.encode_texts(model, texts)
        # Item indices are local to each process: shift them by the items of lower ranks.
        item_counts = dist_utils.gather_objects(sum(len(x) for x in items))
        offset = sum(item_counts[: evaluator.env.rank])
        all_items = evaluator.gather(torch.cat(items))
        require_samples(eval_set, len(all_items))
        all_texts = evaluator.gather(text_embeddings)
        mapping = evaluator.gather(torch.tensor([offset + i for i in text_to_item], dtype=torch.long, device=device))
        metrics = retrieval_metrics(all_items, all_texts, mapping, item_name=eval_set.modality)
        geometry = evaluator.geometry(eval_set.name, all_items[mapping], all_texts, eval_set.modality, "text")
        return TaskResult({**metrics, **geometry, "num_samples": len(all_items)}, [])

    def _paired(self, evaluator: Evaluator, model: MultiModalModel, eval_set: EvalSet) -> TaskResult:
        """Each sample's two members match one to one (e.g. an image and its sound)."""
        items = [torch.zeros(0, model.embed_dim, device=evaluator.device)]
        partners = [torch.zeros(0, model.embed_dim, device=evaluator.device)]
        for inputs, partner_inputs in evaluator.loader(eval_set):
            items.append(evaluator.encode(model, eval_set.modality, inputs))
            partners.append(evaluator.encode(model, eval_set.against, partner_inputs))
        all_items, all_partners = evaluator.gather(torch.cat(items)), evaluator.gather(torch.cat(partners))
        require_samples(eval_set, len(all_items))
        metrics = retrieval_metrics(
            all_items,
            all_partners,
            torch.arange(len(all_items)),
            item_name=eval_set.modality,
            text_name=eval_set.against,
        )
        geometry = evaluator.geometry(eval_set.name, all_items, all_partners, eval_set.modality, eval_set.against)
        return TaskResult({**metrics, **geometry, "num_samples": len(all_items)}, [])
