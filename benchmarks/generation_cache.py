"""Caption generation time with and without the key/value cache, by caption length.

    python benchmarks/generation_cache.py [--device cpu|cuda] [--batch 16]

A model of model=tiny_coca's shape (77-token context) with random weights. Prints, per maximum
length, the tokens actually generated (the loop stops once every caption has ended), seconds per
batch with and without the cache, and their ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from clipkit.config.compose import compose_config
from clipkit.config.schema import GenerationConfig
from clipkit.config.validate import check_config
from clipkit.models.build import build_bundle
from clipkit.models.generate import generate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    device = torch.device(args.device)
    overrides = ["experiment=demo_coca", "model.towers.text.context_length=77"]
    model = build_bundle(check_config(compose_config(overrides)), device).model.eval()
    images = torch.randn(args.batch, 3, 64, 64, device=device)
    print(f"{'max':>4} {'tokens':>6} {'greedy, cache':>14} {'greedy, none':>13} {'ratio':>6}")
    for length in (8, 16, 32, 64):
        seconds = []
        for use_cache in (True, False):
            cfg = GenerationConfig(strategy="greedy", max_length=length, use_cache=use_cache)
            generate(model, "image", images, cfg)  # warm-up
            start = time.perf_counter()
            tokens = generate(model, "image", images, cfg)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        generated = tokens.shape[1] - 1
        print(f"{length:>4} {generated:>6} {seconds[0]:>14.3f} {seconds[1]:>13.3f} {seconds[1] / seconds[0]:>6.1f}")


if __name__ == "__main__":
    main()
