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

``--smoke`` (seconds, writes nothing) runs the same steps on a 2-layer, 32-wide model with mem_len
16 and 4 envs. In a venv whose transformers has no Transformer-XL (the project's), it skips the HF
side with a note and runs ours alone, so the script's use of our memory is still checked.
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

from models.transfo_xl import TransfoXL, TransfoXLMemory, TrXLConfig, build_from_state_dict  # noqa: E402

N_TOKEN = 20_000
CUTOFFS = [2_000, 4_000, 15_000]
SMOKE_DEFAULTS = {"steps": 3, "envs": 4, "mem_len": 16, "warmup_chunk": 8, "json": None}
SMOKE_SIZES = {"vocab_size": 100, "cutoffs": [50], "n_layer": 2, "d_model": 32, "d_embed": 32, "n_head": 4,
               "d_head": 8, "d_inner": 64}


def hf_transfo_xl():
    """transformers' (TransfoXLConfig, TransfoXLModel), or None where this transformers has none (5.x)."""
    try:
        from transformers import TransfoXLConfig, TransfoXLModel
    except ImportError:
        return None
    return TransfoXLConfig, TransfoXLModel


def random_transfo_xl(config: TrXLConfig) -> TransfoXL:
    """Our model with random weights, for a run without HF's model to copy them from."""
    model = TransfoXL(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm.weight" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.1)
    return model.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed one-token steps of each")
    parser.add_argument("--envs", type=int, default=16)
    parser.add_argument("--mem-len", type=int, default=511)
    parser.add_argument("--warmup-chunk", type=int, default=64, help="tokens per warm-up call")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "trxl.json"))
    parser.add_argument("--smoke", action="store_true", help="a tiny model, seconds: checks that this script still runs")
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**SMOKE_DEFAULTS)
        args = parser.parse_args(argv)

    warnings.simplefilter("ignore")
    from transformers import __version__ as hf_version

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    sizes = SMOKE_SIZES if args.smoke else {"vocab_size": N_TOKEN, "cutoffs": CUTOFFS}
    hf, hf_classes = None, hf_transfo_xl()
    if hf_classes is not None:
        TransfoXLConfig, TransfoXLModel = hf_classes
        hf_config = TransfoXLConfig(mem_len=args.mem_len, **sizes)
        hf = TransfoXLModel(hf_config).eval().requires_grad_(False)
        # HF's init leaves layer-norm biases at zero and r biases tiny; make every term count.
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if name.endswith(("r_w_bias", "r_r_bias")) or (p.dim() == 1 and "layer_norm" in name):
                    p.add_(0.1 * torch.randn_like(p))
        # Ours shares HF's tensors (a TransfoXLModel state dict loads like the hub's TransfoXLLMHeadModel one).
        config = TrXLConfig.from_dict(hf_config.to_dict())
        ours_model = build_from_state_dict(config, hf.state_dict(), "HF model")
    elif args.smoke:
        from bench import smoke

        smoke.note(f"skipped the HF TransfoXLModel side (transformers {hf_version} has none; see bench/README.md)")
        config = TrXLConfig.from_dict({**SMOKE_SIZES, "model_type": "transfo-xl"})
        ours_model = random_transfo_xl(config)
    else:
        raise SystemExit(f"transformers {hf_version} has no TransfoXLModel: run this in a side venv with "
                         "transformers 4.37.2 (see the docstring), or with --smoke")
    memory = TransfoXLMemory(ours_model, args.mem_len, reset="zero")

    B, d = args.envs, config.d_model
    gen = torch.Generator().manual_seed(args.seed)
    no_reset = torch.zeros(B, dtype=torch.bool)

    load_before = os.getloadavg()

    # -- warm-up to a full memory --------------------------------------------------------------
    began = time.perf_counter()
    state = memory.initial_state(B)
    mems = None
    with torch.no_grad():
        fed = 0
        while fed < args.mem_len:
            k = min(args.warmup_chunk, args.mem_len - fed)
            x = torch.randn(B, k, d, generator=gen)
            ours, state = memory.step(x, state, torch.full((B,), fed == 0))
            if hf is not None:
                out = hf(inputs_embeds=x, mems=mems)
                mems = out.mems
                diff = (ours - out.last_hidden_state[:, -1]).abs().max().item()
                assert diff <= 1e-4, f"warm-up outputs differ by {diff:.2e}"
            fed += k
    print(f"warmed up {'both' if hf is not None else 'ours'} to a full memory ({args.mem_len} tokens) in {time.perf_counter() - began:.0f} s", flush=True)

    # -- timed steps, alternating ---------------------------------------------------------------
    hf_times, our_times, max_diff = [], [], 0.0
    with torch.no_grad():
        for n in range(args.steps):
            x = torch.randn(B, d, generator=gen)
            t0 = time.perf_counter()
            if hf is not None:
                out = hf(inputs_embeds=x[:, None], mems=mems)
            t1 = time.perf_counter()
            ours, state = memory.step(x, state, no_reset)
            t2 = time.perf_counter()
            our_times.append(t2 - t1)
            if hf is not None:
                mems = out.mems
                hf_times.append(t1 - t0)
                max_diff = max(max_diff, (ours - out.last_hidden_state[:, -1]).abs().max().item())
            hf_part = f"HF {1e3 * (t1 - t0):.0f} ms, " if hf is not None else ""
            print(f"step {n + 1}/{args.steps}: {hf_part}ours {1e3 * (t2 - t1):.1f} ms", flush=True)
    assert max_diff <= 1e-4, f"outputs differ by {max_diff:.2e}"

    our_ms = 1e3 * statistics.median(our_times) / B
    if hf is None:
        print(f"ours: {our_ms:.3f} ms per env step (no HF comparison)")
        return {"ours_ms_per_env_step": our_ms}
    hf_ms = 1e3 * statistics.median(hf_times) / B
    result = {
        "what": "one env step of the Transformer-XL memory (wt103 size, random weights), ms per env step",
        "config": {
            "n_layer": hf_config.n_layer, "d_model": d, "n_head": hf_config.n_head, "d_head": hf_config.d_head,
            "d_inner": hf_config.d_inner, "mem_len": args.mem_len, "clamp_len": hf_config.clamp_len,
            "same_length": hf_config.same_length, "vocab_size": sizes["vocab_size"], "envs": B, "tokens_per_step": 1,
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
