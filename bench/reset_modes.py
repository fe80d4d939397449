"""How much the Transformer-XL memory's output depends on the episode-reset rule (mask vs zero).

The original HELM zeroes an env's mems at an episode end: the first `mem_len` steps of every later
episode still attend to zero positions (through their position term), which dilutes attention.
Ours masks everything before the episode by default (`mem_reset=mask`). This measures the relative
difference ||h_mask - h_zero|| / ||h_zero|| of the memory output at chosen steps of the second
episode of each env, on a wt103-sized Transformer-XL with random weights (the pretrained weights
cannot be downloaded here, so the numbers show the size of the effect on a model of that shape,
not on the pretrained one), mem_len 511, 4 envs, random input embeddings drawn like the LM's
token embeddings (a random convex mix of token embeddings, as the FrozenHopfield produces).

    python bench/reset_modes.py          # writes bench/results/reset_modes.json
    python bench/reset_modes.py --smoke  # a second: the tests' tiny Transformer-XL, mem_len 16, writes nothing
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import smoke  # noqa: E402
from bench.helm_lm_speed import save_wt103_sized_transfo_xl  # noqa: E402
from models.transfo_xl import TransfoXLMemory, load_transfo_xl  # noqa: E402

STEPS = (1, 2, 8, 32, 128, 256)
FIRST_EPISODE = 100
N_ENVS = 4


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="default: bench/results/reset_modes.json; none with --smoke")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny Transformer-XL, short episodes, a second: checks that this script still runs")
    args = parser.parse_args(argv)
    if args.json is None and not args.smoke:
        args.json = ROOT / "bench" / "results" / "reset_modes.json"
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="reset-modes-smoke-") if args.smoke else contextlib.nullcontext() as tmp:
        if args.smoke:
            model = load_transfo_xl(smoke.tiny_transfo_xl(Path(tmp) / "trxl"))
            result = compare(model, mem_len=smoke.MEM_LEN, first_episode=10, steps=(1, 2, 8))
        else:
            model = load_transfo_xl(save_wt103_sized_transfo_xl(Path(tempfile.gettempdir()) / "helm-bench-trxl-wt103"))
            result = compare(model)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


def compare(model, mem_len: int = 511, first_episode: int = FIRST_EPISODE, steps: tuple[int, ...] = STEPS) -> dict:
    """Relative output differences of the mask and zero reset rules at ``steps`` of episode 2."""
    gen = torch.Generator().manual_seed(0)
    memories = {mode: TransfoXLMemory(model, mem_len, reset=mode) for mode in ("mask", "zero")}
    table = model.word_emb.cached_table()
    n_steps = first_episode + max(steps)
    ids = torch.randint(0, table.shape[0], (n_steps, N_ENVS, 8), generator=gen)
    weights = torch.softmax(torch.randn(n_steps, N_ENVS, 8, generator=gen), dim=-1)
    inputs = (weights[..., None] * table[ids]).sum(2)  # [T, B, d]
    outs = {}
    for mode, memory in memories.items():
        state = memory.initial_state(N_ENVS)
        rows = []
        for t in range(n_steps):
            start = torch.full((N_ENVS,), t == first_episode)
            out, state = memory.step(inputs[t], state, start)
            rows.append(out)
        outs[mode] = torch.stack(rows)
    result = {"what": __doc__.splitlines()[0], "first_episode_steps": first_episode, "relative_difference": {}}
    for step in steps:
        t = first_episode + step - 1
        diff = (outs["mask"][t] - outs["zero"][t]).norm(dim=-1) / outs["zero"][t].norm(dim=-1)
        result["relative_difference"][f"step {step} of episode 2"] = round(diff.mean().item(), 4)
    # the very first episode: zero mems at the start (the original) vs an empty memory
    diff = (outs["mask"][0] - outs["zero"][0]).norm(dim=-1) / outs["zero"][0].norm(dim=-1)
    result["relative_difference"]["step 1 of episode 1"] = round(diff.mean().item(), 4)
    return result


if __name__ == "__main__":
    main()
