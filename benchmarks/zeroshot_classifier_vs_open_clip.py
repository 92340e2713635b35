"""Building a zero-shot classifier (every class's prompts encoded) in clipkit against open_clip.

    python benchmarks/zeroshot_classifier_vs_open_clip.py [--model vit_b32] [--classes 20]
        [--repeats 2] [--device cpu|cuda] [--precision fp32|bf16] [--multiple 8]

ImageNet's first ``--classes`` class names and OpenAI's 80 prompt templates (open_clip's own lists),
through the same weights on both sides: open_clip's model is the one `clipkit-export
format=open_clip` writes. open_clip's ``build_zero_shot_classifier`` (10 classes per batch, as
open_clip_train's zero-shot eval calls it) encodes the prompts padded to the context length;
clipkit's eval cuts them after the batch's longest prompt, rounded up to ``eval.text_pad_multiple``,
where the text tower allows it. The two alternate ``--repeats`` times; the largest difference
between their classifiers is printed beside the times, and the time is also given per 1,000 classes.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

from clipkit.config.compose import compose_config
from clipkit.config.validate import check_config
from clipkit.data.text_length import cut_padding, inert_multiple
from clipkit.eval.zeroshot import zero_shot_classifier
from clipkit.export.open_clip import open_clip_config, open_clip_state_dict
from clipkit.models.build import build_bundle


def main() -> None:
    import open_clip

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="vit_b32", help="a clipkit model preset with a text tower")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--multiple", type=int, default=8, help="clipkit's eval.text_pad_multiple")
    args = parser.parse_args()

    device = torch.device(args.device)
    checked = check_config(compose_config(["experiment=demo_image_text", f"model={args.model}"]))
    torch.manual_seed(0)
    bundle = build_bundle(checked, device)
    core, tokenizer = bundle.model.eval(), bundle.tokenizer
    model_cfg = dict(open_clip_config(checked, core)["model_cfg"])
    model_cfg.pop("custom_text")
    reference = open_clip.CustomTextCLIP(**model_cfg).to(device).eval()
    reference.load_state_dict(open_clip_state_dict(core))
    multiple = inert_multiple(args.multiple, checked.towers["text"])
    if multiple is None:
        raise SystemExit(f"the {args.model} text tower sees its padding: clipkit encodes full rows too")

    classnames = IMAGENET_CLASSNAMES[: args.classes]
    templates = [template("{c}") for template in OPENAI_IMAGENET_TEMPLATES]
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()
    )

    def open_clip_side() -> torch.Tensor:
        return build_zero_shot_classifier(reference, tokenizer, classnames, OPENAI_IMAGENET_TEMPLATES, 10, device)

    def clipkit_side() -> torch.Tensor:
        return zero_shot_classifier(
            lambda tokens: core.encode("text", tokens).float(),
            lambda texts: cut_padding(tokenizer(texts), multiple),
            classnames,
            templates,
            device,
        )

    print(
        f"model={args.model} device={args.device} precision={args.precision} threads={torch.get_num_threads()}: "
        f"{len(classnames)} classes x {len(templates)} templates, {args.repeats} alternating run(s)",
        flush=True,
    )
    seconds: dict[str, list[float]] = {"open_clip": [], "clipkit": []}
    built: dict[str, torch.Tensor] = {}
    sides = {"open_clip": open_clip_side, "clipkit": clipkit_side}
    order = list(sides)
    with torch.no_grad(), autocast:
        for repeat in range(args.repeats):
            for name in order if repeat % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                built[name] = sides[name]().float()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds[name].append(time.perf_counter() - start)
                print(f"  run {repeat + 1} {name}: {seconds[name][-1]:.2f} s", flush=True)
    per_thousand = {name: [s * 1000 / len(classnames) for s in times] for name, times in seconds.items()}
    for name in order:
        low, high = min(per_thousand[name]), max(per_thousand[name])
        print(
            f"{name:<10} {min(seconds[name]):.2f}–{max(seconds[name]):.2f} s; per 1,000 classes {low:.0f}–{high:.0f} s"
        )
    ratio = min(seconds["open_clip"]) / min(seconds["clipkit"])
    difference = (built["open_clip"].to(device) - built["clipkit"]).abs().max().item()
    print(f"open_clip / clipkit time (fastest runs): {ratio:.2f}x; largest classifier difference {difference:.2e}")


if __name__ == "__main__":
    main()
