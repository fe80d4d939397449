"""How much the Transformer-XL memory's output depends on the episode-reset rule (mask vs zero).

The original HELM zeroes an env's mems at an episode end: the first `mem_len` steps of every later
episode still attend to zero positions (through their position term), which dilutes attention.
Ours masks everything before the episode by default (`mem_reset=mask`). This measures the relative
difference ||h_mask - h_zero|| / ||h_zero|| of the memory output at chosen steps of the second
episode of each env, on a wt103-sized Transformer-XL with random weights (the pretrained weights
cannot be downloaded here, so the numbers show the size of the effect on a model of that shape,
not on the pretrained one), mem_len 511, 4 envs, random input embeddings drawn like the LM's
token embeddings (a random convex mix of token embeddings, as the FrozenHopfield produces).

    python bench/reset_modes.py        # writes bench/results/reset_modes.json
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.helm_lm_speed import save_wt103_sized_transfo_xl  # noqa: E402
from models.transfo_xl import TransfoXLMemory, load_transfo_xl  # noqa: E402

STEPS = (1, 2, 8, 32, 128, 256)
FIRST_EPISODE = 100
N_ENVS = 4


def main() -> dict:
    torch.set_num_threads(1)
    model = load_transfo_xl(save_wt103_sized_transfo_xl(Path(tempfile.gettempdir()) / "helm-bench-trxl-wt103"))
    gen = torch.Generator().manual_seed(0)
    memories = {mode: TransfoXLMemory(model, 511, reset=mode) for mode in ("mask", "zero")}
    table = memories["mask"].token_embeddings()
    n_steps = FIRST_EPISODE + max(STEPS)
    ids = torch.randint(0, table.shape[0], (n_steps, N_ENVS, 8), generator=gen)
    weights = torch.softmax(torch.randn(n_steps, N_ENVS, 8, generator=gen), dim=-1)
    inputs = (weights[..., None] * table[ids]).sum(2)  # [T, B, d]
    outs = {}
    for mode, memory in memories.items():
        memory.reset(N_ENVS)
        rows = []
        for t in range(n_steps):
            start = torch.full((N_ENVS,), t == FIRST_EPISODE)
            rows.append(memory.step(inputs[t], start))
        outs[mode] = torch.stack(rows)
    result = {"what": __doc__.splitlines()[0], "first_episode_steps": FIRST_EPISODE, "relative_difference": {}}
    for step in STEPS:
        t = FIRST_EPISODE + step - 1
        diff = (outs["mask"][t] - outs["zero"][t]).norm(dim=-1) / outs["zero"][t].norm(dim=-1)
        result["relative_difference"][f"step {step} of episode 2"] = round(diff.mean().item(), 4)
    # the very first episode: zero mems at the start (the original) vs an empty memory
    diff = (outs["mask"][0] - outs["zero"][0]).norm(dim=-1) / outs["zero"][0].norm(dim=-1)
    result["relative_difference"]["step 1 of episode 1"] = round(diff.mean().item(), 4)
    Path(ROOT / "bench" / "results" / "reset_modes.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
