"""Learning benchmark: several agents x envs x seeds at a fixed step budget, run through main.py.

    python bench/learning.py --budget 50000 --seeds 1 2 --jobs 2
    python bench/learning.py --summarise-only        # tables + plot from existing runs
    python bench/learning.py --smoke                 # seconds: tiny runs in a temp directory

Every run uses the settings of config.json (the HELM paper's default experiment) apart from
env, model, seed and n_steps, so the agents differ only in their architecture. Runs go to
``bench/runs/`` (git-ignored); the summary goes to ``bench/results/learning.{json,md}`` and the
curves to ``bench/results/learning_curves.png``.

``--smoke`` runs HELM (with a tiny GPT-2 memory) and CNN-PPO for 32 steps each on CueRecall-D1-v0,
whose 3-step episodes end within such a run, then the summary and the plot, all in a temporary
directory: it checks that this script, main.py's options and the logged tags still fit together.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import smoke  # noqa: E402
from bench.curves import load_scalars, plot_curves  # noqa: E402

ENVS = ["MiniGrid-MemoryS7-v0", "MiniGrid-KeyCorridorS3R1-v0"]
MODELS = ["HELM", "Impala-PPO", "CNN-PPO"]
SMOKE_DEFAULTS = {"budget": 32, "seeds": [1], "envs": ["CueRecall-D1-v0"], "models": ["HELM", "CNN-PPO"]}


def run_one(runs: Path, env: str, model: str, seed: int, budget: int, extra: list[str]) -> Path:
    run_dir = runs / model / env / f"seed{seed}"
    if (run_dir / "ckpt_last.pt").exists():  # an earlier attempt: done, or continue it
        from utils.checkpoint import load_checkpoint

        if load_checkpoint(run_dir / "ckpt_last.pt")["step"] >= budget:
            return run_dir
        cmd = [sys.executable, str(ROOT / "main.py"), "--resume", str(run_dir), "--var", f"n_steps={budget}",
               "--no-progress"]
    else:
        if run_dir.exists():  # started but never checkpointed: start again
            import shutil

            shutil.rmtree(run_dir)
        cmd = [sys.executable, str(ROOT / "main.py"), "--var", f"env={env}", "--var", f"model={model}",
               "--seed", str(seed), "--var", f"n_steps={budget}", "--run-id", f"seed{seed}",
               "--experiments-dir", str(runs), "--no-progress", *extra]
    env_vars = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    log = runs / f"{model}_{env}_seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        subprocess.run(cmd, check=True, stdout=handle, stderr=subprocess.STDOUT, env=env_vars, cwd=ROOT)
    return run_dir


def summarise(runs: Path, out: Path) -> list[dict]:
    rows = []
    for run_dir in sorted(p for p in runs.glob("*/*/seed*") if p.is_dir()):
        scalars = load_scalars(run_dir)
        if "rollout/ep_rew_mean" not in scalars:
            continue
        steps, returns = scalars["rollout/ep_rew_mean"]
        _, success = scalars["rollout/success_rate"]
        _, fps = scalars["time/fps"]
        rows.append({"model": run_dir.parts[-3], "env": run_dir.parts[-2], "seed": run_dir.name,
                     "steps": int(steps[-1]), "return": float(returns[-1]), "success": float(success[-1]),
                     "fps": float(fps[-1])})
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| env | model | seeds | steps | mean return (last 100 ep.) | success rate | steps/s |",
             "|---|---|---|---|---|---|---|"]
    key = lambda r: (r["env"], r["model"])  # noqa: E731
    for (env, model), group in itertools.groupby(sorted(rows, key=key), key=key):
        group = list(group)
        mean = lambda k: sum(r[k] for r in group) / len(group)  # noqa: E731
        per_seed = ", ".join(f"{r['return']:.3f}" for r in group)
        lines.append(f"| {env} | {model} | {len(group)} | {group[0]['steps']} | {mean('return'):.3f} ({per_seed}) "
                     f"| {mean('success'):.2f} | {mean('fps'):.0f} |")
    (out / "learning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=50_000, help="env steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--envs", nargs="+", default=ENVS)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    parser.add_argument("--runs", default=str(ROOT / "bench" / "runs"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--summarise-only", action="store_true")
    parser.add_argument("--var", action="append", default=[], help="extra --var for every run")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny runs, summary and plot in a temp directory, seconds: checks that this script still runs")
    args = parser.parse_args(argv)
    if args.smoke:
        import tempfile

        parser.set_defaults(**SMOKE_DEFAULTS)
        args = parser.parse_args(argv)
        tmp = tempfile.TemporaryDirectory(prefix="learning-smoke-")
        args.runs, args.out = f"{tmp.name}/runs", f"{tmp.name}/results"
        tiny = {**smoke.TINY_TRAINER, "lm": smoke.tiny_lm(Path(tmp.name) / "lm"), "mem_len": smoke.MEM_LEN,
                "best_min_episodes": 1}
        args.var = [f"{k}={v}" for k, v in tiny.items()] + args.var
    runs = Path(args.runs)
    extra = [x for v in args.var for x in ("--var", v)]
    if not args.summarise_only:
        jobs = list(itertools.product(args.envs, args.models, args.seeds))
        with ThreadPoolExecutor(args.jobs) as pool:
            for run_dir in pool.map(lambda j: run_one(runs, *j, args.budget, extra), jobs):
                print(f"done: {run_dir}", flush=True)
    summarise(runs, Path(args.out))
    plot_curves(runs, Path(args.out) / "learning_curves.png")
    if args.smoke:
        smoke.note(f"plotted {sum(1 for _ in Path(args.out).glob('*.png'))} figure(s)")
        tmp.cleanup()


if __name__ == "__main__":
    main()
