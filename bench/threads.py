"""Training speed with 1 thread, a thread per core (torch's default) and `torch_threads=null` (idle cores).

HELM with the offline MiniLM on MiniGrid-KeyCorridorS3R1-v0 (16 envs, the root config), the real
`PPOTrainer`, rollouts shortened to `--rollout` steps; one untimed update, then `--updates` timed
ones, each setting in a fresh process (torch's thread pool is fixed once used). Run it on a quiet
machine and again while other work keeps the cores busy, e.g. `stress --cpu 2` or a sweep:

    python bench/threads.py --label quiet     # appends to bench/results/threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(threads: str, rollout: int, updates: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    from trainers.run import build_trainer, idle_cores
    from utils.config import defaults

    cfg = {**defaults(), **json.loads((ROOT / "config.json").read_text())}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="e.g. quiet or busy")
    parser.add_argument("--rollout", type=int, default=32)
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.rollout, args.updates)))
        return
    rows = []
    for threads in ("1", "per-core", "auto"):
        out = subprocess.run([sys.executable, __file__, "--label", args.label, "--one", threads,
                              "--rollout", str(args.rollout), "--updates", str(args.updates)],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{args.label}: {rows[-1]}", flush=True)
    path = ROOT / "bench" / "results" / "threads.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[args.label] = {"cores": os.cpu_count(), "rows": rows}
    path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
