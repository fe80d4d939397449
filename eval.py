"""Evaluate a trained agent: ``python eval.py --ckpt-path RUN_DIR_OR_FILE [--n-episodes N] ...``.

Rebuilds the agent from the config saved in the checkpoint, runs episodes, prints mean +- std
return, success rate and episode length, and saves the episodes (observations, actions, rewards,
and whatever per-step trace the agent offers) under ``RUN_DIR/eval/<time>/``.

Agents with an LM memory (HELM, HELMv2, SHELM) describe each step by the words (tokens) they fed
to their memory: ``trace.json`` / ``trace.csv`` hold one row per env step (episode, step, action,
reward, words), and ``--video`` captions every frame with that step's words.

Bad arguments and checkpoints are one-line errors (exit code 2) found before any long work, and
the results appear only once all of them are written: a failed or interrupted run leaves nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from utils.cli import OneLineArgumentParser, non_negative_int, positive_int  # noqa: E402  (standard library only)


# One env per episode up to this many: a batched step costs far less than that many single ones
# (the LM's weights are read once per step), and no env waits on another's share.
MAX_DEFAULT_ENVS = 32


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments, every count checked: a usage mistake is one line on stderr and exit code 2."""
    parser = OneLineArgumentParser(description=__doc__)
    parser.add_argument("--ckpt-path", required=True, help="run directory (uses ckpt_best.pt) or checkpoint file")
    parser.add_argument("--n-episodes", type=positive_int, default=10)
    parser.add_argument("--n-envs", type=positive_int, default=None,
                        help=f"parallel envs (default: min(n_episodes, {MAX_DEFAULT_ENVS}); each runs an equal share of the episodes)")
    parser.add_argument("--vec-env", choices=("sync", "async", "envpool"), default=None,
                        help="how the envs are stepped (default: as in training; envpool: MiniGrid ids only)")
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument("--deterministic", action="store_true", help="take the most likely action")
    actions.add_argument("--random", action="store_true", help="uniformly random actions (a chance baseline)")
    parser.add_argument("--video", action="store_true", help="write a GIF of the first episodes")
    parser.add_argument("--video-episodes", type=positive_int, default=None,
                        help="episodes in the GIF (with --video; default: 3, at most --n-episodes)")
    parser.add_argument("--trace-format", default="json", choices=("json", "csv"),
                        help="file format of the per-step trace (trace.json or trace.csv)")
    parser.add_argument("--seed", type=non_negative_int, default=12345, help="env seed (different from training's)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--out", help="output directory, new or empty (default: RUN_DIR/eval/<time>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.video_episodes is None:
        args.video_episodes = min(3, args.n_episodes)
    elif not args.video:
        parser.error("--video-episodes needs --video")
    elif args.video_episodes > args.n_episodes:
        parser.error(f"--video-episodes {args.video_episodes} exceeds --n-episodes {args.n_episodes}")
    return args


def run_episodes(agent, envs, n_episodes: int, deterministic: bool, random_actions: bool, device, seed: int) -> Iterator[dict]:
    """Yield each episode as it ends; each env runs its share, so short episodes are not over-represented."""
    import torch

    n_envs = envs.num_envs
    targets = np.array([(n_episodes + i) // n_envs for i in range(n_envs)])
    counts = np.zeros(n_envs, dtype=int)
    obs, _ = envs.reset(seed=seed)
    starts = np.ones(n_envs, dtype=bool)
    state = agent.initial_state(n_envs)
    agent.eval()
    current = [{"obs": [], "actions": [], "rewards": [], "trace": []} for _ in range(n_envs)]
    rng = np.random.default_rng(seed)
    while (counts < targets).any():
        with torch.no_grad():
            out, state = agent.act(torch.as_tensor(obs, device=device), state, torch.as_tensor(starts, device=device),
                                   deterministic)
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
                yield ep
                counts[i] += 1
                current[i] = {"obs": [], "actions": [], "rewards": [], "trace": []}
        obs, starts = next_obs, terminated | truncated


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
    """Exit code: 0 done, 2 a bad argument or checkpoint (one line on stderr), 130 interrupted."""
    try:
        args = parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed on one line
        return int(done.code or 0)
    from utils.errors import UserError

    try:
        return evaluate(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing saved", file=sys.stderr)
        return 130


def evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from envs import make_env, success
    from models import build_agent
    from trainers.run import pick_device
    from utils.checkpoint import load_checkpoint, resolve_checkpoint_path
    from utils.errors import UserError
    from utils.outputs import check_new_output_dir, staged_directory

    if args.out:  # before anything slow
        check_new_output_dir(Path(args.out))
    ckpt_file = resolve_checkpoint_path(args.ckpt_path, prefer="ckpt_best.pt")
    out_dir = Path(args.out) if args.out else ckpt_file.parent / "eval" / time.strftime("%Y%m%d-%H%M%S")
    if not args.out:
        check_new_output_dir(out_dir)
    checkpoint = load_checkpoint(ckpt_file)
    cfg = CheckpointConfig(checkpoint["config"], ckpt_file)
    which = "the best policy" if ckpt_file.name == "ckpt_best.pt" else "the last state"
    if ckpt_file.name == "ckpt_best.pt" and np.isfinite(checkpoint.get("best_mean_return", np.nan)):
        which += f", mean training return {checkpoint['best_mean_return']:.3f}"
    device = pick_device(args.device, fix="--device cpu or auto")
    print(f"loading {ckpt_file} ({which}, step {checkpoint['step']})", file=sys.stderr)
    n_envs = args.n_envs or min(args.n_episodes, MAX_DEFAULT_ENVS)
    envs = make_env(cfg["env"], n_envs, args.vec_env or cfg.get("vec_env", "sync"))
    try:
        agent = build_agent(cfg["model"], envs.single_observation_space.shape, int(envs.single_action_space.n), cfg)
        try:
            agent.load_checkpoint_state(checkpoint["agent"])
        except (ValueError, RuntimeError) as err:
            raise UserError(f"checkpoint {ckpt_file} does not match its agent: {str(err).splitlines()[0]}") from None
    except BaseException:
        envs.close()
        raise
    agent.to(device)

    policy = "random actions" if args.random else "deterministic policy" if args.deterministic else "sampled actions"
    episodes: list[dict] = []
    bar = tqdm(total=args.n_episodes, desc=f"eval ({policy})", unit="episode", file=sys.stderr,
               disable=args.no_progress, leave=False, dynamic_ncols=True)
    interrupted = False
    try:
        for episode in run_episodes(agent, envs, args.n_episodes, args.deterministic, args.random, device, args.seed):
            episodes.append(episode)
            bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        envs.close()

    header = f"{cfg['model']} on {cfg['env']} ({policy}"
    if not episodes:
        print(f"{header}): interrupted before any episode finished; nothing to report, nothing saved", file=sys.stderr)
        return 130
    returns = np.array([sum(ep["rewards"]) for ep in episodes])
    lengths = np.array([len(ep["rewards"]) for ep in episodes])
    summary = {
        "checkpoint": str(ckpt_file), "step": checkpoint["step"], "episodes": len(episodes),
        "return_mean": float(returns.mean()), "return_std": float(returns.std()),
        "success_rate": float(np.mean([success(ep["rewards"][-1]) for ep in episodes])),
        "length_mean": float(lengths.mean()), "deterministic": args.deterministic, "random": args.random,
    }
    done = f"{len(episodes)} episodes" if not interrupted else f"interrupted after {len(episodes)} of {args.n_episodes} episodes"
    print(
        f"{header}, {done}): return {summary['return_mean']:.3f} +- {summary['return_std']:.3f}, "
        f"success {summary['success_rate']:.2%}, length {summary['length_mean']:.1f}"
    )
    if interrupted:
        print("interrupted: nothing saved", file=sys.stderr)
        return 130
    try:
        with staged_directory(out_dir) as stage:
            (stage / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            save_episodes(episodes, stage, args.trace_format)
            if args.video:
                save_video(episodes[: args.video_episodes], stage / "episodes.gif")
    except OSError as err:
        raise UserError(f"cannot write the results to {out_dir}: {err.strerror or err}; nothing saved") from None
    print(f"saved to {out_dir}")
    return 0


class CheckpointConfig(dict):
    """A checkpoint's config whose missing keys are a one-line error naming the checkpoint, not a KeyError."""

    def __init__(self, cfg: dict, where: Path) -> None:
        super().__init__(cfg)
        self.where = where

    def __missing__(self, key):
        from utils.errors import UserError

        raise UserError(f"checkpoint {self.where}: config lacks key {key!r}")


if __name__ == "__main__":
    sys.exit(main())
