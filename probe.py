"""What does a memory keep? Linear probes on what an agent's memory gives its policy.

    python probe.py RUN_DIR --out DIR [--episodes N]            # a trained run (its ckpt_last.pt)
    python probe.py --untrained --config FILE --out DIR [--var KEY=VALUE ...]   # a fresh agent

The agent plays N episodes (its own sampled policy for a run, a uniformly random one for an
untrained agent; ``--policy`` chooses), and every step's memory output is recorded together with
a memory-free representation of the same frame: the agent's own trainable CNN of the current
observation (for CNN-PPO the two are the same thing). Linear probes (logistic regression on
standardised features, fitted on 70% of the episodes and scored on the held-out 30%, since the
steps of one episode are correlated) then decode:

* **the cue** (MiniGrid ``Memory*``: the key or ball in the start room; ``CueRecall``: red or
  blue), scored by the steps since the cue was last in view (0: in view now). A memory that keeps
  the cue decodes it well above chance long after it left the view; the frame's CNN cannot.
* **generic recall** (any env): attributes of the frame k steps ago, k = 1 ... 64 (12 values about
  a factor sqrt(2) apart). On MiniGrid
  the attributes are which object types and colours were in view (from the symbolic view); on
  vector observations (POPGym) which entries were above 0.5 (the one-hot parts: which card, which
  previous action); on other families which of 8 coarse colours covered part of the frame.

The episodes are split with each cue class alike, and the features are reduced to their top 64
principal components before the probe, for every representation alike (so a wider one is not a
stronger probe). Chance is the majority-class rate of the held-out steps. ``DIR`` gets ``probe.json``, ``probe.md``
and ``probe.png`` (accuracy against steps since seen / k, with the chance line). Use ``report.py``
on a folder holding runs and probe outputs to see them side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from utils.cli import OneLineArgumentParser, positive_int  # noqa: E402  (standard library only)
from utils.errors import UserError  # noqa: E402

MIN_EPISODES = 6  # the 30% held out must hold a few episodes
MAX_SINCE = 24  # cue buckets: 0 .. MAX_SINCE steps since last in view, then "later"
RECALL_KS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # k = 1 ... 64, spaced by about sqrt(2)
TRAIN_FRACTION = 0.7
SPLIT_SEED = 0
COMPONENTS = 64  # probes read the top principal components of the standardised features
L2 = 1e-2  # ridge penalty of the probes (per component weight)
MINIGRID_TYPES = ("key", "ball", "box", "door", "goal", "lava")
MINIGRID_COLOURS = ("red", "green", "blue", "purple", "yellow", "grey")
COARSE_COLOURS = ("black", "red", "green", "yellow", "blue", "magenta", "cyan", "white")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__)
    parser.add_argument("run_dir", nargs="?", help="a run directory written by main.py or sweep.py")
    parser.add_argument("--untrained", action="store_true", help="probe a freshly built agent (needs --config)")
    parser.add_argument("--config", help="with --untrained: the config of the agent to build")
    parser.add_argument("--var", action="append", default=[], metavar="KEY=VALUE", help="with --untrained: override a key")
    parser.add_argument("--out", required=True, help="output directory, new or empty")
    parser.add_argument("--episodes", type=positive_int, default=100, help="episodes to record (default 100)")
    parser.add_argument("--n-envs", type=positive_int, default=16, help="envs stepped in parallel (default 16)")
    parser.add_argument("--policy", choices=("agent", "random"), default=None,
                        help="who acts: the agent's sampled policy (default for a run) or uniformly random actions "
                             "(default for --untrained)")
    parser.add_argument("--probe", choices=("all", "cue", "recall"), default="all",
                        help="which probes (default all: the cue probe where the env has a cue, and generic recall)")
    parser.add_argument("--seed", type=int, default=12345, help="env and policy seed (different from training's)")
    parser.add_argument("--torch-threads", type=positive_int, default=None, help="CPU threads (default: the idle cores)")
    args = parser.parse_args(argv)
    if args.untrained == (args.run_dir is not None):
        parser.error("give either RUN_DIR or --untrained --config FILE")
    if args.untrained and not args.config:
        parser.error("--untrained needs --config FILE")
    if not args.untrained and (args.config or args.var):
        parser.error("--config and --var are for --untrained; a run is probed with its own config")
    if args.episodes < MIN_EPISODES:
        parser.error(f"--episodes {args.episodes} is too few: the held-out 30% needs at least {MIN_EPISODES} episodes")
    return args


# ---------------------------------------------------------------- what the env shows


def cue_kind(env_id: str) -> str | None:
    """The family of cue this env has (None: no cue probe)."""
    if env_id.startswith("MiniGrid-Memory"):
        return "minigrid-memory"
    if env_id.startswith("CueRecall"):
        return "cue-recall"
    return None


def minigrid_cue(env) -> tuple[int, bool]:
    """(cue class: 0 key, 1 ball; is it in the agent's view now) of a MiniGrid Memory env."""
    env = env.unwrapped
    x, y = 1, env.height // 2 - 1
    return int(env.grid.get(x, y).type == "ball"), bool(env.agent_sees(x, y))


def minigrid_attributes(env) -> np.ndarray:
    """Which object types and colours are in the agent's view, from its symbolic 7x7 view."""
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

    view = env.unwrapped.gen_obs()["image"]
    kinds, colours = view[..., 0], view[..., 1]
    objects = np.isin(kinds, [OBJECT_TO_IDX[t] for t in MINIGRID_TYPES])
    return np.array([(kinds == OBJECT_TO_IDX[t]).any() for t in MINIGRID_TYPES]
                    + [(objects & (colours == COLOR_TO_IDX[c])).any() for c in MINIGRID_COLOURS])


def colour_attributes(frame: np.ndarray) -> np.ndarray:
    """Which of 8 coarse colours (each channel above or below mid-grey) cover at least 1% of the frame."""
    bits = frame.reshape(-1, frame.shape[-1])[:, :3] > 127
    codes = bits[:, 0] * 1 + bits[:, 1] * 2 + bits[:, 2] * 4
    share = np.bincount(codes, minlength=8) / len(codes)
    # codes: 0 black, 1 red, 2 green, 3 yellow, 4 blue, 5 magenta, 6 cyan, 7 white
    return share >= 0.01


def vector_attributes(obs: np.ndarray) -> np.ndarray:
    """A vector observation's entries above 0.5: POPGym's one-hot parts (which card, which previous action)."""
    return np.asarray(obs) > 0.5


def attribute_names(env_id: str, obs_shape: tuple[int, ...]) -> list[str]:
    if env_id.startswith("MiniGrid-"):
        return [f"type:{t}" for t in MINIGRID_TYPES] + [f"colour:{c}" for c in MINIGRID_COLOURS]
    if len(obs_shape) == 1:
        return [f"obs[{i}] > 0.5" for i in range(obs_shape[0])]
    return [f"colour:{c}" for c in COARSE_COLOURS]


# ---------------------------------------------------------------- recording episodes


@dataclass
class Episode:
    memory: list[np.ndarray] = field(default_factory=list)  # what the memory gave the policy, per step
    frame: list[np.ndarray] = field(default_factory=list)  # the memory-free features of the same frame
    attributes: list[np.ndarray] = field(default_factory=list)
    cue: list[int] = field(default_factory=list)
    cue_visible: list[bool] = field(default_factory=list)
    ret: float = 0.0


def record(agent, envs, env_id: str, n_episodes: int, policy: str, seed: int, device) -> list[Episode]:
    """Play `n_episodes` (each env its equal share) and record every step's representations."""
    import torch

    n_envs = envs.num_envs
    targets = np.array([(n_episodes + i) // n_envs for i in range(n_envs)])
    done = np.zeros(n_envs, dtype=int)
    subenvs = _python_envs(envs)
    kind = cue_kind(env_id)
    obs, _ = envs.reset(seed=seed)
    starts = np.ones(n_envs, dtype=bool)
    state = agent.initial_state(n_envs)
    rng = np.random.default_rng(seed)
    current = [Episode() for _ in range(n_envs)]
    finished: list[Episode] = []
    agent.eval()
    while (done < targets).any():
        obs_t = torch.as_tensor(obs, device=device)
        with torch.no_grad():
            out, state = agent.act(obs_t, state, torch.as_tensor(starts, device=device))
            frame = agent.frame_features(obs_t)
        memory, frame = out.memory_out.float().cpu().numpy(), frame.float().cpu().numpy()
        actions = out.actions.cpu().numpy() if policy == "agent" else rng.integers(envs.single_action_space.n, size=n_envs)
        for i in range(n_envs):
            ep = current[i]
            ep.memory.append(memory[i])
            ep.frame.append(frame[i])
            if env_id.startswith("MiniGrid-"):
                ep.attributes.append(minigrid_attributes(subenvs[i]))
            elif obs[i].ndim == 1:
                ep.attributes.append(vector_attributes(obs[i]))
            else:
                ep.attributes.append(colour_attributes(obs[i]))
            if kind == "minigrid-memory":
                cue, visible = minigrid_cue(subenvs[i])
            elif kind == "cue-recall":
                cue, visible = subenvs[i].unwrapped.cue, len(ep.cue) == 0
            else:
                cue, visible = -1, False
            ep.cue.append(cue)
            ep.cue_visible.append(visible)
        obs, rewards, terminated, truncated, _ = envs.step(actions)
        starts = terminated | truncated
        for i in range(n_envs):
            current[i].ret += float(rewards[i])
            if starts[i]:
                if done[i] < targets[i]:
                    finished.append(current[i])
                    done[i] += 1
                current[i] = Episode()
    return finished


def _python_envs(envs) -> list:
    """The sub-envs (their state gives the ground truth), through the tile-atlas wrapper."""
    inner = getattr(envs, "unwrapped", envs)
    subenvs = getattr(inner, "envs", None)
    if subenvs is None:
        raise UserError("probing needs the Python envs (their state is the ground truth): use vec_env=sync")
    return list(subenvs)


# ---------------------------------------------------------------- the probes


def split_episodes(episodes: list[Episode], seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out episodes, 70/30, with each cue class split alike (stratified).

    The cue is constant within an episode, so with few episodes an unstratified split can give
    the two parts different majorities, and a probe that learned nothing then scores below chance.
    """
    rng = np.random.default_rng(seed)
    strata: dict[int, list[int]] = {}
    for i, ep in enumerate(episodes):
        strata.setdefault(ep.cue[0] if ep.cue else -1, []).append(i)
    train, test = [], []
    for members in strata.values():
        order = rng.permutation(members)
        cut = int(round(TRAIN_FRACTION * len(order)))
        train += list(order[:cut])
        test += list(order[cut:])
    if not train or not test:
        raise UserError("too few episodes to hold some out: record more")
    return np.sort(train), np.sort(test)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2, components: int = COMPONENTS):
    """Independent logistic regressions of every column of y (bool [n, m]) on x [n, d], fitted
    together by L-BFGS; returns a function giving P(y) for new x.

    The features are standardised and reduced to their top principal components (fitted on the
    training steps), the same for every representation: a 1024-d CNN feature and a 384-d memory
    output are then probed with equal capacity, and the probes cannot memorise training episodes.
    """
    import torch

    xt = torch.as_tensor(x, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.float64)
    mean, std = xt.mean(0), xt.std(0).clamp_min(1e-6)
    z = (xt - mean) / std
    basis = torch.linalg.svd(z, full_matrices=False).Vh[:components].T  # [d, c]
    z = z @ basis
    weight = torch.zeros(z.shape[1], yt.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(yt.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ weight + bias, yt) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()

    def predict(x_new: np.ndarray) -> np.ndarray:
        z_new = ((torch.as_tensor(x_new, dtype=torch.float64) - mean) / std) @ basis
        return torch.sigmoid(z_new @ weight + bias).numpy()

    return predict


BOOTSTRAP_REPS = 1000


def episode_interval(correct: np.ndarray, episode: np.ndarray, seed: int = SPLIT_SEED) -> list[float]:
    """95% interval of an accuracy, resampling held-out episodes (their steps are correlated, the
    episodes are not): correct [n] (or [n, attributes]), episode [n] -> [low, high]."""
    correct = correct.reshape(len(correct), -1).mean(axis=1)
    ids, index = np.unique(episode, return_inverse=True)
    sums, counts = np.bincount(index, correct), np.bincount(index)
    draws = np.random.default_rng(seed).integers(len(ids), size=(BOOTSTRAP_REPS, len(ids)))
    resampled = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    return [float(np.percentile(resampled, 2.5)), float(np.percentile(resampled, 97.5))]


def majority_rate(y: np.ndarray) -> np.ndarray:
    """Per column, the accuracy of always answering the more common class."""
    return np.maximum(y.mean(0), 1 - y.mean(0))


def cue_probe(episodes: list[Episode], train: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    """Cue accuracy on held-out steps, by steps since the cue was last in view: one probe per bucket
    (what a representation holds right after the cue differs from what it holds 20 steps later)."""
    def bucketed(ids) -> dict[str, list[tuple[int, int]]]:
        rows: dict[str, list[tuple[int, int]]] = {}
        for e in ids:
            ep, since = episodes[e], None
            for t in range(len(ep.cue)):
                since = 0 if ep.cue_visible[t] else (None if since is None else since + 1)
                bucket = "never seen" if since is None else str(since) if since <= MAX_SINCE else f">{MAX_SINCE}"
                rows.setdefault(bucket, []).append((e, t))
        return rows

    buckets = [str(s) for s in range(MAX_SINCE + 1)] + [f">{MAX_SINCE}", "never seen"]
    train_rows, test_rows = bucketed(train), bucketed(test)
    out: dict[str, Any] = {"buckets": buckets, "counts": [], "chance": [], "memory": [], "frame": [],
                           "memory_ci": [], "frame_ci": []}
    for bucket in buckets:
        fit_on, score_on = train_rows.get(bucket, []), test_rows.get(bucket, [])
        labels = lambda rows: np.array([[episodes[e].cue[t]] for e, t in rows], dtype=bool)  # noqa: E731
        y_train, y_test = labels(fit_on), labels(score_on)
        out["counts"].append(len(score_on))
        out["chance"].append(float(majority_rate(y_test)[0]) if len(score_on) else None)
        usable = len(fit_on) >= 10 and len(score_on) > 0 and y_train.any() and not y_train.all()
        for rep in ("memory", "frame"):
            if not usable:
                out[rep].append(None)
                out[f"{rep}_ci"].append(None)
                continue
            features = lambda rows: np.stack([getattr(episodes[e], rep)[t] for e, t in rows])  # noqa: E731
            predict = fit_logistic(features(fit_on), y_train)
            correct = (predict(features(score_on)) > 0.5) == y_test
            out[rep].append(float(correct.mean()))
            out[f"{rep}_ci"].append(episode_interval(correct, np.array([e for e, _ in score_on])))
    if not any(v is not None for v in out["memory"]):
        raise UserError("too few steps after the cue was seen to fit a probe: record more episodes")
    return out


def recall_probe(episodes: list[Episode], train: np.ndarray, test: np.ndarray, ks=RECALL_KS) -> dict[str, Any]:
    """Accuracy of decoding the attributes of the frame k steps back, averaged over attributes."""
    out: dict[str, Any] = {"k": [], "memory": [], "frame": [], "chance": [], "pairs": [], "memory_ci": [],
                           "frame_ci": []}

    def pairs(ids, k):
        return [(e, t) for e in ids for t in range(k, len(episodes[e].memory))]

    for k in ks:
        train_pairs, test_pairs = pairs(train, k), pairs(test, k)
        if len(train_pairs) < 20 or len(test_pairs) < 10:
            break  # episodes shorter than k: nothing left to probe
        y_train = np.stack([episodes[e].attributes[t - k] for e, t in train_pairs])
        y_test = np.stack([episodes[e].attributes[t - k] for e, t in test_pairs])
        varied = (y_train.any(0) & ~y_train.all(0))  # an attribute constant in training says nothing
        if not varied.any():
            continue
        y_train, y_test = y_train[:, varied], y_test[:, varied]
        out["k"].append(k)
        out["pairs"].append(len(test_pairs))
        out["chance"].append(float(majority_rate(y_test).mean()))
        for rep in ("memory", "frame"):
            x_train = np.stack([getattr(episodes[e], rep)[t] for e, t in train_pairs])
            x_test = np.stack([getattr(episodes[e], rep)[t] for e, t in test_pairs])
            predict = fit_logistic(x_train, y_train)
            correct = (predict(x_test) > 0.5) == y_test
            out[rep].append(float(correct.mean()))
            out[f"{rep}_ci"].append(episode_interval(correct, np.array([e for e, _ in test_pairs])))
    return out


# ---------------------------------------------------------------- output


def plot(result: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [p for p in ("cue", "recall") if result.get(p)]
    fig = Figure(figsize=(6 * len(panels), 4.2))
    FigureCanvasAgg(fig)
    name = f"{result['model']} ({result['what']})"
    for i, probe in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        data = result[probe]
        if probe == "cue":
            keep = [j for j, b in enumerate(data["buckets"]) if b.isdigit() and data["memory"][j] is not None]
            xs = [int(data["buckets"][j]) for j in keep]
            series = {key: [data[key][j] for j in keep] for key in ("memory", "frame", "chance")}
            ax.set_xlabel("env steps since the cue was last in view")
            ax.set_title(f"cue: {name}", fontsize=10)
        else:
            xs, series = data["k"], {key: data[key] for key in ("memory", "frame", "chance")}
            ax.set_xscale("log", base=2)
            ax.set_xlabel("k (attributes of the frame k steps ago)")
            ax.set_title(f"recall: {name}", fontsize=10)
        ax.plot(xs, series["memory"], marker="o", markersize=3, label="memory output")
        ax.plot(xs, series["frame"], marker="s", markersize=3, label="current frame's CNN (no memory)")
        ax.plot(xs, series["chance"], color="grey", linestyle="--", label="chance (majority class)")
        ax.set_ylabel("held-out accuracy")
        ax.set_ylim(0.4, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def with_ci(probe: dict[str, Any], rep: str, j: int) -> str:
    """``0.912 [0.850, 0.960]``: an accuracy and its interval over held-out episodes."""
    ci = (probe.get(f"{rep}_ci") or [None] * (j + 1))[j]
    return fmt(probe[rep][j]) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def render_markdown(result: dict[str, Any]) -> str:
    lines = [f"# Probe: {result['model']} on {result['env']} ({result['what']})", "",
             f"{result['episodes']} episodes ({result['steps']} steps) with {result['policy']} actions, mean return "
             f"{result['mean_return']:.3f}; probes fitted on {result['train_episodes']} episodes, scored on "
             f"{result['test_episodes']} held-out ones. Memory: {result['memory_dim']}-d; frame (no memory): "
             f"{result['frame_dim']}-d.", ""]
    if result.get("cue"):
        cue = result["cue"]
        lines += ["## Cue", "", "Accuracy with its 95% interval over held-out episodes.", "",
                  "| steps since in view | held-out steps | memory | frame (no memory) | chance |",
                  "|---|---|---|---|---|"]
        for j, bucket in enumerate(cue["buckets"]):
            if cue["counts"][j]:
                lines.append(f"| {bucket} | {cue['counts'][j]} | {with_ci(cue, 'memory', j)} | {with_ci(cue, 'frame', j)} "
                             f"| {fmt(cue['chance'][j])} |")
        lines.append("")
    if result.get("recall"):
        rec = result["recall"]
        attrs = ", ".join(result["attributes"])
        lines += ["## Generic recall", "", f"Attributes: {attrs}; accuracy averaged over the attributes that varied.",
                  "", "| k | held-out pairs | memory | frame (no memory) | chance |", "|---|---|---|---|---|"]
        for j, k in enumerate(rec["k"]):
            if k in (1, 2, 4, 8, 16, 32, 64) or j == len(rec["k"]) - 1:
                lines.append(f"| {k} | {rec['pairs'][j]} | {with_ci(rec, 'memory', j)} | {with_ci(rec, 'frame', j)} "
                             f"| {rec['chance'][j]:.3f} |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def build(args) -> tuple[Any, dict[str, Any], str]:
    """The checkpoint to probe (None: a fresh agent), its config and what it is ("trained, step N" or "untrained")."""
    from utils import config as config_lib
    from utils.checkpoint import load_checkpoint

    if args.untrained:
        cfg = config_lib.resolve(args.config, args.var)
        cfg["seed"] = 0 if cfg["seed"] is None else cfg["seed"]
        return None, cfg, "untrained"
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if not (run_dir / "ckpt_last.pt").is_file():
        raise UserError(f"no ckpt_last.pt in {run_dir}: nothing to probe (train it first, or use --untrained)")
    checkpoint = load_checkpoint(run_dir / "ckpt_last.pt")
    return checkpoint, checkpoint["config"], f"trained, step {checkpoint['step']:,}"


def probe(args) -> dict[str, Any]:
    from envs import make_env
    from models import build_agent
    from trainers.run import apply_threads
    from utils.outputs import check_new_output_dir, staged_directory

    check_new_output_dir(Path(args.out))
    checkpoint, cfg, what = build(args)
    kind = cue_kind(cfg["env"])
    if args.probe == "cue" and kind is None:
        raise UserError(f"{cfg['env']} has no cue to probe (MiniGrid-Memory* and CueRecall* do); use --probe recall")
    policy = args.policy or ("random" if args.untrained else "agent")
    apply_threads(args.torch_threads)
    import torch

    torch.manual_seed(args.seed)
    envs = make_env(cfg["env"], min(args.n_envs, args.episodes), "sync")
    try:
        # a run trained with cuda_graph is evaluated by the eager step, which also re-encodes long episodes
        agent = build_agent(cfg["model"], envs.single_observation_space.shape, int(envs.single_action_space.n),
                            cfg | {"cuda_graph": False})
        if checkpoint is not None:
            try:
                agent.load_checkpoint_state(checkpoint["agent"])
            except (ValueError, RuntimeError) as err:
                raise UserError(f"checkpoint of {args.run_dir} does not match its agent: {str(err).splitlines()[0]}") from None
        if not hasattr(agent, "frame_features"):
            raise UserError(f"model {cfg['model']} does not expose its memory output to probes")
        tick = time.perf_counter()
        episodes = record(agent, envs, cfg["env"], args.episodes, policy, args.seed, torch.device("cpu"))
    finally:
        envs.close()
    train, test = split_episodes(episodes)
    result: dict[str, Any] = {
        "model": cfg["model"], "env": cfg["env"], "what": what, "policy": policy,
        "run": Path(args.run_dir).name if args.run_dir else None, "lm": cfg.get("lm"),
        "episodes": len(episodes), "steps": sum(len(e.memory) for e in episodes),
        "mean_return": float(np.mean([e.ret for e in episodes])),
        "train_episodes": len(train), "test_episodes": len(test),
        "memory_dim": int(episodes[0].memory[0].shape[0]), "frame_dim": int(episodes[0].frame[0].shape[0]),
        "attributes": attribute_names(cfg["env"], envs.single_observation_space.shape), "seed": args.seed,
    }
    if kind is not None and args.probe in ("all", "cue"):
        result["cue"] = cue_probe(episodes, train, test)
    if args.probe in ("all", "recall"):
        result["recall"] = recall_probe(episodes, train, test)
    result["seconds"] = time.perf_counter() - tick
    with staged_directory(args.out) as stage:
        (stage / "probe.json").write_text(json.dumps(result, indent=2) + "\n")
        (stage / "probe.md").write_text(render_markdown(result))
        plot(result, stage / "probe.png")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = probe(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing saved", file=sys.stderr)
        return 130
    summary = []
    if result.get("cue"):
        cue = result["cue"]
        seen = [j for j, b in enumerate(cue["buckets"]) if b in ("1", "4", "8") and cue["memory"][j] is not None]
        summary += [f"cue {cue['buckets'][j]} steps after: {cue['memory'][j]:.2f} (frame {cue['frame'][j]:.2f})"
                    for j in seen]
    if result.get("recall") and result["recall"]["k"]:
        rec = result["recall"]
        summary.append(f"recall k={rec['k'][0]}: {rec['memory'][0]:.2f} (frame {rec['frame'][0]:.2f}, chance "
                       f"{rec['chance'][0]:.2f})")
    print(f"probed {result['model']} ({result['what']}) on {result['episodes']} episodes: {'; '.join(summary)} -> "
          f"{Path(args.out) / 'probe.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
