"""One env step of the Transformer-XL memory: transformers 4.37's TransfoXLModel vs our TransfoXLMemory.

Runs ONLY in a side venv with the last transformers that has Transformer-XL:

    python3.11 -m venv /tmp/trxl && /tmp/trxl/bin/pip install torch==2.13.0 transformers==4.37.2
    /tmp/trxl/bin/python bench/trxl.py            # writes bench/results/trxl.json

Setting (HELM's): a wt103-sized model with random weights (TransfoXLConfig(): 18 layers,
d_model 1024, 16 heads x 64, d_inner 4096, same_length, clamp_len 1000), mem_len 511, 16 envs,
one token (an input embedding) per env step, torch on 1 thread, CPU, float32. The vocabulary is
cut to 20,000 ids (cutoffs 2,000 / 4,000 / 15,000, div_val 4) to save memory: a step only looks
up nothing (inputs are embeddings) and the vocabulary size does not change its cost.

Both start from zero mems (HF's init_mems) and are warmed up to a full memory with the same 511
random tokens, fed in chunks (with same_length and a full memory a k-token call computes exactly
what k one-token calls compute). Our memory runs with reset="zero", HELM's original semantics, so
the outputs must agree: the script checks every timed step's max |difference| <= 1e-4.

* HF: out = model(inputs_embeds=x, mems=mems); mems = out.mems. Each step re-projects keys and
  values of all 511 remembered positions in every layer.
* ours: memory.step(x, episode_start=False): the new token's projections plus attention over the
  cached keys/values.

The two are timed alternately, step by step; ms per env step = the time of one batched step / 16
(median over the timed steps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from models.transfo_xl import TransfoXLMemory, TrXLConfig, build_from_state_dict  # noqa: E402

N_TOKEN = 20_000
CUTOFFS = [2_000, 4_000, 15_000]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed one-token steps of each")
    parser.add_argument("--envs", type=int, default=16)
    parser.add_argument("--mem-len", type=int, default=511)
    parser.add_argument("--warmup-chunk", type=int, default=64, help="tokens per warm-up call")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "trxl.json"))
    args = parser.parse_args(argv)

    warnings.simplefilter("ignore")
    from transformers import TransfoXLConfig, TransfoXLModel, __version__ as hf_version

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    hf_config = TransfoXLConfig(vocab_size=N_TOKEN, cutoffs=CUTOFFS, mem_len=args.mem_len)
    hf = TransfoXLModel(hf_config).eval().requires_grad_(False)
    # HF's init leaves layer-norm biases at zero and r biases tiny; make every term count.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(("r_w_bias", "r_r_bias")) or (p.dim() == 1 and "layer_norm" in name):
                p.add_(0.1 * torch.randn_like(p))
    # Ours shares HF's tensors (a TransfoXLModel state dict loads like the hub's TransfoXLLMHeadModel one).
    ours_model = build_from_state_dict(TrXLConfig.from_dict(hf_config.to_dict()), hf.state_dict(), "HF model")
    memory = TransfoXLMemory(ours_model, args.mem_len, reset="zero")

    B, d = args.envs, hf_config.d_model
    gen = torch.Generator().manual_seed(args.seed)
    no_reset = torch.zeros(B, dtype=torch.bool)

    load_before = os.getloadavg()

    # -- warm-up to a full memory --------------------------------------------------------------
    began = time.perf_counter()
    memory.reset(B)
    mems = None
    with torch.no_grad():
        fed = 0
        while fed < args.mem_len:
            k = min(args.warmup_chunk, args.mem_len - fed)
            x = torch.randn(B, k, d, generator=gen)
            out = hf(inputs_embeds=x, mems=mems)
            mems = out.mems
            ours = memory.step(x, torch.full((B,), fed == 0))
            diff = (ours - out.last_hidden_state[:, -1]).abs().max().item()
            assert diff <= 1e-4, f"warm-up outputs differ by {diff:.2e}"
            fed += k
    print(f"warmed up both to a full memory ({args.mem_len} tokens) in {time.perf_counter() - began:.0f} s", flush=True)

    # -- timed steps, alternating ---------------------------------------------------------------
    hf_times, our_times, max_diff = [], [], 0.0
    with torch.no_grad():
        for n in range(args.steps):
            x = torch.randn(B, d, generator=gen)
            t0 = time.perf_counter()
            out = hf(inputs_embeds=x[:, None], mems=mems)
            t1 = time.perf_counter()
            ours = memory.step(x, no_reset)
            t2 = time.perf_counter()
            mems = out.mems
            hf_times.append(t1 - t0)
            our_times.append(t2 - t1)
            max_diff = max(max_diff, (ours - out.last_hidden_state[:, -1]).abs().max().item())
            print(f"step {n + 1}/{args.steps}: HF {1e3 * (t1 - t0):.0f} ms, ours {1e3 * (t2 - t1):.1f} ms", flush=True)
    assert max_diff <= 1e-4, f"outputs differ by {max_diff:.2e}"

    hf_ms = 1e3 * statistics.median(hf_times) / B
    our_ms = 1e3 * statistics.median(our_times) / B
    result = {
        "what": "one env step of the Transformer-XL memory (wt103 size, random weights), ms per env step",
        "config": {
            "n_layer": hf_config.n_layer, "d_model": d, "n_head": hf_config.n_head, "d_head": hf_config.d_head,
            "d_inner": hf_config.d_inner, "mem_len": args.mem_len, "clamp_len": hf_config.clamp_len,
            "same_length": hf_config.same_length, "vocab_size": N_TOKEN, "envs": B, "tokens_per_step": 1,
            "dtype": "float32", "device": "cpu", "torch_threads": args.threads, "timed_steps": args.steps,
        },
        "hf_transformers_4_37_ms_per_env_step": round(hf_ms, 3),
        "ours_ms_per_env_step": round(our_ms, 3),
        "speedup": round(hf_ms / our_ms, 1),
        "max_abs_output_diff": max_diff,
        "hf_ms_per_batched_step_median": round(1e3 * statistics.median(hf_times), 1),
        "ours_ms_per_batched_step_median": round(1e3 * statistics.median(our_times), 2),
        "versions": {"torch": torch.__version__, "transformers": hf_version, "python": platform.python_version()},
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            # other processes slow both alike (the steps alternate), but inflate the absolute times
            "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
    }
    print(
        f"HF 4.37: {hf_ms:.2f} ms per env step; ours: {our_ms:.3f} ms per env step; "
        f"speed-up {hf_ms / our_ms:.0f}x; max |diff| {max_diff:.1e}"
    )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
