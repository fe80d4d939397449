"""Evaluate a trained agent: ``python eval.py --ckpt-path RUN_DIR_OR_FILE [--n-episodes N] ...``.

Rebuilds the agent from the config saved in the checkpoint, runs episodes, prints mean +- std
return, success rate and episode length, and saves the episodes (observations, actions, rewards,
and whatever per-step trace the agent offers) under ``RUN_DIR/eval/<time>/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt-path", required=True, help="run directory (uses ckpt_best.pt) or checkpoint file")
    parser.add_argument("--n-episodes", type=int, default=10)
    parser.add_argument("--n-envs", type=int, default=None, help="parallel envs (default: min(n_episodes, 8))")
    parser.add_argument("--deterministic", action="store_true", help="take the most likely action")
    parser.add_argument("--random", action="store_true", help="uniformly random actions (a chance baseline)")
    parser.add_argument("--video", action="store_true", help="write a GIF of the first episodes")
    parser.add_argument("--video-episodes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=12345, help="env seed (different from training's)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--out", help="output directory (default: RUN_DIR/eval/<time>)")
    return parser.parse_args(argv)


def run_episodes(agent, envs, n_episodes: int, deterministic: bool, random_actions: bool, device, seed: int):
    """Each env runs its share of the episodes, so short episodes are not over-represented."""
    import torch

    n_envs = envs.num_envs
    targets = np.array([(n_episodes + i) // n_envs for i in range(n_envs)])
    counts = np.zeros(n_envs, dtype=int)
    obs, _ = envs.reset(seed=seed)
    starts = np.ones(n_envs, dtype=bool)
    agent.reset_memory(n_envs)
    agent.eval()
    current = [{"obs": [], "actions": [], "rewards": [], "trace": []} for _ in range(n_envs)]
    episodes = []
    rng = np.random.default_rng(seed)
    while (counts < targets).any():
        with torch.no_grad():
            out = agent.act(torch.as_tensor(obs, device=device), torch.as_tensor(starts, device=device), deterministic)
        actions = out.actions.cpu().numpy()
        if random_actions:
            actions = rng.integers(envs.single_action_space.n, size=n_envs)
        traces = agent.describe_step(out) if hasattr(agent, "describe_step") else [None] * n_envs
        next_obs, rewards, terminated, truncated, _ = envs.step(actions)
        for i in range(n_envs):
            if counts[i] >= targets[i]:
                continue
            ep = current[i]
            ep["obs"].append(obs[i])
            ep["actions"].append(int(actions[i]))
            ep["rewards"].append(float(rewards[i]))
            ep["trace"].append(traces[i])
            if terminated[i] or truncated[i]:
                episodes.append(ep)
                counts[i] += 1
                current[i] = {"obs": [], "actions": [], "rewards": [], "trace": []}
        obs, starts = next_obs, terminated | truncated
    return episodes


def save_episodes(episodes: list[dict], out_dir: Path) -> None:
    arrays = {}
    for n, ep in enumerate(episodes):
        arrays[f"obs_{n}"] = np.stack(ep["obs"])
        arrays[f"actions_{n}"] = np.array(ep["actions"])
        arrays[f"rewards_{n}"] = np.array(ep["rewards"], dtype=np.float32)
    np.savez_compressed(out_dir / "episodes.npz", **arrays)
    if any(t is not None for ep in episodes for t in ep["trace"]):
        trace = [
            {"episode": n, "step": t, "action": a, "reward": r, **(info or {})}
            for n, ep in enumerate(episodes)
            for t, (a, r, info) in enumerate(zip(ep["actions"], ep["rewards"], ep["trace"]))
        ]
        (out_dir / "trace.json").write_text(json.dumps(trace, indent=1) + "\n")


def save_video(episodes: list[dict], path: Path, scale: int = 4) -> None:
    import imageio.v2 as imageio

    frames = [np.kron(frame, np.ones((scale, scale, 1), dtype=np.uint8)) for ep in episodes for frame in ep["obs"]]
    imageio.mimsave(path, frames, duration=0.1, loop=0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from envs import make_env, success
    from main import pick_device
    from models import build_agent
    from utils.checkpoint import load_checkpoint, resolve_checkpoint_path
    from utils.errors import UserError

    try:
        if args.n_episodes < 1:
            raise UserError("--n-episodes must be at least 1")
        ckpt_file = resolve_checkpoint_path(args.ckpt_path, prefer="ckpt_best.pt")
        checkpoint = load_checkpoint(ckpt_file)
        cfg = checkpoint["config"]
        device = pick_device(args.device)
        n_envs = args.n_envs or min(args.n_episodes, 8)
        envs = make_env(cfg["env"], n_envs, "sync")
        agent = build_agent(cfg["model"], envs.single_observation_space.shape, int(envs.single_action_space.n), cfg)
        try:
            agent.load_checkpoint_state(checkpoint["agent"])
        except (ValueError, RuntimeError) as err:
            raise UserError(f"checkpoint {ckpt_file} does not match its agent: {str(err).splitlines()[0]}") from None
        agent.to(device)
        episodes = run_episodes(agent, envs, args.n_episodes, args.deterministic, args.random, device, args.seed)
        envs.close()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    returns = np.array([sum(ep["rewards"]) for ep in episodes])
    lengths = np.array([len(ep["rewards"]) for ep in episodes])
    summary = {
        "checkpoint": str(ckpt_file), "step": checkpoint["step"], "episodes": len(episodes),
        "return_mean": float(returns.mean()), "return_std": float(returns.std()),
        "success_rate": float(np.mean([success(r) for r in returns])),
        "length_mean": float(lengths.mean()), "deterministic": args.deterministic, "random": args.random,
    }
    out_dir = Path(args.out) if args.out else ckpt_file.parent / "eval" / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    save_episodes(episodes, out_dir)
    if args.video:
        save_video(episodes[: args.video_episodes], out_dir / "episodes.gif")
    print(
        f"{cfg['model']} on {cfg['env']} ({len(episodes)} episodes): return {summary['return_mean']:.3f} "
        f"+- {summary['return_std']:.3f}, success {summary['success_rate']:.2%}, length {summary['length_mean']:.1f}"
    )
    print(f"saved to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
