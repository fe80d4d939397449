from pathlib import Path


def final_success(run_dir: Path) -> float:
    """Success rate over the last 100 training episodes, as logged at the end of the run."""
    from bench.curves import load_scalars

    return float(load_scalars(run_dir)["rollout/success_rate"][1][-1])
