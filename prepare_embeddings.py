"""Build the SHELM semantic database for one (CLIP model, LM, templates) triple.

SHELM training reads this file instead of running CLIP's text tower over the whole shared
vocabulary at every start. Example:

    python prepare_embeddings.py --clip-model openai/clip-vit-base-patch16 --lm minilm --templates none

An existing output file built for the same triple is rebuilt and overwritten; a file built for
another triple (or not a database at all) is only overwritten with --force. The file appears only
when the whole database is built: a failed or interrupted run leaves nothing behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from utils.cli import OneLineArgumentParser, positive_int  # noqa: E402  (standard library only)
from utils.errors import UserError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip-model", required=True, help="CLIP hub id or local directory (model + tokenizer)")
    parser.add_argument("--lm", required=True, help='LM whose tokenizer defines the vocabulary ("minilm", hub id or directory)')
    parser.add_argument("--templates", default="none", help="none | psychlab | avalon | FILE with one template per line containing {}")
    parser.add_argument("--out", default=None, help="output file (default: data/semantic_db__<clip>__<lm>__<templates>.pt)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="texts per CLIP text forward")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--force", action="store_true", help="overwrite an output file built for another triple")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Exit code: 0 built, 2 a bad argument (one line on stderr), 130 interrupted."""
    try:
        args = parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed on one line
        return int(done.code or 0)
    try:
        build(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing written", file=sys.stderr)
        return 130
    return 0


def build(args: argparse.Namespace) -> Path:
    """Check every argument (cheapest first), then build and write the database; returns its path."""
    from utils.hub import looks_like_path
    from utils.outputs import check_output, new_parents

    for flag, value in (("--clip-model", args.clip_model), ("--lm", args.lm)):
        # Fail fast on a mistyped path, before importing torch and transformers.
        if looks_like_path(value) and not Path(value).expanduser().exists():
            raise UserError(f"{flag} path does not exist: {value}")
    if args.out is not None:
        check_output(Path(args.out), "--out", "file")

    import torch

    from models.clip_encoder import load_clip, load_clip_tokenizer
    from models.frozen_lm import load_lm_tokenizer
    from models.semantic_db import build_database, default_db_path, model_identity, read_database, resolve_templates, save_database

    template_name, template_strings = resolve_templates(args.templates)
    out = Path(args.out) if args.out else default_db_path(args.clip_model, args.lm, args.templates)
    check_output(out, "--out", "file")
    device = check_device(args.device, torch)

    # Decide about an existing file before spending minutes on CLIP.
    if out.exists() and not args.force:
        wanted = (model_identity(args.clip_model), model_identity(args.lm), template_name)
        try:
            meta = read_database(out)["meta"]
            found = (meta.get("clip_model"), meta.get("lm"), meta.get("templates"))
        except (ValueError, OSError):
            found = None
        if found != wanted:
            what = "is not a semantic database" if found is None else f"was built for {found}"
            raise UserError(f"{out} exists and {what}; pass --force to overwrite it or choose another --out")
        print(f"{out} exists for the same CLIP/LM/templates; rebuilding it", file=sys.stderr)

    clip = load_clip(args.clip_model)
    try:
        clip.to(device)
    except (RuntimeError, AssertionError) as err:
        raise UserError(f"cannot use --device {device}: {str(err).splitlines()[0]}") from None
    clip_tokenizer = load_clip_tokenizer(args.clip_model)
    lm_tokenizer = load_lm_tokenizer(args.lm)

    db = build_database(
        clip,
        clip_tokenizer,
        lm_tokenizer,
        template_strings,
        clip_name=args.clip_model,
        lm_name=args.lm,
        template_name=template_name,
        progress=not args.no_progress,
        batch_size=args.batch_size,
    )
    try:
        with new_parents(out):
            save_database(db, out)  # atomic: a temporary file renamed at the end
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror or err}; nothing written") from None
    print(f"wrote {out}: {db['meta']['n_words']} words, {db['meta']['embed_dim']}-d embeddings")
    return out


def check_device(name: str | None, torch):
    """The torch device to use; an unknown or unavailable one is a one-line error before any model loads."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r} is not a torch device (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available; use --device cpu")
    return device


if __name__ == "__main__":
    sys.exit(main())
