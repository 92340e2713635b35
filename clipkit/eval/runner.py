"""Runs every configured eval set against a model and writes ``eval/<name>.json``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from clipkit import distributed as dist_utils
from clipkit.config.schema import EvalConfig
from clipkit.errors import ConfigError, DataError
from clipkit.eval.captioning import caption_scores
from clipkit.eval.compositionality import compositionality_metrics, true_caption_wins
from clipkit.eval.datasets import EvalSet, Loader, eval_loader, open_eval_set
from clipkit.eval.geometry import geometry_metrics
from clipkit.eval.report import COUNTS
from clipkit.eval.retrieval import retrieval_metrics
from clipkit.eval.zeroshot import classification_metrics, zero_shot_classifier
from clipkit.models.generate import decode_caption, generate
from clipkit.models.multimodal import MultiModalModel

log = logging.getLogger(__name__)

Metrics = dict[str, float]
EXAMPLES = 8  # generated captions kept in eval/<set>.json beside the scores


class Evaluator:
    def __init__(
        self,
        cfg: EvalConfig,
        loaders: dict[str, Loader],
        tokenizer: Callable | None,
        device: torch.device,
        autocast: Callable,
        env: dist_utils.DistEnv = dist_utils.DistEnv(),
    ) -> None:
        """``loaders``: per modality the model encodes, bytes -> eval input (text goes through
        ``tokenizer``)."""
        self.cfg = cfg
        self.env = env
        self.loaders = loaders
        self.tokenizer = tokenizer
        self.device = device
        self.autocast = autocast
        self.sets: list[EvalSet] = [open_eval_set(name, c) for name, c in cfg.datasets.items()]
        # The last run's matched embeddings per set, for the report's figures.
        self.pairs: dict[str, tuple[torch.Tensor, torch.Tensor, str, str]] = {}
        for eval_set in self.sets:
            for key, modality in (("modality", eval_set.modality), ("against", eval_set.against)):
                if (modality == "text" and tokenizer is None) or (modality != "text" and modality not in loaders):
                    raise ConfigError(f"eval.datasets.{eval_set.name}.{key}", f"the model has no {modality} tower")

    @torch.no_grad()
    def run(self, model: MultiModalModel, step: int, out_dir: Path | None) -> dict[str, Metrics]:
        """Every process evaluates its share of each set; all get the same metrics. Results are
        written to ``out_dir/<set>.json`` when out_dir is given (by the main process only)."""
        was_training = model.training
        model.eval()
        results: dict[str, Metrics] = {}
        try:
            for eval_set in self.sets:
                start = time.time()
                examples: list[dict] = []
                if eval_set.task == "zeroshot_classification":
                    metrics = self._zeroshot(model, eval_set)
                elif eval_set.task == "captioning":
                    metrics, examples = self._captioning(model, eval_set)
                elif eval_set.task == "compositionality":
                    metrics = self._compositionality(model, eval_set)
                else:
                    metrics = self._retrieval(model, eval_set)
                _note_missing_samples(eval_set, metrics)
                results[eval_set.name] = metrics
                log.info(
                    "eval %s (%.1fs): %s",
                    eval_set.name,
                    time.time() - start,
                    ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k not in COUNTS),
                )
                if out_dir is not None:
                    out_dir.mkdir(parents=True, exist_ok=True)
                    record = {
                        "dataset": eval_set.name,
                        "task": eval_set.task,
                        "step": step,
                        "metrics": metrics,
                        **({"examples": examples} if examples else {}),
                    }
                    (out_dir / f"{eval_set.name}.json").write_text(json.dumps(record, indent=2) + "\n")
        finally:
            model.train(was_training)
        return results

    def _encode(self, model: MultiModalModel, modality: str, inputs: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return model.encode(modality, inputs.to(self.device)).float()

    def _loader(self, eval_set: EvalSet):
        return eval_loader(
            eval_set, self.loaders, self.cfg.batch_size, self.cfg.workers, self.env.rank, self.env.world_size
        )

    def _gather(self, rows: torch.Tensor) -> torch.Tensor:
        return dist_utils.gather_rows(rows, self.device).cpu()

    def _zeroshot(self, model: MultiModalModel, eval_set: EvalSet) -> Metrics:
        classifier = zero_shot_classifier(
            lambda t: self._encode(model, "text", t),
            self.tokenizer,
            eval_set.classnames,
            eval_set.templates,
            self.device,
        )
        items = [torch.zeros(0, model.embed_dim, device=self.device)]
        labels: list[int] = []
        for inputs, targets in self._loader(eval_set):
            items.append(self._encode(model, eval_set.modality, inputs))
            labels.extend(targets)
        embeddings = self._gather(torch.cat(items))
        all_labels = self._gather(torch.tensor(labels, dtype=torch.long, device=self.device))
        _require_samples(eval_set, len(all_labels))
        classes = len(eval_set.classnames or [])
        if int(all_labels.min()) < 0 or int(all_labels.max()) >= classes:
            raise DataError(
                f"eval set {eval_set.name}: its samples have labels {int(all_labels.min())}.."
                f"{int(all_labels.max())}, but its classnames.txt names {classes} classes"
            )
        all_logits = embeddings @ classifier.float().cpu()
        # Geometry of each item against its class's text embedding (the zero-shot classifier).
        geometry = self._geometry(
            eval_set.name, embeddings, classifier.float().cpu().T[all_labels], eval_set.modality, "text"
        )
        return {**classification_metrics(all_logits, all_labels), **geometry, "num_samples": len(all_labels)}

    def _retrieval(self, model: MultiModalModel, eval_set: EvalSet) -> Metrics:
        if eval_set.against != "text":
            return self._paired_retrieval(model, eval_set)
        items = [torch.zeros(0, model.embed_dim, device=self.device)]
        texts: list[str] = []
        text_to_item: list[int] = []
        for images, captions in self._loader(eval_set):
            first = sum(len(x) for x in items)
            items.append(self._encode(model, eval_set.modality, images))
            for offset, caption_list in enumerate(captions):
                texts.extend(caption_list)
                text_to_item.extend([first + offset] * len(caption_list))
        text_embeddings = self._encode_texts(model, texts)
        # Item indices are local to each process: shift them by the items of lower ranks.
        item_counts = dist_utils.gather_objects(sum(len(x) for x in items))
        offset = sum(item_counts[: self.env.rank])
        all_items = self._gather(torch.cat(items))
        _require_samples(eval_set, len(all_items))
        all_texts = self._gather(text_embeddings)
        mapping = self._gather(torch.tensor([offset + i for i in text_to_item], dtype=torch.long, device=self.device))
        metrics = retrieval_metrics(all_items, all_texts, mapping, item_name=eval_set.modality)
        geometry = self._geometry(eval_set.name, all_items[mapping], all_texts, eval_set.modality, "text")
        return {**metrics, **geometry, "num_samples": len(all_items)}

    def _paired_retrieval(self, model: MultiModalModel, eval_set: EvalSet) -> Metrics:
        """Each sample's two members match one to one (e.g. an image and its sound)."""
        items = [torch.zeros(0, model.embed_dim, device=self.device)]
        partners = [torch.zeros(0, model.embed_dim, device=self.device)]
        for inputs, partner_inputs in self._loader(eval_set):
            items.append(self._encode(model, eval_set.modality, inputs))
            partners.append(self._encode(model, eval_set.against, partner_inputs))
        all_items, all_partners = self._gather(torch.cat(items)), self._gather(torch.cat(partners))
        _require_samples(eval_set, len(all_items))
        metrics = retrieval_metrics(
            all_items,
            all_partners,
            torch.arange(len(all_items)),
            item_name=eval_set.modality,
            text_name=eval_set.against,
        )
        geometry = self._geometry(eval_set.name, all_items, all_partners, eval_set.modality, eval_set.against)
        return {**metrics, **geometry, "num_samples": len(all_items)}

    def _compositionality(self, model: MultiModalModel, eval_set: EvalSet) -> Metrics:
        """Each item against its true caption and its perturbed ones."""
        wins: list[bool] = []
        categories: list[str] = []
        for inputs, compositions in self._loader(eval_set):
            items = self._encode(model, eval_set.modality, inputs)
            captions = self._encode_texts(model, [c.caption for c in compositions])
            negatives = self._encode_texts(model, [n for c in compositions for n in c.negatives])
            owner = torch.tensor([i for i, c in enumerate(compositions) for _ in c.negatives], device=items.device)
            wins.extend(true_caption_wins(items, captions, negatives, owner).tolist())
            categories.extend(c.category for c in compositions)
        everything = [
            pair for rank_pairs in dist_utils.gather_objects(list(zip(wins, categories))) for pair in rank_pairs
        ]
        _require_samples(eval_set, len(everything))
        return compositionality_metrics([w for w, _ in everything], [c for _, c in everything])

    def _encode_texts(self, model: MultiModalModel, texts: list[str]) -> torch.Tensor:
        return torch.cat(
            [torch.zeros(0, model.embed_dim, device=self.device)]
            + [
                self._encode(model, "text", self.tokenizer(texts[i : i + self.cfg.batch_size]))
                for i in range(0, len(texts), self.cfg.batch_size)
            ]
        )

    def _geometry(self, name: str, x: torch.Tensor, y: torch.Tensor, x_name: str, y_name: str) -> Metrics:
        self.pairs[name] = (x, y, x_name, y_name)
        if not self.cfg.geometry_max_pairs:
            return {}
        return geometry_metrics(x, y, x_name, y_name, self.cfg.geometry_max_pairs)

    def _captioning(self, model: MultiModalModel, eval_set: EvalSet) -> tuple[Metrics, list[dict]]:
        """Generates a caption per item and scores it against the item's reference captions."""
        generator = torch.Generator(self.device).manual_seed(self.cfg.generation.seed + self.env.rank)
        pairs: list[tuple] = []
        for inputs, captions in self._loader(eval_set):
            with self.autocast():
                tokens = generate(model, eval_set.modality, inputs.to(self.device), self.cfg.generation, generator)
            pairs.extend((decode_caption(self.tokenizer, t), refs) for t, refs in zip(tokens.cpu(), captions))
        everything = [p for rank_pairs in dist_utils.gather_objects(pairs) for p in rank_pairs]
        _require_samples(eval_set, len(everything))
        scores = None
        if self.env.is_main:  # METEOR starts a JVM: score once, share the result
            scores = caption_scores(
                {i: refs for i, (_, refs) in enumerate(everything)},
                {i: caption for i, (caption, _) in enumerate(everything)},
            )
        scores = dist_utils.broadcast_object(scores)
        examples = [{"generated": caption, "references": refs} for caption, refs in everything[:EXAMPLES]]
        return {**scores, "num_samples": len(everything)}, examples


def _note_missing_samples(eval_set: EvalSet, metrics: Metrics) -> None:
    """A set that gave fewer samples than its sizes.json lists (corrupt samples, damaged shards)
    says so in its results: the metrics are over what was read."""
    missing = (eval_set.expected_samples or 0) - int(metrics["num_samples"])
    if missing > 0:
        metrics["missing_samples"] = missing
        log.warning(
            "eval set %s: %d of its %d samples could not be read (see the warnings above); its "
            "metrics are over the other %d",
            eval_set.name,
            missing,
            eval_set.expected_samples,
            metrics["num_samples"],
        )


def _require_samples(eval_set: EvalSet, count: int) -> None:
    if count == 0:
        raise DataError(
            f"eval set {eval_set.name}: not one readable sample in its {len(eval_set.shards)} "
            "shard(s) (see the warnings above for why each was skipped)"
        )
