"""Compare trained agents across seeds: ``python report.py PATH [PATH ...] --out DIR [--metric-steps N] [--reps N]``.

PATH is a run directory written by main.py (``experiments/<model>/<env>/<run_id>/``) or any
directory above run directories (``experiments/``, ``experiments/HELM``). For every env the report
holds, per model:

* learning curves of ``rollout/ep_rew_mean`` and ``rollout/success_rate``: the mean over seeds
  against env steps with a 95% bootstrap band over seeds (``curves__<env>__<metric>.png``);
* the final performance of the runs (the last logged value of each metric, itself an average over
  the last 100 training episodes) summarised by the interquartile mean (IQM) and the mean, each
  with a 95% stratified-bootstrap confidence interval (rliable);
* the probability that a model beats another of a simpler kind on a randomly drawn pair of runs,
  with a 95% confidence interval: a frozen-LM memory (HELM, HELMv2, SHELM) against trained
  memories (LSTM, GRU, TrXL) and against no memory (CNN-PPO), a trained memory against no memory
  (the kinds come from the model registry, `models.registry`);
* sample efficiency, which final performance cannot show when every agent ends up solving the
  task: the mean return over the whole budget (the area under the learning curve divided by the
  budget) with the same IQM, mean and probability-of-improvement statistics, and per run the env
  steps until its mean return first reaches each of ``--levels`` (default: 50%, 80% and 90% of
  the best model's final mean return).

Runs of one model whose settings differ (a sweep's ``--grid``, a declared variant) are reported
side by side under names that carry those settings, e.g. ``Impala-PPO (ent_coef=0.01)``.

``DIR/report.md`` is for reading, ``DIR/report.json`` holds the same numbers and the runs used.
Bootstraps use a fixed seed, so the same runs always give the same report. Returns are not
normalised across envs, so every statistic is computed per env, never pooled over envs. The report
also lists, per model, every setting its runs used, and the device and env backend each run ran on
(a run's ``runtime.json``): seeds play out differently on each, so a comparison should keep one.
Success-rate plots draw the chance level of tasks that have one (a policy that ignores the cue of
MiniGrid-Memory or cue recall succeeds half the time), or ``--chance-success``.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.cli import OneLineArgumentParser
from utils.errors import UserError

METRICS = ("rollout/ep_rew_mean", "rollout/success_rate")
METRIC_NAMES = {"rollout/ep_rew_mean": "return", "rollout/success_rate": "success rate"}
Y_LABELS = {"rollout/ep_rew_mean": "mean return (last 100 episodes)",
            "rollout/success_rate": "success rate (last 100 episodes)"}
# Success rate of a policy that ignores the cue (it picks one of two answers): env id prefix -> chance
CHANCE_SUCCESS = {"MiniGrid-Memory": 0.5, "CueRecall": 0.5}
# Settings that identify a run rather than configure it: not listed among the settings used
NOT_SETTINGS = ("seed", "source", "torch_threads", "save_ckpt", "ckpt_last_every_s", "device")
EVENTS_PREFIX = "events.out.tfevents."
SEED = 0  # every bootstrap starts from this seed: the same runs always give the same report
CONFIDENCE = 0.95

Curve = tuple[np.ndarray, np.ndarray]  # (steps, values), steps strictly increasing


@dataclass
class Run:
    """One training run: where it is, what it trained, and its logged scalars."""

    path: Path
    env: str
    model: str
    seed: int | None
    budget: int
    scalars: dict[str, Curve]
    config: dict[str, Any]
    runtime: list[dict[str, Any]]  # where each start or resume ran (runtime.json), [] when not recorded
    name: str = ""  # what the report calls it: the model, plus settings where runs of the model differ

    def __post_init__(self) -> None:
        self.name = self.name or self.model

    @property
    def where(self) -> str:
        """"cpu / minigrid", or every place it ran when it moved ("?" when not recorded)."""
        places = dict.fromkeys(f"{s.get('device', '?')} / {s.get('env_backend', '?')}" for s in self.runtime)
        return " then ".join(places) or "?"

    @property
    def last_step(self) -> int:
        """The env steps the run got to: the largest step any scalar was logged at."""
        return max((int(steps[-1]) for steps, _ in self.scalars.values() if len(steps)), default=0)

    def final(self, metric: str) -> float | None:
        """The last logged value of `metric` (None when the run never logged it)."""
        curve = self.scalars.get(metric)
        return float(curve[1][-1]) if curve is not None and len(curve[0]) else None


# ---------------------------------------------------------------- finding and reading runs


def is_run_dir(directory: Path, filenames: Iterable[str]) -> bool:
    """A run directory has the resolved config and at least one TensorBoard events file."""
    names = set(filenames)
    return "config.json" in names and any(name.startswith(EVENTS_PREFIX) for name in names)


def find_run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Every run directory at or below `paths`, each once even when the paths overlap.

    Hidden directories (.git, .venv) and __pycache__ are not searched: they never hold runs and
    walking a virtual environment would take long.
    """
    found: dict[Path, Path] = {}
    for path in paths:
        if not path.exists():
            raise UserError(f"path not found: {path}")
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
            if is_run_dir(Path(dirpath), filenames):
                found.setdefault(Path(dirpath).resolve(), Path(dirpath))
    return sorted(found.values())


