"""``clipkit-data``: write webdataset shards (the demo set, or your own image/sound-caption pairs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipkit.cli.errors import USER_ERRORS, fail
from clipkit.cli.launch import run_main

PROGRAM = "clipkit-data"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="write the built-in demo data set (train shards + eval sets)")
    demo.add_argument("out", type=Path)
    folder = commands.add_parser(
        "folder", help="shards from a folder of images or sounds with same-named .txt captions"
    )
    folder.add_argument("src", type=Path)
    folder.add_argument("out", type=Path)
    table = commands.add_parser("table", help="shards from a .csv or .jsonl of (path, caption) rows")
    table.add_argument("src", type=Path)
    table.add_argument("out", type=Path)
    table.add_argument("--path-column", default="path")
    table.add_argument("--caption-column", default="caption")
    for sub in (folder, table):
        sub.add_argument("--per-shard", type=int, default=1000, help="samples per shard (default 1000)")
        sub.add_argument("--prefix", default="shard", help="shard file name prefix (default 'shard')")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "demo":
            from clipkit.data.demo import write_demo

            root = write_demo(args.out)
            print(
                f"demo data in {root}: train/{{image_text,audio_text,trimodal}} (shards + sizes.json), "
                "eval/{shapes,scenes,sounds,sound_captions,scene_sounds}"
            )
            return
        from clipkit.data.ingest import folder_pairs, samples_from_pairs, table_pairs
        from clipkit.data.write import write_shards

        pairs = (
            folder_pairs(args.src)
            if args.command == "folder"
            else table_pairs(args.src, args.path_column, args.caption_column)
        )
        paths = write_shards(samples_from_pairs(pairs), args.out, args.prefix, args.per_shard)
        pattern = f"{Path(args.out).resolve()}/{args.prefix}-{{000000..{len(paths) - 1:06d}}}.tar"
        # Quoted for the shell and, inside, for Hydra's override grammar, which braces would break.
        print(f"""wrote {len(paths)} shards; train on them with 'data.train.shards="{pattern}"'""")
    except USER_ERRORS as exc:
        fail(PROGRAM, exc)


if __name__ == "__main__":
    run_main(main)
