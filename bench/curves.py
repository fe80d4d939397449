"""Learning curves from TensorBoard event files: mean over seeds with the min-max band."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_scalars(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: (np.array([e.step for e in acc.Scalars(tag)]), np.array([e.value for e in acc.Scalars(tag)]))
            for tag in acc.Tags()["scalars"]}


def plot_curves(runs: Path, out: Path, tag: str = "rollout/ep_rew_mean") -> None:
    """One panel per env, one line per model (mean over seeds, shaded min-max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({p.parent.name for p in runs.glob("*/*/seed*")})
    if not envs:
        return
    fig, axes = plt.subplots(1, len(envs), figsize=(5.5 * len(envs), 4), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for model_dir in sorted(runs.glob(f"*/{env}")):
            curves = [load_scalars(r).get(tag) for r in sorted(model_dir.glob("seed*"))]
            curves = [c for c in curves if c is not None and len(c[0])]
            if not curves:
                continue
            grid = np.linspace(max(c[0][0] for c in curves), min(c[0][-1] for c in curves), 100)
            ys = np.stack([np.interp(grid, steps, values) for steps, values in curves])
            line = ax.plot(grid, ys.mean(0), label=f"{model_dir.parent.name} ({len(curves)} seeds)")[0]
            ax.fill_between(grid, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2)
        ax.set_title(env)
        ax.set_xlabel("env steps")
        ax.set_ylabel("mean return (last 100 episodes)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