def find_probes(paths: Iterable[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Every probe.py output (a probe.json) at or below `paths`, with its numbers."""
    found: dict[Path, tuple[Path, dict[str, Any]]] = {}
    for path in paths:
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
            if "probe.json" in filenames:
                file = Path(dirpath) / "probe.json"
                try:
                    data = json.loads(file.read_text())
                except (OSError, ValueError):
                    print(f"warning: skipping unreadable probe result {file}", file=sys.stderr)
                    continue
                if isinstance(data, dict) and "model" in data and "env" in data:
                    found.setdefault(file.resolve(), (Path(dirpath), data))
    return sorted(found.values(), key=lambda item: (item[1]["env"], model_rank(item[1]["model"]), str(item[0])))


def probe_summary(folder: Path, data: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The headline numbers of a probe: cue accuracy 1, 4 and 16 steps after it left the view,
    recall of the frame 1, 8 and 32 steps back; memory / frame (no memory) / chance each."""
    pick = lambda probe, key, at: {  # noqa: E731
        str(a): {rep: probe[rep][probe[key].index(a)] for rep in ("memory", "frame", "chance")}
        for a in at if a in probe[key]}
    summary = {"path": os.path.relpath(folder, out_dir), "model": data["model"], "env": data["env"],
               "what": data.get("what"), "episodes": data.get("episodes")}
    if data.get("cue"):
        summary["cue"] = pick(data["cue"], "buckets", ["1", "4", "16"])
    if data.get("recall"):
        summary["recall"] = pick(data["recall"], "k", [1, 8, 32])
    return summary


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's config.json, checked for the keys the report groups and budgets by."""
    path = run_dir / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    missing = [key for key in ("env", "model", "n_steps") if not isinstance(cfg, dict) or key not in cfg]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: is it a run directory written by main.py?")
    if isinstance(cfg["n_steps"], bool) or not isinstance(cfg["n_steps"], int):
        raise UserError(f"{path}: n_steps must be an integer, got {cfg['n_steps']!r}")
    return cfg


def load_scalars(run_dir: Path) -> dict[str, Curve]:
    """All scalars of a run, one value per step.

    A resumed run may log a step twice; the value written last wins, since it comes from the run
    that carried on. Non-finite values are dropped so that they cannot poison averages.
    """
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    tb_logger = logging.getLogger("tensorboard")
    level = tb_logger.level
    tb_logger.setLevel(logging.ERROR)  # a resumed run's purge of steps it redid is expected, not news
    try:
        acc.Reload()
    finally:
        tb_logger.setLevel(level)
    scalars = {}
    for tag in acc.Tags()["scalars"]:
        by_step: dict[int, float] = {}
        for event in acc.Scalars(tag):
            by_step[int(event.step)] = float(event.value)
        steps = np.array(sorted(s for s, v in by_step.items() if np.isfinite(v)), dtype=np.int64)
        scalars[tag] = (steps, np.array([by_step[s] for s in steps], dtype=np.float64))
    return scalars


def events_file_problem(path: Path) -> str | None:
    """Why a TensorBoard events file cannot be trusted, or None when every record checks out.

    TensorBoard's reader stops silently at the first damaged record, which would report a run as
    having never finished an episode. Each record is (length, CRC of the length, data, CRC of the
    data); a CRC that does not match is damage. A record cut short at the very end is not: a
    hard kill can leave one, and the records before it are intact.
    """
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    try:
        data = path.read_bytes()
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    offset = 0
    while offset + 12 <= len(data):
        header = data[offset:offset + 8]
        (length,) = struct.unpack("<Q", header)
        if struct.unpack("<I", data[offset + 8:offset + 12])[0] != masked_crc32c(header):
            return f"damaged at byte {offset}"
        end = offset + 12 + length
        if end + 4 > len(data):
            return None  # a truncated last record
        if struct.unpack("<I", data[end:end + 4])[0] != masked_crc32c(data[offset + 12:end]):
            return f"damaged at byte {offset}"
        offset = end + 4
    return None


def load_runs(paths: Iterable[Path]) -> list[Run]:
    """The runs below `paths`, sorted by env, model, seed.

    A run with a damaged events file is left out with a one-line warning naming the file.
    """
    paths = list(paths)
    run_dirs = find_run_dirs(paths)
    if not run_dirs:
        raise UserError(f"no run directories (config.json + TensorBoard events) or probe results (probe.json) under "
                        f"{', '.join(map(str, paths))}")
    runs = []
    for run_dir in run_dirs:
        damaged = [(f, why) for f in sorted(run_dir.glob(f"{EVENTS_PREFIX}*")) if (why := events_file_problem(f))]
        if damaged:
            print(f"warning: skipping run {run_dir}: events file {damaged[0][0].name} is {damaged[0][1]}", file=sys.stderr)
            continue
        cfg = read_config(run_dir)
        runs.append(Run(run_dir, str(cfg["env"]), str(cfg["model"]), cfg.get("seed"), int(cfg["n_steps"]),
                        load_scalars(run_dir), cfg, read_runtime(run_dir)))
    if not runs:
        raise UserError("every run found has a damaged events file: nothing to report")
    return sorted(runs, key=lambda r: (r.env, model_rank(r.model), r.seed if r.seed is not None else -1, str(r.path)))


def read_runtime(run_dir: Path) -> list[dict[str, Any]]:
    """The run's runtime.json segments (device, env backend per start), [] when absent or unreadable."""
    try:
        segments = json.loads((run_dir / "runtime.json").read_text())["segments"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [s for s in segments if isinstance(s, dict)] if isinstance(segments, list) else []


def base_model(name: str) -> str:
    """The model of a reported name: "Impala-PPO (ent_coef=0.01)" -> "Impala-PPO"."""
    return name.split(" (", 1)[0]


def model_kind(model: str) -> int | None:
    """The rank of the model's kind in the registry (frozen LM 2, trained memory 1, none 0); None if unknown."""
    from models.registry import KINDS, MODELS

    spec = MODELS.get(base_model(model))
    return KINDS[spec.kind] if spec is not None else None


def model_rank(model: str) -> tuple[int, int, str]:
    """Frozen-LM memories first, then trained memories, then no memory (registry order within a
    kind), then models the registry does not know, by name."""
    from models.registry import MODELS

    kind, base = model_kind(model), base_model(model)
    return (-(kind if kind is not None else -1), list(MODELS).index(base) if base in MODELS else 0, model)


def comparisons(models: Iterable[str]) -> list[tuple[str, str]]:
    """(model, baseline) pairs: every model against every model of a simpler kind."""
    models = sorted(models, key=model_rank)
    return [(a, b) for a in models for b in models
            if model_kind(a) is not None and model_kind(b) is not None and model_kind(a) > model_kind(b)]


def chance_success(env: str, override: float | None = None) -> float | None:
    if override is not None:
        return override
    return next((p for prefix, p in CHANCE_SUCCESS.items() if env.startswith(prefix)), None)


def max_mean_return(run: Run) -> float | None:
    """POPGym's MMER: the best mean return of the run's learning curve (a mean over its last 100
    episodes at every logged step). POPGym's returns lie in [-1, 1], so it compares across tasks."""
    curve = run.scalars.get(RETURN)
    return float(np.max(curve[1])) if curve is not None and len(curve[1]) else None


def distinct_values(configs: list[dict[str, Any]], key: str) -> list[Any]:
    """The different values `key` takes across `configs`, in order of appearance (missing: None)."""
    return [json.loads(v) for v in dict.fromkeys(json.dumps(c.get(key), sort_keys=True) for c in configs)]


def settings_used(runs: list[Run]) -> dict[str, Any]:
    """The config values the runs shared (a list where they differ), without run identity keys."""
    configs = [r.config for r in runs]
    out = {}
    for key in sorted({k for c in configs for k in c} - set(NOT_SETTINGS)):
        values = distinct_values(configs, key)
        out[key] = values[0] if len(values) == 1 else values
    return out


def format_setting(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def name_variants(runs: list[Run]) -> None:
    """Name runs of one model (same env and budget) by the settings in which they differ.

    A sweep's --grid, or a declared variant such as a larger ent_coef, gives runs of one model
    different settings; pooling them would average away what the sweep asked. They are reported
    side by side instead, e.g. "Impala-PPO (ent_coef=0.001)" and "Impala-PPO (ent_coef=0.01)".
    A key an older run's config lacks counts as its default (the behaviour that run had).
    """
    from utils.config import defaults

    full = [{**defaults(), **r.config} for r in runs]
    candidates = sorted(set().union(*full) - set(NOT_SETTINGS) - {"n_steps"})
    keys = [k for k in candidates if len(distinct_values(full, k)) > 1]
    for run, cfg in zip(runs, full):
        settings = ", ".join(f"{k}={format_setting(cfg.get(k))}" for k in keys)
        run.name = f"{run.model} ({settings})" if keys else run.model


def group_runs(runs: list[Run]) -> dict[str, dict[str, list[Run]]]:
    """group -> name -> runs; a group is an env and a step budget, a name a model and its settings.

    Runs with different budgets are not comparable (a longer run has more time to learn), so an
    env whose runs had several budgets is reported once per budget, as "<env> (<n> steps)".
    Runs of one model with different settings are reported apart (`name_variants`).
    """
    by_env: dict[str, dict[int, list[Run]]] = {}
    for run in runs:
        by_env.setdefault(run.env, {}).setdefault(run.budget, []).append(run)
    groups: dict[str, dict[str, list[Run]]] = {}
    for env, budgets in by_env.items():
        for budget, of_budget in sorted(budgets.items()):
            label = env if len(budgets) == 1 else f"{env} ({budget:,} steps)"
            by_model: dict[str, list[Run]] = {}
            for run in of_budget:
                by_model.setdefault(run.model, []).append(run)
            for model_runs in by_model.values():
                name_variants(model_runs)
                for run in model_runs:
                    groups.setdefault(label, {}).setdefault(run.name, []).append(run)
    return groups


# ---------------------------------------------------------------- learning curves


def curve_on_grid(curve: Curve, grid: np.ndarray) -> np.ndarray:
    """The curve linearly interpolated onto `grid`, NaN outside the logged steps.

    No extrapolation: a run that stopped early (or had not logged yet) says nothing there.
    """
    steps, values = curve
    out = np.full(grid.shape, np.nan)
    if len(steps):
        inside = (grid >= steps[0]) & (grid <= steps[-1])
        out[inside] = np.interp(grid[inside], steps, values)
    return out


def bootstrap_band(curves: np.ndarray, reps: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Mean over runs and its percentile bootstrap band, resampling runs with replacement.

    `curves` is [n_runs, n_points] with NaN where a run has no data. A resample is drawn as how
    often each run is picked, so every point of the grid uses the same resampled runs and memory
    stays [reps, n_points] however many runs there are.
    """
    n_runs = curves.shape[0]
    counts = rng.multinomial(n_runs, np.full(n_runs, 1.0 / n_runs), size=reps).astype(np.float64)
    has_data = np.isfinite(curves)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # grid points with no data at all stay NaN
        mean = np.nanmean(curves, axis=0)
        resampled = (counts @ np.where(has_data, curves, 0.0)) / (counts @ has_data)
        tail = (1.0 - CONFIDENCE) / 2 * 100
        low, high = np.nanpercentile(resampled, [tail, 100 - tail], axis=0)
    return mean, low, high


def plot_curves(env: str, metric: str, by_model: dict[str, list[Run]], budget: int, metric_steps: int, reps: int,
                out_path: Path, chance: float | None = None) -> None:
    """One PNG: mean over seeds per model with its 95% bootstrap band (and a chance line, if given)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid = np.linspace(0, budget, metric_steps)
    fig = Figure(figsize=(7.5, 4.5))
    FigureCanvasAgg(fig)  # render with Agg, whatever backend pyplot may have been given
    ax = fig.add_subplot()
    seeds = []
    for model, runs in by_model.items():
        runs = [r for r in runs if metric in r.scalars]
        if not runs:
            continue
        curves = np.stack([curve_on_grid(r.scalars[metric], grid) for r in runs])
        mean, low, high = bootstrap_band(curves, reps, np.random.default_rng(SEED))
        line = ax.plot(grid, mean, label=f"{model} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")[0]
        ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        seeds.append(f"{model} {len(runs)}")
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:g})")
    ax.set_title(f"{env}  (seeds per model: {', '.join(seeds)})", fontsize=10)
    ax.set_xlabel("env steps")
    ax.set_ylabel(Y_LABELS.get(metric, metric))
    ax.set_xlim(0, budget)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)


def curves_filename(env: str, metric: str) -> str:
    """``curves__<env>__<metric>.png`` with characters unsafe in file names replaced by ``_``."""
    safe = lambda text: "".join(c if c.isalnum() or c in "-._" else "_" for c in text)  # noqa: E731
    return f"curves__{safe(env)}__{safe(metric)}.png"


# ---------------------------------------------------------------- final performance (rliable)


def import_rliable():
    """rliable's library and metrics modules, or a UserError saying how to fix a broken install."""
    try:
        from rliable import library, metrics
    except Exception as err:  # noqa: BLE001 - whatever fails inside its imports, the fix is the install
        raise UserError(f"cannot import rliable ({type(err).__name__}: {str(err).splitlines()[0]}); rliable 1.2 "
                        "needs arch 7.x, which needs pandas<3") from None
    return library, metrics


@contextmanager
def seeded_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG for a block and restore it afterwards.

    rliable's bootstrap draws from numpy's global RNG (whatever random_state is passed), so this is
    the only way to make its intervals reproducible without disturbing the caller's random state.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def estimate(point: Any, interval: np.ndarray, index: int = 0) -> dict[str, float | None]:
    """{point, low, high} as plain floats for JSON."""
    point, interval = np.atleast_1d(point), np.asarray(interval).reshape(2, -1)
    return {"point": as_float(point[index]), "low": as_float(interval[0, index]), "high": as_float(interval[1, index])}


def as_float(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def final_scores(runs: list[Run], metric: str) -> np.ndarray:
    """The runs' final values of `metric` as rliable's [n_runs, n_tasks=1] matrix."""
    values = [r.final(metric) for r in runs]
    return np.array([v for v in values if v is not None], dtype=np.float64).reshape(-1, 1)


def aggregate(scores: np.ndarray, reps: int) -> dict[str, Any]:
    """IQM and mean over runs, each with a 95% stratified-bootstrap CI (one bootstrap for both)."""
    rly, metrics = import_rliable()
    both = lambda s: np.array([metrics.aggregate_iqm(s), metrics.aggregate_mean(s)])  # noqa: E731
    with seeded_numpy(SEED):
        points, intervals = rly.get_interval_estimates({"x": scores}, both, reps=reps,
                                                       confidence_interval_size=CONFIDENCE)
    return {"n": int(scores.shape[0]), "iqm": estimate(points["x"], intervals["x"], 0),
            "mean": estimate(points["x"], intervals["x"], 1)}


def probability_of_improvement(x: np.ndarray, y: np.ndarray, reps: int) -> dict[str, float | None]:
    """P(a random run of X beats a random run of Y), with a 95% bootstrap CI over both sets of runs."""
    rly, metrics = import_rliable()
    with seeded_numpy(SEED):
        points, intervals = rly.get_interval_estimates({"x>y": [x, y]}, metrics.probability_of_improvement,
                                                       reps=reps, confidence_interval_size=CONFIDENCE)
    return estimate(points["x>y"], intervals["x>y"])


AUC_POINTS = 501  # grid over [0, budget] on which the mean return over training is taken
RETURN = "rollout/ep_rew_mean"


def mean_return_over_training(run: Run) -> float | None:
    """The area under the return curve divided by the budget; None unless the run reached the budget.

    Before a run's first logged point (no episode had finished) it counts as its first value.
    """
    curve = run.scalars.get(RETURN)
    if curve is None or not len(curve[0]) or run.last_step < run.budget:
        return None
    grid = np.linspace(0, run.budget, AUC_POINTS)
    values = curve_on_grid(curve, grid)
    values[grid < curve[0][0]] = curve[1][0]
    return float(np.mean(values))


def steps_to_reach(run: Run, level: float) -> int | None:
    """The first logged env step at which the run's mean return is at least `level` (None: never)."""
    curve = run.scalars.get(RETURN)
    if curve is None:
        return None
    reached = np.flatnonzero(curve[1] >= level)
    return int(curve[0][reached[0]]) if len(reached) else None


def default_levels(by_model: dict[str, list[Run]]) -> list[float]:
    """50%, 80% and 90% of the best model's mean final return, to 2 significant digits (so that a
    small return, e.g. 0.02, still gives three distinct levels: 0.01, 0.016, 0.018)."""
    finals = [np.mean([v for v in (r.final(RETURN) for r in runs) if v is not None] or [np.nan])
              for runs in by_model.values()]
    best = np.nanmax(finals) if not np.all(np.isnan(finals)) else np.nan
    if not np.isfinite(best) or best <= 0:
        return []
    return list(dict.fromkeys(float(f"{f * best:.2g}") for f in (0.5, 0.8, 0.9)))


def sample_efficiency(by_model: dict[str, list[Run]], reps: int, levels: list[float] | None) -> dict[str, Any]:
    """Mean return over training per model (IQM, mean, CIs), P(improvement) on it, and steps to each level."""
    auc = {model: np.array([v for v in (mean_return_over_training(r) for r in runs) if v is not None]).reshape(-1, 1)
           for model, runs in by_model.items()}
    levels = default_levels(by_model) if levels is None else levels
    out: dict[str, Any] = {
        "levels": levels,
        "models": {model: aggregate(scores, reps) if len(scores) else None for model, scores in auc.items()},
        "steps_to_level": {model: [{"seed": r.seed, "steps": [steps_to_reach(r, level) for level in levels]}
                                   for r in runs] for model, runs in by_model.items()},
        "improvement": [],
    }
    for model, baseline in comparisons(by_model):
        x, y = auc[model], auc[baseline]
        if len(x) and len(y):
            out["improvement"].append({"model": model, "baseline": baseline, "n_model": len(x),
                                       "n_baseline": len(y), **probability_of_improvement(x, y, reps)})
    return out


def summarise_env(env: str, by_model: dict[str, list[Run]], reps: int,
                  levels: list[float] | None = None) -> dict[str, Any]:
    """Per model: runs, seeds, steps reached and final-performance statistics; the pairwise
    probabilities of improvement of memory models over baselines; sample efficiency."""
    budget = next(iter(by_model.values()))[0].budget
    models = {}
    for model, runs in by_model.items():
        reached = [r.last_step for r in runs]
        finals = {}
        for metric in METRICS:
            scores = final_scores(runs, metric)
            finals[metric] = aggregate(scores, reps) if len(scores) else None
        models[model] = {
            "runs": len(runs),
            "seeds": [r.seed for r in runs],
            "steps_reached": [min(reached), max(reached)],
            "stopped_early": [str(r.path) for r in runs if r.last_step < budget],
            "final": finals,
            "settings": settings_used(runs),
        }
        if env.startswith("popgym-"):  # the POPGym paper's measure beside ours
            mmer = np.array([v for v in (max_mean_return(r) for r in runs) if v is not None]).reshape(-1, 1)
            models[model]["mmer"] = aggregate(mmer, reps) if len(mmer) else None
    improvement = []
    for model, baseline in comparisons(by_model):
        for metric in METRICS:
            x, y = final_scores(by_model[model], metric), final_scores(by_model[baseline], metric)
            if len(x) and len(y):
                improvement.append({"model": model, "baseline": baseline, "metric": metric,
                                    "n_model": len(x), "n_baseline": len(y),
                                    **probability_of_improvement(x, y, reps)})
    places = sorted({r.where for model_runs in by_model.values() for r in model_runs})
    return {"n_steps": budget, "models": models, "improvement": improvement, "ran_on": places,
            "efficiency": sample_efficiency(by_model, reps, levels), "plots": {}}


# ---------------------------------------------------------------- the report


def format_interval(est: dict[str, float | None]) -> str:
    """``0.512 [0.401, 0.600]``."""
    fmt = lambda v: "nan" if v is None else f"{v:.3f}"  # noqa: E731
    return f"{fmt(est['point'])} [{fmt(est['low'])}, {fmt(est['high'])}]"


def format_estimate(stats: dict[str, Any] | None, key: str, runs: int) -> str:
    """An IQM or mean cell, noting how many runs logged the metric when not all did."""
    if stats is None:
        return "–"
    text = format_interval(stats[key])
    return text if stats["n"] == runs else f"{text} (n={stats['n']})"


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: per env a table of final performance, one of improvement probabilities, the plots."""
    lines = ["# Training report", "",
             f"{len(report['runs'])} runs. Final performance is the last logged value of each metric (an "
             f"average over the last 100 training episodes); IQM and mean over runs with {CONFIDENCE:.0%} "
             f"stratified-bootstrap CIs ({report['reps']} repetitions, seed {report['seed']}). Statistics are "
             "per env: returns are not comparable across envs. (n=k): only k of the runs logged the metric "
             "(the others never finished an episode).", ""]
    if not report["runs"]:
        lines = ["# Probe report", ""]
    for env, summary in report["envs"].items():
        ran_on = ", ".join(summary.get("ran_on", [])) or "?"
        mixed = " **Runs ran on different devices or env backends: seeds play out differently on each.**" \
            if len(summary.get("ran_on", [])) > 1 else ""
        chance = f" Chance success rate: {summary['chance_success']:g}." if summary.get("chance_success") is not None else ""
        lines += [f"## {env}", "", f"Budget: {summary['n_steps']:,} env steps. Ran on (device / env backend): "
                  f"{ran_on}.{mixed}{chance}", "", "### Summary", "", results_table(report, env), "",
                  "### Final performance", "",
                  "| model | runs (seeds) | env steps reached (min–max) | final return IQM [95% CI] | mean [95% CI] "
                  "| success rate IQM [95% CI] | mean [95% CI] |",
                  "|---|---|---|---|---|---|---|"]
        early_notes = []
        for model, stats in summary["models"].items():
            seeds = ", ".join(str(s) for s in stats["seeds"])
            low, high = stats["steps_reached"]
            reached = f"{low:,}–{high:,}"
            if stats["stopped_early"]:
                n_early = len(stats["stopped_early"])
                reached += f" ({n_early} run{'s' if n_early > 1 else ''} stopped early)"
                early_notes += [f"- {model}: `{path}`" for path in stats["stopped_early"]]
            cells = [format_estimate(stats["final"][m], key, stats["runs"]) for m in METRICS for key in ("iqm", "mean")]
            lines.append(f"| {model} | {stats['runs']} ({seeds}) | {reached} | {' | '.join(cells)} |")
        if early_notes:
            lines += ["", "Runs that stopped before the budget (their final values come from where they stopped, "
                      "and they add to the curves only up to their last logged step):", *early_notes]
        lines += ["", "### Probability of improvement", ""]
        if summary["improvement"]:
            lines += ["P(a random run of the model ends higher than a random run of the baseline, a model of a "
                      f"simpler kind), {CONFIDENCE:.0%} CI.", "",
                      "| model | baseline | metric | runs | P(improvement) [95% CI] |", "|---|---|---|---|---|"]
            for row in summary["improvement"]:
                lines.append(f"| {row['model']} | {row['baseline']} | {METRIC_NAMES[row['metric']]} "
                             f"| {row['n_model']} vs {row['n_baseline']} "
                             f"| {format_interval(row)} |")
        else:
            lines.append("No two models of different kinds (frozen LM, trained memory, no memory) both ran here.")
        lines += render_efficiency(summary["efficiency"], summary["models"])
        lines += render_settings(summary["models"])
        lines += ["", "### Learning curves", "",
                  f"Mean over seeds with a {CONFIDENCE:.0%} bootstrap band over seeds.", ""]
        lines += [f"- [{metric}]({name})" for metric, name in summary["plots"].items()]
        for metric, name in summary["plots"].items():
            lines += ["", f"![{env} {metric}]({name})"]
        lines.append("")
    lines += render_probes(report.get("probes", []), report.get("probe_plots"))
    return "\n".join(lines).rstrip() + "\n"


def plot_probes(env: str, kind: str, probes: list[dict[str, Any]], out_path: Path) -> None:
    """One PNG: held-out accuracy of each probed memory (solid, with its 95% interval over held-out
    episodes), of its current frame's CNN (dotted, the memory-free floor) and chance (grey),
    against steps since the cue left the view or k."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    chances = []
    for data in probes:
        probe = data[kind]
        if kind == "cue":
            keep = [j for j, b in enumerate(probe["buckets"]) if b.isdigit() and probe["memory"][j] is not None]
        else:
            keep = list(range(len(probe["k"])))
        xs = [int(probe["buckets"][j]) for j in keep] if kind == "cue" else probe["k"]
        series = {rep: [probe[rep][j] for j in keep] for rep in ("memory", "frame", "chance")}
        line = ax.plot(xs, series["memory"], marker="o", markersize=3,
                       label=f"{data['model']} ({data.get('what', '')}): memory")[0]
        intervals = probe.get("memory_ci")
        if intervals:  # 95% over held-out episodes
            ax.fill_between(xs, [intervals[j][0] for j in keep], [intervals[j][1] for j in keep],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        ax.plot(xs, series["frame"], color=line.get_color(), linestyle=":", linewidth=1,
                label=f"{data['model']}: current frame only")
        chances.append((xs, series["chance"]))
    for xs, chance in chances[:1]:
        ax.plot(xs, chance, color="grey", linestyle="--", linewidth=1, label="chance (majority class)")
    if kind == "cue":
        ax.set_xlabel("env steps since the cue was last in view")
    else:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k: attributes of the frame k steps back")
    ax.set_ylabel("held-out accuracy of a linear probe")
    ax.set_title(f"{env}: what the memory keeps ({'the cue' if kind == 'cue' else 'recall'})", fontsize=10)
    ax.set_ylim(0.3, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)


def results_table(report: dict[str, Any], env: str) -> str:
    """The README's results table of one env, rendered from report.json (a test keeps the two equal).

    Per model: runs, final return and success rate (IQM [95% CI]), mean return over training (IQM
    [95% CI]) and env steps to each return level (mean over the runs that reached it). On POPGym the
    paper's MMER replaces success and the levels: its returns are scaled to [-1, 1], so "ends on a
    positive reward" and fractions of the best return mean nothing there. Then the probability of
    improvement of every model over every simpler one, on both measures.
    """
    summary = report["envs"][env]
    eff = summary["efficiency"]
    popgym = env.startswith("popgym-")
    levels = " / ".join(f"{level:g}" for level in eff["levels"]) or "(no positive return: no levels)"
    over_training = "mean return over training, IQM [95% CI]"
    header = ["model", "runs", "final return, IQM [95% CI]"] + (
        [over_training, "MMER, IQM [95% CI]"] if popgym
        else ["success, IQM", over_training, f"env steps to a {levels} return (mean over runs that got there)"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, stats in summary["models"].items():
        final, success = stats["final"]["rollout/ep_rew_mean"], stats["final"]["rollout/success_rate"]
        auc, mmer = eff["models"].get(model), stats.get("mmer")
        final_cell, auc_cell = (format_interval(x["iqm"]) if x else "–" for x in (final, auc))
        if popgym:
            cells = [final_cell, auc_cell, format_interval(mmer["iqm"]) if mmer else "–"]
        elif not success:
            cells = ["–"] * 4
        else:
            reached = []
            for i in range(len(eff["levels"])):
                steps = [row["steps"][i] for row in eff["steps_to_level"][model] if row["steps"][i] is not None]
                missing = stats["runs"] - len(steps)
                text = f"{np.mean(steps) / 1000:.0f}k" if steps else "never"
                reached.append(text + (f" ({missing} never)" if steps and missing else ""))
            cells = [final_cell, f"{success['iqm']['point']:.0%}", auc_cell, " / ".join(reached)]
        lines.append(f"| {model} | {stats['runs']} | " + " | ".join(cells) + " |")
    rows = {(r["model"], r["baseline"]): r for r in eff["improvement"]}
    final_rows = {(r["model"], r["baseline"]): r for r in summary["improvement"] if r["metric"] == "rollout/ep_rew_mean"}
    if final_rows:
        lines += ["", "| model | baseline | P(higher mean return over training) [95% CI] | P(higher final return) [95% CI] |",
                  "|---|---|---|---|"]
        for pair, row in final_rows.items():
            over_training = format_interval(rows[pair]) if pair in rows else "–"
            lines.append(f"| {pair[0]} | {pair[1]} | {over_training} | {format_interval(row)} |")
    return "\n".join(lines)


def render_probes(probes: list[dict[str, Any]], plots: dict[str, dict[str, str]] | None = None) -> list[str]:
    """The probe.py results found beside the runs: held-out accuracy of memory / frame (no memory) / chance."""
    if not probes:
        return []
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    cell = lambda probe, at: " / ".join(fmt(probe[at][rep]) for rep in ("memory", "frame", "chance")) if at in probe else "–"  # noqa: E731
    lines = ["## Probes", "",
             "Linear probes (`probe.py`) on what each memory gives its policy, held-out accuracy as memory / "
             "current frame's CNN (no memory) / chance. Cue: the cue s steps after it was last in view; recall: "
             "the attributes of the frame k steps back.", "",
             "| env | model | agent | cue s=1 | s=4 | s=16 | recall k=1 | k=8 | k=32 | details |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in probes:
        cue, recall = p.get("cue", {}), p.get("recall", {})
        lines.append(f"| {p['env']} | {p['model']} | {p['what']} | {cell(cue, '1')} | {cell(cue, '4')} | {cell(cue, '16')} "
                     f"| {cell(recall, '1')} | {cell(recall, '8')} | {cell(recall, '32')} "
                     f"| [probe.md]({p['path']}/probe.md) |")
    for env, files in (plots or {}).items():
        lines += ["", *[f"![{env} probe {kind}]({name})" for kind, name in files.items()]]
    return [*lines, ""]


def render_efficiency(eff: dict[str, Any], models: dict[str, Any]) -> list[str]:
    """The sample-efficiency part of an env's section."""
    lines = ["", "### Sample efficiency", "",
             "Mean return over training: the area under a run's return curve divided by the budget "
             "(only runs that reached the budget). Higher means it learned sooner.", "",
             "| model | runs | IQM [95% CI] | mean [95% CI] |", "|---|---|---|---|"]
    for model, stats in eff["models"].items():
        n = stats["n"] if stats else 0
        lines.append(f"| {model} | {n} of {models[model]['runs']} | {format_estimate(stats, 'iqm', n)} "
                     f"| {format_estimate(stats, 'mean', n)} |")
    if eff["improvement"]:
        lines += ["", "| model | baseline | runs | P(higher mean return over training) [95% CI] |",
                  "|---|---|---|---|"]
        lines += [f"| {row['model']} | {row['baseline']} | {row['n_model']} vs {row['n_baseline']} "
                  f"| {format_interval(row)} |" for row in eff["improvement"]]
    if eff["levels"]:
        header = " | ".join(f"{level:g}" for level in eff["levels"])
        lines += ["", "Env steps until a run's mean return first reaches each level (–: not reached):", "",
                  f"| model | seed | {header} |", "|---|---|" + "---|" * len(eff["levels"])]
        for model, rows in eff["steps_to_level"].items():
            for row in rows:
                cells = " | ".join("–" if v is None else f"{v / 1000:.0f}k" if v >= 10_000 else str(v)
                                   for v in row["steps"])
                lines.append(f"| {model} | {row['seed']} | {cells} |")
    return lines


def render_settings(models: dict[str, Any]) -> list[str]:
    """Every setting the runs of each model used: the shared ones in a table, per model."""
    if not all("settings" in stats for stats in models.values()):
        return []
    names = list(models)
    keys = sorted({k for stats in models.values() for k in stats["settings"]})
    cell = lambda v: "–" if v is None else ", ".join(map(str, v)) if isinstance(v, list) else str(v)  # noqa: E731
    lines = ["", "### Settings", "", "Every config key of the runs (a list where runs of a model differed).", "",
             f"| key | {' | '.join(names)} |", "|---|" + "---|" * len(names)]
    for key in keys:
        lines.append(f"| `{key}` | " + " | ".join(cell(models[m]["settings"].get(key)) for m in names) + " |")
    return lines


def prepare_out_dir(out_dir: Path) -> None:
    """Create `out_dir` up front so that a bad --out fails before any work is done."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the output directory {out_dir}: {err.strerror or err}") from None
    if not os.access(out_dir, os.W_OK):
        raise UserError(f"output directory {out_dir} is not writable")


def write_out(action: Callable[[], Any], path: Path) -> None:
    """Run a write, turning an OS error into a one-line UserError."""
    try:
        action()
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None


def build_report(paths: Iterable[str | Path], out_dir: str | Path, metric_steps: int = 100,
                 reps: int = 2000, levels: list[float] | None = None,
                 chance: float | None = None) -> dict[str, Any]:
    """Write report.md, report.json and the curve PNGs into `out_dir`; return what report.json holds."""
    if metric_steps < 2:
        raise UserError(f"--metric-steps must be at least 2, got {metric_steps}")
    if reps < 1:
        raise UserError(f"--reps must be at least 1, got {reps}")
    paths, out_dir = [Path(p) for p in paths], Path(out_dir)
    probes = find_probes(paths)
    groups = group_runs(load_runs(paths)) if find_run_dirs(paths) or not probes else {}
    prepare_out_dir(out_dir)
    runs = [r for by_model in groups.values() for model_runs in by_model.values() for r in model_runs]
    report: dict[str, Any] = {
        # paths relative to the report: report.json holds no machine's folders
        "paths": [os.path.relpath(p, out_dir) for p in paths],
        "metric_steps": metric_steps,
        "reps": reps,
        "seed": SEED,
        "confidence": CONFIDENCE,
        "runs": [{"path": os.path.relpath(r.path, out_dir), "env": r.env, "model": r.model, "name": r.name,
                  "seed": r.seed, "n_steps": r.budget,
                  "last_step": r.last_step, "ran_on": r.where, "final": {m: r.final(m) for m in METRICS}}
                 for r in runs],
        "envs": {},
    }
    for env, by_model in groups.items():
        by_model = dict(sorted(by_model.items(), key=lambda item: model_rank(item[0])))
        summary = summarise_env(env, by_model, reps, levels)
        for stats in summary["models"].values():
            stats["stopped_early"] = [os.path.relpath(path, out_dir) for path in stats["stopped_early"]]
        summary["chance_success"] = chance_success(env, chance)
        for metric in METRICS:
            if any(metric in r.scalars for model_runs in by_model.values() for r in model_runs):
                name = curves_filename(env, metric)
                line = summary["chance_success"] if metric == "rollout/success_rate" else None
                write_out(lambda: plot_curves(env, metric, by_model, summary["n_steps"], metric_steps, reps,
                                              out_dir / name, line), out_dir / name)
                summary["plots"][metric] = name
        report["envs"][env] = summary
    report["probes"] = [probe_summary(folder, data, out_dir) for folder, data in probes]
    report["probe_plots"] = {}
    for env in dict.fromkeys(data["env"] for _, data in probes):
        for kind in ("cue", "recall"):
            of_env = [data for _, data in probes if data["env"] == env and data.get(kind)]
            if of_env:
                name = curves_filename(env, f"probe_{kind}")
                write_out(lambda: plot_probes(env, kind, of_env, out_dir / name), out_dir / name)
                report["probe_plots"].setdefault(env, {})[kind] = name
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    write_out(lambda: json_path.write_text(json.dumps(report, indent=2) + "\n"), json_path)
    write_out(lambda: md_path.write_text(render_markdown(report)), md_path)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run directories or directories above them")
    parser.add_argument("--out", required=True, metavar="DIR", help="where report.md, report.json and the PNGs go")
    parser.add_argument("--metric-steps", type=int, default=100, metavar="N",
                        help="points of the common step grid of the learning curves (default: 100)")
    parser.add_argument("--reps", type=int, default=2000, metavar="N",
                        help="bootstrap repetitions for the confidence intervals (default: 2000)")
    parser.add_argument("--levels", type=_levels, default=None, metavar="R1,R2,...",
                        help="return levels for the steps-to-level table (default: 50/80/90%% of the best final return)")
    parser.add_argument("--chance-success", type=float, default=None, metavar="P",
                        help="chance success rate to draw on the success plots (default: known per task, e.g. 0.5 on "
                             "MiniGrid-Memory)")
    return parser.parse_args(argv)


def _levels(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = build_report(args.paths, args.out, args.metric_steps, args.reps, args.levels, args.chance_success)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report of {len(report['runs'])} runs in {len(report['envs'])} env(s): {Path(args.out) / 'report.md'}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
