"""Evaluate a trained agent: ``python eval.py --ckpt-path RUN_DIR_OR_FILE [--n-episodes N] ...``.

Rebuilds the agent from the config saved in the checkpoint, runs episodes, prints mean +- std
return, success rate and episode length, and saves the episodes (observations, actions, rewards,
and whatever per-step trace the agent offers) under ``RUN_DIR/eval/<time>/``.

Agents with an LM memory (HELM, HELMv2, SHELM) describe each step by the words (tokens) they fed
to their memory: ``trace.json`` / ``trace.csv`` hold one row per env step (episode, step, action,
reward, words), and ``--video`` captions every frame with that step's words.
"""

from __future__ import annotations

import argparse
import csv
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
    parser.add_argument("--trace-format", default="json", choices=("json", "csv"),
                        help="file format of the per-step trace (trace.json or trace.csv)")
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


def trace_rows(episodes: list[dict]) -> list[dict]:
    """One row per env step: episode, step, action, reward and the agent's description of the step."""
    return [
        {"episode": n, "step": t, "action": a, "reward": r, **(info or {})}
        for n, ep in enumerate(episodes)
        for t, (a, r, info) in enumerate(zip(ep["actions"], ep["rewards"], ep["trace"]))
    ]


def _cell(value) -> str:
    """CSV cell: lists (e.g. several words per step) are joined by spaces."""
    return " ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def save_episodes(episodes: list[dict], out_dir: Path, trace_format: str = "json") -> None:
    arrays = {}
    for n, ep in enumerate(episodes):
        arrays[f"obs_{n}"] = np.stack(ep["obs"])
        arrays[f"actions_{n}"] = np.array(ep["actions"])
        arrays[f"rewards_{n}"] = np.array(ep["rewards"], dtype=np.float32)
    np.savez_compressed(out_dir / "episodes.npz", **arrays)
    if not any(t is not None for ep in episodes for t in ep["trace"]):
        return
    rows = trace_rows(episodes)
    if trace_format == "json":
        (out_dir / "trace.json").write_text(json.dumps(rows, indent=1) + "\n")
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(out_dir / "trace.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)


def caption(step: int, action: int, reward: float, info: dict | None) -> str:
    words = (info or {}).get("words")
    text = f"t={step} a={action} r={reward:g}"
    return f"{text}: {_cell(words)}" if words is not None else text


def captioned(frame: np.ndarray, text: str, width_chars: int, lines: int) -> np.ndarray:
    """The frame with ``lines`` lines of text drawn on a black band under it (PIL's default font)."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    line_h = 12
    image = Image.new("RGB", (frame.shape[1], frame.shape[0] + lines * line_h + 4))
    image.paste(Image.fromarray(frame), (0, 0))
    wrapped = textwrap.wrap(text, width_chars)[:lines]
    ImageDraw.Draw(image).multiline_text((2, frame.shape[0] + 2), "\n".join(wrapped), fill=(255, 255, 255),
                                         font=font, spacing=2)
    return np.asarray(image)


def save_video(episodes: list[dict], path: Path, scale: int = 4, caption_lines: int = 3) -> None:
    """A GIF of the episodes' frames, upscaled; frames get a caption of the step's words if the agent gave any."""
    import imageio.v2 as imageio

    with_text = any(t is not None for ep in episodes for t in ep["trace"])
    frames = []
    for ep in episodes:
        for t, (frame, a, r, info) in enumerate(zip(ep["obs"], ep["actions"], ep["rewards"], ep["trace"])):
            big = np.kron(frame, np.ones((scale, scale, 1), dtype=np.uint8))
            if with_text:
                big = captioned(big, caption(t, a, r, info), width_chars=max(big.shape[1] // 6, 8), lines=caption_lines)
            frames.append(big)
    imageio.mimsave(path, frames, duration=0.1, loop=0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from envs import make_env, success
    from trainers.run import pick_device
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
        "success_rate": float(np.mean([success(ep["rewards"][-1]) for ep in episodes])),
        "length_mean": float(lengths.mean()), "deterministic": args.deterministic, "random": args.random,
    }
    out_dir = Path(args.out) if args.out else ckpt_file.parent / "eval" / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    save_episodes(episodes, out_dir, args.trace_format)
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
