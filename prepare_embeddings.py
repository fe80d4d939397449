"""Build the SHELM semantic database for one (CLIP model, LM, templates) triple.

SHELM training reads this file instead of running CLIP's text tower over the whole shared
vocabulary at every start. Example:

    python prepare_embeddings.py --clip-model openai/clip-vit-base-patch16 --lm minilm --templates none

An existing output file built for the same triple is rebuilt and overwritten; a file built for
another triple (or not a database at all) is only overwritten with --force.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from utils.errors import UserError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip-model", required=True, help="CLIP hub id or local directory (model + tokenizer)")
    parser.add_argument("--lm", required=True, help='LM whose tokenizer defines the vocabulary ("minilm", hub id or directory)')
    parser.add_argument("--templates", default="none", help="none | psychlab | avalon | FILE with one template per line containing {}")
    parser.add_argument("--out", default=None, help="output file (default: data/semantic_db__<clip>__<lm>__<templates>.pt)")
    parser.add_argument("--batch-size", type=int, default=256, help="texts per CLIP text forward")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--force", action="store_true", help="overwrite an output file built for another triple")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    for flag, value in (("--clip-model", args.clip_model), ("--lm", args.lm)):
        # Fail fast on a mistyped path, before importing torch and transformers.
        if value.startswith((".", "/", "~")) and not os.path.exists(os.path.expanduser(value)):
            raise UserError(f"{flag} path does not exist: {value}")

    import torch

    from models.clip_encoder import load_clip
    from models.lm_memory import load_tokenizer
    from models.memory import load_lm_tokenizer
    from models.semantic_db import (
        build_database,
        default_db_path,
        model_identity,
        read_database,
        resolve_templates,
        save_database,
    )

    template_name, template_strings = resolve_templates(args.templates)
    out = Path(args.out) if args.out else default_db_path(args.clip_model, args.lm, args.templates)

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

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    clip = load_clip(args.clip_model)
    try:
        clip.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise UserError(f"cannot use device {device!r}: {str(exc).splitlines()[0]}") from exc
    clip_tokenizer = load_tokenizer(args.clip_model, "CLIP")
    lm_tokenizer = load_lm_tokenizer(args.lm)

    db = build_database(
        clip,
        clip_tokenizer,
        lm_tokenizer,
        template_strings,
        clip_name=args.clip_model,
        lm_name=args.lm,
        template_name=template_name,
        progress=True,
        batch_size=args.batch_size,
    )
    save_database(db, out)
    print(f"wrote {out}: {db['meta']['n_words']} words, {db['meta']['embed_dim']}-d embeddings")
    return out


if __name__ == "__main__":
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
