"""Record transformers 4.37's Transformer-XL on a tiny random model, for tests/test_transfo_xl.py.

transformers 5 no longer has Transformer-XL, so this script runs ONLY in a side venv with the
last release that did:

    python3.11 -m venv /tmp/trxl && /tmp/trxl/bin/pip install torch==2.13.0 transformers==4.37.2
    /tmp/trxl/bin/python tests/make_trxl_fixture.py

It writes
* tests/fixtures/trxl_tiny.pt: a small random TransfoXLLMHeadModel with wt103's structure
  (adaptive embeddings with 4 clusters, untied r biases, same_length, a clamp_len smaller than
  the memory so clamping matters), its config and state dict (hub key layout, `crit.*`
  included), and step-by-step outputs of TransfoXLModel(inputs_embeds, mems) for 3 rows:
  - "zero_steps": HELM's original use: mems start as zeros (init_mems), 1- or 2-token steps,
    long enough to overflow the memory several times, rows' mems zeroed at episode starts
    (`mems[l][:, row] = 0` for every layer) as HELM's trainer did;
  - "empty_steps": mems start empty (length 0) and no resets: what our "mask" mode must give
    for an episode that starts at the first token;
  - "embedding_table": word_emb of every id (SHELM's and HELM's token embeddings).
* tests/fixtures/trxl_wt103_layout.json: the key names and shapes of the full wt103
  TransfoXLLMHeadModel(TransfoXLConfig()) state dict (built on the meta device, nothing
  downloaded) and that default config.
"""

from __future__ import annotations

import json
import os
import warnings

import torch
from transformers import TransfoXLConfig, TransfoXLLMHeadModel

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
SEED = 1234
BATCH = 3
MEM_LEN = 6

TINY = dict(
    vocab_size=200,
    cutoffs=[40, 80, 160],
    div_val=2,
    d_model=32,
    d_embed=32,
    n_head=4,
    d_head=8,
    d_inner=64,
    n_layer=3,
    untie_r=True,
    same_length=True,
    clamp_len=4,  # visible distances are 0..MEM_LEN-1 = 0..5, so 5 is clamped to 4
    mem_len=MEM_LEN,
    dropout=0.0,
    dropatt=0.0,
)


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-trivial values everywhere (the default init zeroes biases and r biases)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1 or name.endswith(("r_w_bias", "r_r_bias")):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)


def schedule(n_steps: int, gen: torch.Generator, with_resets: bool) -> list[tuple[int, torch.Tensor]]:
    """(tokens this step, rows starting an episode) per step."""
    steps = []
    for s in range(n_steps):
        k = 2 if s % 5 in (2, 3) else 1
        if s == 0:
            reset = torch.ones(BATCH, dtype=torch.bool)
        elif with_resets:
            reset = torch.zeros(BATCH, dtype=torch.bool)
            # row 1 restarts now and then; row 2 once; row 0 never (one long episode)
            reset[1] = s in (9, 23, 26)
            reset[2] = s == 17
        else:
            reset = torch.zeros(BATCH, dtype=torch.bool)
        steps.append((k, reset))
    return steps


@torch.no_grad()
def record(transformer, n_steps: int, gen: torch.Generator, empty_start: bool) -> list[dict]:
    cfg = transformer.config
    if empty_start:
        mems = [torch.zeros(0, BATCH, cfg.d_model) for _ in range(cfg.n_layer)]
    else:
        mems = None  # HF's init_mems: mem_len zero positions
    out = []
    for k, reset in schedule(n_steps, gen, with_resets=not empty_start):
        ids = torch.randint(0, cfg.vocab_size, (BATCH, k), generator=gen)
        embeds = transformer.word_emb(ids)
        if mems is not None and not empty_start and reset.any():
            for m in mems:
                m[:, reset] = 0  # the original HELM's episode reset
        result = transformer(inputs_embeds=embeds, mems=mems)
        mems = result.mems
        out.append({"ids": ids, "embeds": embeds.clone(), "reset": reset, "output": result.last_hidden_state.clone()})
    return out


def main() -> None:
    warnings.simplefilter("ignore")
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    config = TransfoXLConfig(**TINY)
    model = TransfoXLLMHeadModel(config)
    randomize(model, gen)
    model.eval()
    transformer = model.transformer
    fixture = {
        "config": json.loads(config.to_json_string()),
        "mem_len": MEM_LEN,
        "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
        "zero_steps": record(transformer, 40, gen, empty_start=False),
        "empty_steps": record(transformer, 20, gen, empty_start=True),
        "embedding_table": transformer.word_emb(torch.arange(config.vocab_size)).detach().clone(),
    }
    os.makedirs(FIXTURES, exist_ok=True)
    path = os.path.join(FIXTURES, "trxl_tiny.pt")
    torch.save(fixture, path)
    print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB)")

    with torch.device("meta"):
        big = TransfoXLLMHeadModel(TransfoXLConfig())
    layout = {
        "config": json.loads(big.config.to_json_string()),
        "state_dict": {k: list(v.shape) for k, v in big.state_dict().items()},
    }
    path = os.path.join(FIXTURES, "trxl_wt103_layout.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(layout, f, indent=1)
        f.write("\n")
    print(f"wrote {path} ({len(layout['state_dict'])} tensors)")


if __name__ == "__main__":
    main()
