import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Tiny settings that make a run of main.py take seconds.
TINY = [
    "--var", "n_envs=2", "--var", "n_rollout_steps=16", "--var", "n_batches=2", "--var", "n_epochs=1",
    "--var", "n_steps=64", "--var", "seed=1", "--var", "torch_threads=1",
    "--var", "best_min_episodes=1",  # tiny runs finish few episodes: a best from any window
]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine OpenMP spinning makes them 100x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def experiments(tmp_path):
    return tmp_path / "experiments"


def run_main(*args, experiments: Path):
    import main

    return main.main([*TINY, *args, "--experiments-dir", str(experiments), "--no-progress"])
