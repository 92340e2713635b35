"""``clipkit-export checkpoint=PATH format=open_clip|onnx out=DIR [KEY=VALUE ...]``: export a
saved checkpoint (a step folder, or a run folder for its latest).

open_clip: ``open_clip_config.json`` + ``open_clip_model.safetensors`` for the image–text part,
loadable with ``open_clip.create_model_and_transforms('local-dir:DIR')``. onnx: one file per
tower, checked against PyTorch with onnxruntime after writing. ``KEY=VALUE`` overrides change the
checkpoint's config.yaml before the model is built (as clipkit-eval's).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from clipkit.cli.arguments import asks_for_help, split_arguments
from clipkit.cli.errors import USER_ERRORS, fail
from clipkit.cli.launch import run_main
from clipkit.errors import ConfigError

PROGRAM = "clipkit-export"
FORMATS = ("open_clip", "onnx")
USAGE = "usage: clipkit-export checkpoint=PATH format=open_clip|onnx out=DIR [KEY=VALUE ...]"


def _parse(argv: list[str]) -> dict[str, object]:
    values, overrides = split_arguments(argv, ("checkpoint", "format", "out"), USAGE)
    args: dict[str, object] = {key: given[-1] for key, given in values.items() if given}
    args["overrides"] = overrides
    for key in ("checkpoint", "format", "out"):
        if not args.get(key):
            raise ConfigError(key, f"missing ({USAGE})")
    if args["format"] not in FORMATS:
        raise ConfigError("format", f"unknown format '{args['format']}'; use one of {', '.join(FORMATS)}")
    if Path(str(args["out"])).expanduser().is_file():
        raise ConfigError("out", f"{args['out']} is a file; name a folder (it is created if missing)")
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    logging.getLogger("clipkit").setLevel(logging.INFO)  # not the ONNX tools' own INFO lines
    argv = sys.argv[1:] if argv is None else argv
    if asks_for_help(argv):
        print(__doc__.strip().replace("``", ""))
        return
    try:
        args = _parse(argv)
        import torch

        from clipkit.saved import load_checkpoint

        _, checked, bundle = load_checkpoint(str(args["checkpoint"]), torch.device("cpu"), args["overrides"])
        if args["format"] == "open_clip":
            from clipkit.export.open_clip import export_open_clip

            written = export_open_clip(checked, bundle.model, args["out"])
        else:
            from clipkit.export.onnx import export_onnx

            written = export_onnx(bundle, args["out"])
    except USER_ERRORS as exc:
        fail(PROGRAM, exc)
    print(f"{PROGRAM}: wrote {written}")


if __name__ == "__main__":
    run_main(main)
