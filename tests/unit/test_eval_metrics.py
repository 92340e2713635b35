import torch

from clipkit.eval.retrieval import retrieval_metrics
from clipkit.eval.zeroshot import classification_metrics


def test_classification_metrics():
    labels = torch.tensor([0, 0, 1, 2])
    logits = torch.tensor([[9.0, 1, 0], [0, 9, 1], [0, 9, 1], [9, 0, 1]])
    m = classification_metrics(logits, labels)
    assert m["acc1"] == 0.5  # rows 0 and 2
    assert m["acc5"] == 1.0  # only 3 classes: top-3 always hits
    assert abs(m["mean_per_class_recall"] - (0.5 + 1.0 + 0.0) / 3) < 1e-9


def test_retrieval_recall_with_several_captions_per_image():
    items = torch.eye(3)
    # captions 0,1 belong to item 0; caption 2 to item 1; caption 3 to item 2 but looks like item 0
    texts = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [1, 0, 0.5]])
    m = retrieval_metrics(items, texts, torch.tensor([0, 0, 1, 2]), ks=(1, 2))
    assert m["image_retrieval_recall@1"] == 0.75  # caption 3 retrieves item 0 first
    assert m["image_retrieval_recall@2"] == 1.0
    # image -> caption: every image's best own caption ranks first (item 2: caption 3 scores .5, others 0)
    assert m["text_retrieval_recall@1"] == 1.0
