"""``clipkit-data``: write webdataset shards (the demo set, or your own image/sound-caption pairs)
and eval sets in CLIP_benchmark's layout from your own files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipkit.cli.errors import USER_ERRORS, fail
from clipkit.cli.launch import run_main
from clipkit.errors import DataError

PROGRAM = "clipkit-data"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="write the built-in demo data set (train shards + eval sets)")
    demo.add_argument("out", type=Path)
    folder = commands.add_parser(
        "folder", help="training shards from a folder of images or sounds with same-named .txt captions"
    )
    table = commands.add_parser("table", help="training shards from a .csv or .jsonl of (path, caption) rows")
    classes = commands.add_parser(
        "eval-classes",
        help="a zero-shot classification eval set from a folder of class subfolders (ImageFolder's layout)",
    )
    captions = commands.add_parser(
        "eval-captions",
        help="a retrieval eval set from a folder of files with same-named .txt captions (one per line) "
        "or a .csv/.jsonl table (rows naming the same file give it several captions)",
    )
    for sub in (folder, table, classes, captions):
        sub.add_argument("src", type=Path)
        sub.add_argument("out", type=Path, help="a new or empty folder")
    for sub in (table, captions):
        sub.add_argument("--path-column", default="path", help="tables: the column of file paths (default 'path')")
        sub.add_argument("--caption-column", default="caption", help="tables: the caption column (default 'caption')")
    classes.add_argument("--classnames", type=Path, help="one class name per line, in the folders' sorted order")
    classes.add_argument("--templates", type=Path, help="prompt templates, one per line, with a {c} placeholder")
    for sub in (folder, table, classes, captions):
        sub.add_argument("--per-shard", type=int, default=1000, help="samples per shard (default 1000)")
    for sub in (folder, table):
        sub.add_argument("--prefix", default="shard", help="shard file name prefix (default 'shard')")
    for sub in (classes, captions):
        sub.add_argument("--split", default="test", help="the split folder to write (default 'test')")
    return parser


def _new_folder(out: Path) -> None:
    """Shards are written into a folder of their own: nothing already there is overwritten."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not an empty folder; name a new one")


def _pairs(args: argparse.Namespace):
    from clipkit.data.ingest import folder_pairs, table_pairs

    if args.command == "folder" or (args.command == "eval-captions" and args.src.is_dir()):
        return folder_pairs(args.src)
    return table_pairs(args.src, args.path_column, args.caption_column)


def _training_shards(args: argparse.Namespace) -> str:
    from clipkit.data.ingest import checked_pairs, samples_from_pairs
    from clipkit.data.write import write_shards

    pairs = checked_pairs(_pairs(args))
    paths = write_shards(samples_from_pairs(pairs), args.out, args.prefix, args.per_shard)
    pattern = f"{Path(args.out).resolve()}/{args.prefix}-{{000000..{len(paths) - 1:06d}}}.tar"
    # Quoted for the shell and, inside, for Hydra's override grammar, which braces would break.
    return f"""wrote {len(paths)} shards; train on them with 'data.train.shards="{pattern}"'"""


def _eval_set(args: argparse.Namespace) -> str:
    from clipkit.data.eval_ingest import write_captioned, write_class_folders
    from clipkit.data.ingest import checked_pairs

    if args.command == "eval-classes":
        written = write_class_folders(args.src, args.out, args.classnames, args.templates, args.split, args.per_shard)
    else:
        written = write_captioned(checked_pairs(_pairs(args)), args.src, args.out, args.split, args.per_shard)
    items = "sounds" if written.modality == "audio" else f"{written.modality}s"
    return (
        f"wrote a {written.task} set of {written.samples} {items} in {written.shards} shard(s) to {written.root}; "
        f"evaluate on it with {written.overrides()}"
    )


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
        if args.per_shard < 1:
            raise DataError(f"--per-shard must be at least 1, not {args.per_shard}")
        _new_folder(args.out)
        print(_eval_set(args) if args.command.startswith("eval-") else _training_shards(args))
    except USER_ERRORS as exc:
        fail(PROGRAM, exc)


if __name__ == "__main__":
    run_main(main)
