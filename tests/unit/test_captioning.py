"""Caption generation (with and without the KV cache), caption scoring and embedding geometry."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipkit.config.schema import CaptionHeadConfig, GenerationConfig
from clipkit.eval import captioning
from clipkit.eval.captioning import caption_scores
from clipkit.eval.geometry import geometry_metrics
from clipkit.models.generate import EOT_ID, SOT_ID, CachedDecoding, FullDecoding, decode_caption, generate
from clipkit.models.multimodal import build_model
from clipkit.models.towers.audio import AudioCNNConfig
from clipkit.models.towers.image import ViTConfig
from clipkit.models.towers.text import TextTransformerConfig, build_tokenizer


@pytest.fixture(scope="module")
def captioner():
    torch.manual_seed(0)
    return build_model(
        32,
        {
            "image": ViTConfig(image_size=16, patch_size=8, width=32, layers=1, head_width=16),
            "text": TextTransformerConfig(context_length=16, width=32, heads=2, layers=2),
            "audio": AudioCNNConfig(clip_seconds=0.25, n_mels=32, channels=[8, 16]),
        },
        ["image_text", "audio_text"],
        caption=CaptionHeadConfig(sources=["image", "audio"], layers=2, heads=2, n_queries=4, pooler_heads=2),
    ).eval()


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
@pytest.mark.parametrize("source", ["image", "audio"])
def test_generation_gives_the_same_tokens_with_and_without_the_kv_cache(captioner, strategy, source):
    inputs = torch.randn(3, 3, 16, 16) if source == "image" else torch.randn(3, 4000)
    outputs = []
    for use_cache in (True, False):
        cfg = GenerationConfig(strategy=strategy, max_length=12, num_beams=3, top_k=40, top_p=0.9, use_cache=use_cache)
        outputs.append(generate(captioner, source, inputs, cfg, torch.Generator().manual_seed(0)))
    assert torch.equal(outputs[0], outputs[1])
    tokens = outputs[0]
    assert tokens.shape[0] == 3 and tokens.shape[1] <= 13 and (tokens[:, 0] == SOT_ID).all()
    assert not (tokens[:, 1:] == SOT_ID).any()


def test_cached_step_logits_equal_the_full_forward(captioner):
    """Not only the argmax: the cached path computes the same next-token distribution."""
    _, tokens = captioner.towers["image"].forward_with_tokens(torch.randn(2, 3, 16, 16))
    memory = captioner.caption.memory("image", tokens)
    cached, full = CachedDecoding(captioner, memory), FullDecoding(captioner, memory)
    prefix = torch.tensor([[SOT_ID, 320, 1746, 3251], [SOT_ID, 518, 4482, 3360]])
    with torch.no_grad():
        for length in range(1, prefix.shape[1] + 1):
            assert torch.allclose(cached.step(prefix[:, :length]), full.step(prefix[:, :length]), atol=1e-5)


def test_decode_caption_stops_at_the_end_token():
    tokenizer = build_tokenizer(TextTransformerConfig(context_length=16))
    ids = tokenizer(["three short high beeps"])[0]
    assert decode_caption(tokenizer, ids) == "three short high beeps"
    assert decode_caption(tokenizer, torch.tensor([SOT_ID, EOT_ID, 320])) == ""


REFERENCES = {
    0: ["a small red circle", "a red circle on a plain background"],
    1: ["three short high beeps", "the sound of three high beeps"],
}


def test_caption_scores_are_perfect_for_a_reference_and_low_for_nonsense():
    perfect = caption_scores(REFERENCES, {0: "a small red circle", 1: "three short high beeps"})
    nonsense = caption_scores(REFERENCES, {0: "green triangle above", 1: "a low hum"})
    assert perfect["bleu_4"] == pytest.approx(1.0, abs=1e-6) and perfect["cider_d"] > 1.0
    assert nonsense["bleu_4"] < 0.01 and nonsense["cider_d"] < perfect["cider_d"]
    expected = {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d"}
    assert expected | ({"meteor"} if captioning.java_available() else set()) == set(perfect)


def test_without_java_the_java_free_scores_are_given(monkeypatch, caplog):
    monkeypatch.setattr(captioning, "java_available", lambda: False)
    scores = caption_scores(REFERENCES, {0: "A small red circle.", 1: "three short high beeps"})
    assert set(scores) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d"}
    assert scores["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert "java not found" in caplog.text


def test_geometry_of_two_clouds_against_direct_formulas():
    generator = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(40, 6, generator=generator) + torch.tensor([3.0, 0, 0, 0, 0, 0]), dim=-1)
    y = F.normalize(torch.randn(40, 6, generator=generator) - torch.tensor([3.0, 0, 0, 0, 0, 0]), dim=-1)
    metrics = geometry_metrics(x, y, "image", "text")
    assert metrics["modality_gap"] == pytest.approx((x.mean(0) - y.mean(0)).norm().item(), rel=1e-5)
    assert metrics["matched_cosine"] == pytest.approx((x * y).sum(1).mean().item(), rel=1e-5)
    assert metrics["alignment"] == pytest.approx((x - y).pow(2).sum(1).mean().item(), rel=1e-5)
    pairs = [(i, j) for i in range(40) for j in range(40) if i != j]
    uniform = math.log(sum(math.exp(-2 * (x[i] - x[j]).pow(2).sum().item()) for i, j in pairs) / len(pairs))
    assert metrics["uniformity_image"] == pytest.approx(uniform, rel=1e-5)
    assert metrics["linear_separability"] > 0.95  # the clouds sit on opposite sides
    same = geometry_metrics(x, x, "image", "text")
    assert same["modality_gap"] == 0.0 and same["linear_separability"] <= 0.6


def test_caption_loss_from_host_found_tokens_equals_the_masked_mean(captioner):
    """The training step finds the scored tokens on the host; the loss is the mean next-token
    cross-entropy over the non-padding targets either way."""
    import torch.nn.functional as F

    from clipkit.models.caption import PAD_ID, scored_positions

    tokenizer = build_tokenizer(TextTransformerConfig(context_length=16))
    text = tokenizer(["a small red circle", "three short high beeps above a large square"])
    _, image_tokens = captioner.towers["image"].forward_with_tokens(torch.randn(2, 3, 16, 16))
    _, text_tokens = captioner.towers["text"].forward_with_tokens(text)
    head = captioner.caption
    found_here = head.token_nll("image", image_tokens, text_tokens, text)
    from_host = head.token_nll("image", image_tokens, text_tokens, text, scored_positions(text.clone()))
    assert all(torch.equal(a, b) for a, b in zip(found_here, from_host))
    nll, count = from_host
    assert count.tolist() == (text[:, 1:] != PAD_ID).sum(1).tolist()
    logits = head.logits("image", image_tokens, text_tokens)[:, :-1]
    expected = (
        F.cross_entropy(logits.flatten(0, 1).float(), text[:, 1:].flatten(), ignore_index=PAD_ID, reduction="none")
        .view(2, -1)
        .sum(1)
    )
    assert torch.allclose(nll, expected, atol=1e-4)
