"""A tiny RANDOM CLIP, to try HELMv2 and SHELM end to end without downloading anything.

    python demo_clip.py --out data/demo-clip
    python main.py --var model=HELMv2 --var clip_model=data/demo-clip --var n_steps=20000
    python prepare_embeddings.py --clip-model data/demo-clip --lm minilm --templates none
    python main.py --var model=SHELM --var clip_model=data/demo-clip --var n_steps=20000

This is a PIPELINE DEMO, not a model: its weights are random, so its image features mean nothing,
SHELM's retrieved words have nothing to do with the frames, and neither agent will learn better
than CNN-PPO. It shows that the whole path runs (CLIP features, the fixed map into the LM's token
space, the semantic database, word retrieval, the readable memory in eval.py's traces). For real
runs download openai/clip-vit-base-patch16 (the README's "What runs offline").
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from utils.cli import OneLineArgumentParser  # noqa: E402
from utils.errors import UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(description=__doc__)
    parser.add_argument("--out", default="data/demo-clip", help="a new or empty directory (default: data/demo-clip)")
    args = parser.parse_args(argv)
    from utils.outputs import check_new_output_dir, staged_directory

    try:
        check_new_output_dir(args.out)
        from models.tiny_clip import save_tiny_clip
        from utils.hub import quiet_hub

        with staged_directory(args.out) as stage, quiet_hub():  # no "Writing model shards" bar
            save_tiny_clip(stage)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote a tiny RANDOM CLIP (a pipeline demo: it does not see anything) to {args.out}; "
          f"use it with --var clip_model={args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
