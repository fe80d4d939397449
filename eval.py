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
    parser.add_argument("--html", action="store_true",
                        help="write episodes.html: each shown episode's frames with a step slider, and per step the "
                             "action, reward, return and the words fed to the memory")
    parser.add_argument("--video-episodes", type=positive_int, default=None,
                        help="episodes in the GIF and the HTML page (default: 3, at most --n-episodes)")
    parser.add_argument("--gif-fps", type=positive_int, default=4, help="GIF frames per second (default 4)")
    parser.add_argument("--full-view", action="store_true",
                        help="MiniGrid: show the whole grid beside the agent's view in the GIF and the HTML page")
    parser.add_argument("--trace-format", default="json", choices=("json", "csv"),
                        help="file format of the per-step trace (trace.json or trace.csv)")
    parser.add_argument("--seed", type=non_negative_int, default=12345,
                        help="env and action-sampling seed (different from training's): the same command gives the same episodes")
    parser.add_argument("--torch-threads", type=positive_int, default=None,
                        help="CPU threads for torch (default: the idle cores, as in training)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--out", help="output directory, new or empty (default: RUN_DIR/eval/<time>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.video_episodes is None:
        args.video_episodes = min(3, args.n_episodes)
    elif not (args.video or args.html):
        parser.error("--video-episodes needs --video or --html")
    elif args.video_episodes > args.n_episodes:
        parser.error(f"--video-episodes {args.video_episodes} exceeds --n-episodes {args.n_episodes}")
    return args


def run_episodes(agent, envs, n_episodes: int, deterministic: bool, random_actions: bool, device, seed: int,
                 on_step=None, full_view: bool = False) -> Iterator[dict]:
    """Yield each episode as it ends; each env runs its share, so short episodes are not over-represented.

    `on_step()` is called after every vector step (a progress bar); with `full_view` each step also
    keeps the whole MiniGrid grid as the sub-env draws it.
    """
    import torch

    n_envs = envs.num_envs
    subenvs = list(getattr(getattr(envs, "unwrapped", envs), "envs", []) or []) if full_view else []
    targets = np.array([(n_episodes + i) // n_envs for i in range(n_envs)])
    counts = np.zeros(n_envs, dtype=int)
    obs, _ = envs.reset(seed=seed)
    starts = np.ones(n_envs, dtype=bool)
    state = agent.initial_state(n_envs)
    agent.eval()
    current = [{"obs": [], "actions": [], "rewards": [], "trace": [], "full": []} for _ in range(n_envs)]
    rng = np.random.default_rng(seed)
    while (counts < targets).any():
        with torch.no_grad():
            out, state = agent.act(torch.as_tensor(obs, device=device), state, torch.as_tensor(starts, device=device),
                                   deterministic)
        actions = out.actions.cpu().numpy()
        if random_actions:
            actions = rng.integers(envs.single_action_space.n, size=n_envs)
        traces = agent.describe_step(out) if hasattr(agent, "describe_step") else [None] * n_envs
        # the whole grid the observations show, drawn before the step changes it
        fulls = [sub.unwrapped.get_frame(highlight=True, tile_size=8, agent_pov=False) for sub in subenvs]
        next_obs, rewards, terminated, truncated, _ = envs.step(actions)
        for i in range(n_envs):
            if counts[i] >= targets[i]:
                continue
            ep = current[i]
            if fulls:
                ep["full"].append(fulls[i])
            ep["obs"].append(obs[i])
            ep["actions"].append(int(actions[i]))
            ep["rewards"].append(float(rewards[i]))
            ep["trace"].append(traces[i])
            if terminated[i] or truncated[i]:
                yield ep
                counts[i] += 1
                current[i] = {"obs": [], "actions": [], "rewards": [], "trace": [], "full": []}
        obs, starts = next_obs, terminated | truncated
        if on_step is not None:
            on_step()


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


def step_rows(episode: dict, names: list[str]) -> list[dict]:
    """Per step of an episode, what a person reads: action name, reward, return so far, memory words."""
    rows, ret = [], 0.0
    for t, (a, r, info) in enumerate(zip(episode["actions"], episode["rewards"], episode["trace"])):
        ret += r
        row = {"step": t, "action": names[a] if 0 <= a < len(names) else str(a), "reward": r, "return": ret}
        for key in ("words", "scores"):
            if info and key in info:
                row[key] = info[key]
        rows.append(row)
    return rows


def caption(n: int, row: dict) -> str:
    text = f"episode {n}  step {row['step']}  {row['action']}  reward {row['reward']:g}  return {row['return']:.2f}"
    return f"{text}  memory: {_cell(row['words'])}" if "words" in row else text


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


def side_by_side(agent_view: np.ndarray, full: np.ndarray | None) -> np.ndarray:
    """The agent's view, with the whole grid to its right when there is one (same height)."""
    if full is None:
        return agent_view
    from PIL import Image

    height = agent_view.shape[0]
    width = round(full.shape[1] * height / full.shape[0])
    full = np.asarray(Image.fromarray(full).resize((width, height), Image.NEAREST))
    return np.concatenate([agent_view, np.zeros((height, 4, 3), np.uint8), full], axis=1)


def save_video(episodes: list[dict], path: Path, names: list[str], fps: int = 4, scale: int = 4,
               caption_lines: int = 3) -> None:
    """A GIF of the episodes: each frame upscaled, with the episode, step, action, reward, return and
    (for the memory agents) the words fed to the memory under it; the whole grid beside it if recorded."""
    import imageio.v2 as imageio

    frames = []
    for n, ep in enumerate(episodes):
        for t, row in enumerate(step_rows(ep, names)):
            big = np.kron(ep["obs"][t], np.ones((scale, scale, 1), dtype=np.uint8))
            big = side_by_side(big, ep["full"][t] if ep["full"] else None)
            frames.append(captioned(big, caption(n, row), width_chars=max(big.shape[1] // 6, 8), lines=caption_lines))
    imageio.mimsave(path, frames, duration=1000 / fps, loop=0)  # milliseconds per frame (imageio >= 2.28)


def png_data_uri(frame: np.ndarray, scale: int = 4) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.kron(frame, np.ones((scale, scale, 1), dtype=np.uint8))).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body {font-family: sans-serif; margin: 1.5em; color: #222}
section {margin: 1.5em 0; padding-top: 0.5em; border-top: 1px solid #ccc}
.row {display: flex; gap: 1.5em; align-items: flex-start}
img {image-rendering: pixelated; border: 1px solid #999}
input[type=range] {width: 24em}
td, th {text-align: left; padding: 0.15em 0.6em; vertical-align: top}
.words {font-family: monospace}
</style></head><body>
<h1>__TITLE__</h1><p>__SUMMARY__</p>
<div id="episodes"></div>
<script>
const EPISODES = __DATA__;
const root = document.getElementById("episodes");
EPISODES.forEach((ep, n) => {
  const section = document.createElement("section");
  section.className = "episode";
  section.innerHTML = `<h2>Episode ${n}: return ${ep.return.toFixed(2)}, ${ep.steps.length} steps</h2>
    <div class="row"><div><img class="view">${ep.full ? '<img class="full">' : ""}</div><div>
    <input type="range" class="slider" min="0" max="${ep.steps.length - 1}" value="0">
    <p class="position"></p><table>
    <tr><th>action</th><td class="action"></td></tr><tr><th>reward</th><td class="reward"></td></tr>
    <tr><th>return so far</th><td class="return"></td></tr>
    <tr><th>fed to the memory</th><td class="words"></td></tr></table></div></div>`;
  const slider = section.querySelector(".slider");
  const show = () => {
    const t = Number(slider.value), step = ep.steps[t];
    section.querySelector(".view").src = ep.frames[t];
    if (ep.full) section.querySelector(".full").src = ep.full[t];
    section.querySelector(".position").textContent = `step ${t} of ${ep.steps.length - 1}`;
    section.querySelector(".action").textContent = step.action;
    section.querySelector(".reward").textContent = step.reward;
    section.querySelector(".return").textContent = step.return.toFixed(2);
    const words = step.words || [];
    section.querySelector(".words").textContent = words.length ? words.map((w, i) =>
      step.scores ? `${w} (${step.scores[i].toFixed(3)})` : w).join(", ") : "-";
  };
  slider.addEventListener("input", show);
  show();
  root.appendChild(section);
});
</script></body></html>
"""


def save_html(episodes: list[dict], path: Path, names: list[str], title: str, summary: str) -> None:
    """One self-contained page (frames inlined as PNG): per episode a step slider and, beside the frame,
    the action, reward, return and the words fed to the memory (SHELM's with their similarity scores)."""
    import html

    data = [{"frames": [png_data_uri(frame) for frame in ep["obs"]],
             "full": [png_data_uri(frame, scale=2) for frame in ep["full"]] if ep["full"] else None,
             "steps": step_rows(ep, names), "return": float(sum(ep["rewards"]))} for ep in episodes]
    page = (HTML_PAGE.replace("__TITLE__", html.escape(title)).replace("__SUMMARY__", html.escape(summary))
            .replace("__DATA__", json.dumps(data).replace("</", "<\\/")))
    path.write_text(page, encoding="utf-8")


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

    import torch

    from envs import action_names, make_env, success
    from models import build_agent
    from trainers.run import apply_threads, pick_device
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
    threads = apply_threads(args.torch_threads)  # as training does: the idle cores, not one per core
    n_envs = args.n_envs or min(args.n_episodes, MAX_DEFAULT_ENVS)
    vec_env = args.vec_env or cfg.get("vec_env", "sync")
    if args.full_view:
        if not cfg["env"].startswith("MiniGrid-"):
            raise UserError(f"--full-view draws MiniGrid's whole grid; {cfg['env']} is not a MiniGrid env")
        vec_env = "sync"  # the Python envs: their state is the grid (EnvPool's is not reachable)
    envs = make_env(cfg["env"], n_envs, vec_env)
    if len(envs.single_observation_space.shape) == 1 and (args.video or args.html):
        envs.close()
        raise UserError(f"{cfg['env']} gives vector observations, not frames: --video and --html show frames "
                        "(the trace and summary.json hold every step)")
    try:
        # a run trained with cuda_graph is evaluated by the eager step, which also re-encodes long episodes
        agent = build_agent(cfg["model"], envs.single_observation_space.shape, int(envs.single_action_space.n),
                            cfg | {"cuda_graph": False})
        try:
            agent.load_checkpoint_state(checkpoint["agent"])
        except (ValueError, RuntimeError) as err:
            raise UserError(f"checkpoint {ckpt_file} does not match its agent: {str(err).splitlines()[0]}") from None
    except BaseException:
        envs.close()
        raise
    agent.to(device)

    policy = "random actions" if args.random else "deterministic policy" if args.deterministic else "sampled actions"
    names = action_names(cfg["env"], envs)
    episodes: list[dict] = []
    # counts env steps, so it moves during long episodes too; the episodes done are its postfix
    bar = tqdm(desc=f"eval ({policy})", unit="step", unit_scale=True, file=sys.stderr, disable=args.no_progress,
               leave=False, dynamic_ncols=True)
    torch.manual_seed(args.seed)  # sampled actions: the same command gives the same episodes
    interrupted = False
    try:
        for episode in run_episodes(agent, envs, args.n_episodes, args.deterministic, args.random, device, args.seed,
                                    on_step=lambda: bar.update(n_envs), full_view=args.full_view):
            episodes.append(episode)
            bar.set_postfix_str(f"{len(episodes)}/{args.n_episodes} episodes")  # refreshed: episodes are rare
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
        "checkpoint": str(ckpt_file), "step": checkpoint["step"], "model": cfg["model"], "env": cfg["env"],
        "episodes": len(episodes), "return_mean": float(returns.mean()), "return_std": float(returns.std()),
        "success_rate": float(np.mean([success(ep["rewards"][-1]) for ep in episodes])),
        "length_mean": float(lengths.mean()), "actions": policy.split()[0], "deterministic": args.deterministic,
        "random": args.random, "seed": args.seed, "n_envs": n_envs, "vec_env": vec_env, "torch_threads": threads,
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
            shown = episodes[: args.video_episodes]
            if args.video:
                save_video(shown, stage / "episodes.gif", names, fps=args.gif_fps)
            if args.html:
                save_html(shown, stage / "episodes.html", names, f"{cfg['model']} on {cfg['env']}",
                          f"{ckpt_file} (step {checkpoint['step']:,}), {policy}, seed {args.seed}: return "
                          f"{summary['return_mean']:.3f} over {len(episodes)} episodes")
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
