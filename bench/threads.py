"""Training speed with 1 thread, a thread per core (torch's default) and `torch_threads=null` (idle cores).

HELM with the offline MiniLM on MiniGrid-KeyCorridorS3R1-v0 (16 envs, the root config), the real
`PPOTrainer`, rollouts shortened to `--rollout` steps; one untimed update, then `--updates` timed
ones, each setting in a fresh process (torch's thread pool is fixed once used). Run it on a quiet
machine and again while other work keeps the cores busy, e.g. `stress --cpu 2` or a sweep:

    python bench/threads.py --label quiet     # appends to bench/results/threads.json
    python bench/threads.py --smoke           # seconds: tiny LM, 2 envs x 4 steps, one update per setting, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(threads: str, rollout: int, updates: int, smoke_lm: str | None = None) -> dict:
    """One setting's steps/s, in this (fresh) process; ``smoke_lm``: tiny sizes with the tiny LM saved there."""
    sys.path.insert(0, str(ROOT))
    import torch

    from bench import smoke
    from trainers.run import build_trainer, idle_cores
    from utils.config import defaults

    cfg = {**defaults(), **json.loads((ROOT / "config.json").read_text())}
    if smoke_lm:
        cfg.update(smoke.TINY_TRAINER, lm=smoke.tiny_lm(Path(smoke_lm)), mem_len=smoke.MEM_LEN)
    cfg.update(save_ckpt=False, n_rollout_steps=rollout, seed=1, device="cpu",
               torch_threads={"1": 1, "per-core": os.cpu_count(), "auto": None}[threads])
    load = os.getloadavg()[0]
    chosen = idle_cores() if threads == "auto" else cfg["torch_threads"]
    trainer = build_trainer(cfg, None)
    trainer.begin()
    rates = []
    for i in range(updates + 1):
        tick = time.perf_counter()
        trainer.collect_rollout()
        trainer.update()
        if i:
            rates.append(rollout * cfg["n_envs"] / (time.perf_counter() - tick))
    trainer.envs.close()
    return {"threads": threads, "torch_threads": torch.get_num_threads(), "chosen": chosen, "load_at_start": load,
            "steps_per_s": sum(rates) / len(rates)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", help="e.g. quiet or busy (required unless --smoke)")
    parser.add_argument("--rollout", type=int, default=32)
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny LM, 2 envs, one update per setting, seconds: checks that this script still runs")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--smoke-lm", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.rollout, args.updates, args.smoke_lm)))
        return
    if args.smoke:
        parser.set_defaults(label="smoke", rollout=4, updates=1)
        args = parser.parse_args(argv)
    elif not args.label:
        parser.error("--label is required")
    with tempfile.TemporaryDirectory(prefix="threads-smoke-") as tmp:
        child = [sys.executable, __file__, "--label", args.label, "--rollout", str(args.rollout),
                 "--updates", str(args.updates)]
        rows = []
        for threads in ("1", "per-core", "auto"):
            # with --smoke each run saves its own tiny LM (it imports transformers anyway; this process need not)
            smoke_lm = ["--smoke-lm", f"{tmp}/lm-{threads}"] if args.smoke else []
            proc = subprocess.run([*child, *smoke_lm, "--one", threads], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"the run with threads={threads} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"{args.label}: {rows[-1]}", flush=True)
    if args.smoke:
        return
    path = ROOT / "bench" / "results" / "threads.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[args.label] = {"cores": os.cpu_count(), "rows": rows}
    path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
