"""HELM with an absolute-position LM on episodes that outlive its position table.

MiniLM (the offline default) has 512 positions. With ``mem_len`` 511, an episode longer than 512
steps needs fresh positions: the memory re-encodes its window. Re-encoding the whole window gave
every second step a full forward of 511 tokens; the memory now re-encodes a window a block
shorter (``LMMemory.rebuild_window``), so one re-encode serves ``mem_len // 4`` steps.

This measures HELM's training steps/s (config.json's settings, 16 envs x 128 steps, 3 epochs x 8
minibatches, one torch thread, the real ``PPOTrainer``) over one whole episode lifetime of 16
synchronised envs, on:

* ``MiniGrid-KeyCorridorS3R1-v0`` (episodes up to 270 steps: never re-encoded), the reference;
* ``MiniGrid-MemoryS13-v0`` (up to 845 steps; an untrained policy plays them to the limit) with
  today's re-encoding, and with the whole window re-encoded (the previous behaviour),

interleaved rollout by rollout so that the machine's load falls on all three alike.

    python bench/long_episodes.py                 # about 15 minutes on 2 CPU cores
    python bench/long_episodes.py --smoke         # a tiny GPT-2 (64 positions), seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import smoke  # noqa: E402

LONG_ENV, SHORT_ENV = "MiniGrid-MemoryS13-v0", "MiniGrid-KeyCorridorS3R1-v0"


class Row:
    """One HELM trainer on one env, advanced a rollout (and its update) at a time."""

    def __init__(self, label: str, env: str, overrides: dict, whole_window: bool = False) -> None:
        from trainers.run import build_trainer
        from utils.config import resolve

        cfg = resolve(ROOT / "config.json", [], warn=False)
        cfg.update(env=env, seed=1, torch_threads=1, save_ckpt=False, n_steps=10**9, **overrides)
        self.label, self.env, self.whole_window = label, env, whole_window
        self.trainer = build_trainer(cfg, None)
        self.trainer.begin()
        self.steps, self.seconds, self.rebuilds = 0, 0.0, 0

    def run_rollout(self) -> None:
        from models.lm_memory import LMMemory

        window = LMMemory.rebuild_window
        if self.whole_window:  # the previous behaviour: every rebuild re-encodes all of mem_len
            LMMemory.rebuild_window = property(lambda self: self.mem_len)
        try:
            tick, before = time.perf_counter(), self.trainer.step
            self.trainer.collect_rollout()
            self.trainer.update()
            self.seconds += time.perf_counter() - tick
            self.steps += self.trainer.step - before
        finally:
            LMMemory.rebuild_window = window
        self.rebuilds = self.trainer.memory_state.rebuilds

    def result(self) -> dict:
        return {"row": self.label, "env": self.env, "env_steps": self.steps, "seconds": self.seconds,
                "steps_per_s": self.steps / self.seconds, "rebuilds": self.rebuilds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models, a few rollouts (checks that it runs)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory()
    overrides: dict = {}
    if args.smoke:
        smoke.note("a tiny GPT-2 (64 positions), mem_len 60, 2 envs x 32 steps: the numbers mean nothing")
        overrides = {"lm": smoke.tiny_lm(Path(tmp.name) / "lm"), "mem_len": 60, "n_envs": 2, "n_rollout_steps": 32,
                     "n_batches": 2, "n_epochs": 1}
    rows = [Row(f"{SHORT_ENV} (never re-encoded)", SHORT_ENV, overrides),
            Row(f"{LONG_ENV}, re-encode mem_len // 4 short", LONG_ENV, overrides),
            Row(f"{LONG_ENV}, re-encode the whole window (before)", LONG_ENV, overrides, whole_window=True)]
    lifetime = 845 if not args.smoke else 128
    rollouts = -(-lifetime // rows[0].trainer.cfg["n_rollout_steps"])  # one episode lifetime of every env
    for n in range(rollouts):
        for row in rows[n % 3:] + rows[:n % 3]:
            row.run_rollout()
        print(f"rollout {n + 1}/{rollouts}: " + ", ".join(f"{r.steps / r.seconds:.0f}" for r in rows), file=sys.stderr)
    results = [row.result() for row in rows]
    reference = results[0]["steps_per_s"]
    print("| env | memory re-encoding | train steps/s | % of KeyCorridor | re-encodes |\n|---|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['env']} | {r['row'].split(', ')[-1] if ', ' in r['row'] else 'never'} | {r['steps_per_s']:.0f} "
              f"| {100 * r['steps_per_s'] / reference:.0f}% | {r['rebuilds']} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": results, "smoke": args.smoke}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
