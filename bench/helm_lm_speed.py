"""HELM training speed with the papers' Transformer-XL memory vs a Pythia-410m-sized memory, same run.

Both LMs have random weights of the real size (speed does not depend on the weights; no
downloads here): Transformer-XL wt103 (our implementation: 18 layers, 1024 wide, 16 heads, the
full 267,735-token adaptive vocabulary, so the FrozenHopfield searches all of it as in the paper)
and Pythia-410m (GPT-NeoX through transformers: 24 layers, 1024 wide, 50,304 tokens). HELM on
MiniGrid-KeyCorridorS3R1-v0 with the root config (16 envs, mem_len 511, beta 100, 3 epochs x 8
minibatches), the real ``PPOTrainer`` on the CPU with one torch thread. Rollouts are shortened to
``--rollout`` steps per env to keep the run short; one untimed update, then ``--updates`` timed
ones; train steps/s of the fastest (mean in brackets) and the time split.

    python bench/helm_lm_speed.py            # writes bench/results/helm_lm_speed.json
    python bench/helm_lm_speed.py --smoke    # seconds: the tests' tiny TrXL and a tiny GPT-NeoX, writes nothing
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import gpu_check  # noqa: E402


def save_wt103_sized_transfo_xl(directory: Path) -> str:
    """A random Transformer-XL with the wt103 config, saved in the hub checkpoint's file layout."""
    from models.transfo_xl import TransfoXL, TrXLConfig, checkpoint_name

    if (directory / "pytorch_model.bin").exists():
        return str(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = TrXLConfig()  # the defaults are wt103's
    torch.manual_seed(0)
    model = TransfoXL(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm.weight" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    torch.save({checkpoint_name(k): v for k, v in model.state_dict().items()}, directory / "pytorch_model.bin")
    (directory / "config.json").write_text(json.dumps({"model_type": "transfo-xl", **config.to_dict()}))
    return str(directory)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--rollout", type=int, default=32)
    parser.add_argument("--json", default=None, help="default: bench/results/helm_lm_speed.json; none with --smoke")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny LMs, 2 envs, one timed update, seconds: checks that this script still runs")
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(updates=1, rollout=8)
        args = parser.parse_args(argv)
    elif args.json is None:
        args.json = str(ROOT / "bench" / "results" / "helm_lm_speed.json")
    torch.set_num_threads(1)
    gpu_check.DEVICE = "cpu"
    gpu_check.TINY = args.smoke  # tiny LMs and tiny trainer sizes
    # The full-sized models stay in the temp directory between runs (saving them takes minutes).
    keep = contextlib.nullcontext(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix="helm-lm-speed-smoke-") if args.smoke else keep as cache:
        cache = Path(cache)
        lms = {
            "Transformer-XL wt103 (ours)": gpu_check.save_transfo_xl(cache / "helm-bench-trxl-wt103"),
            "Pythia-410m (transformers)": gpu_check.save_pythia_410m_sized(cache / "helm-bench-pythia-410m"),
        }
        return measure(args, lms)


def measure(args, lms: dict[str, str]) -> dict:
    rows = []
    for label, lm in lms.items():
        print(f"HELM with {label} ...", file=sys.stderr, flush=True)
        row = gpu_check.train_speed("HELM", {"lm": lm, "lm_mode": "causal", "mem_len": 511}, args.updates, args.rollout)
        row["lm"] = label
        row["overrides"].pop("lm", None)
        rows.append(row)
    result = {
        "what": "HELM train steps/s on CPU, 1 torch thread, KeyCorridorS3R1, 16 envs, mem_len 511, random-weight LMs",
        "rollout": args.rollout, "updates_timed": args.updates, "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print("| memory LM | train steps/s (mean) | env % | forward % | update % |")
    print("|---|---|---|---|---|")
    for r in rows:
        s = r["split_pct"]
        print(f"| {r['lm']} | {r['train_steps_per_s']:.1f} ({r['mean_train_steps_per_s']:.1f}) | "
              f"{s['env']:.0f} | {s['act']:.0f} | {s['update']:.0f} |")
    return result


if __name__ == "__main__":
    main()
