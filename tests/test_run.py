"""The one training entry point (`trainers.run.train`) that main.py, sweeps and benchmarks share."""

from __future__ import annotations

import json
import threading

from trainers.run import new_run_dir, train
from utils.checkpoint import load_checkpoint
from utils.config import defaults


def _cfg(**kw):
    return defaults() | {"model": "CNN-PPO", "env": "CueRecall-D1-v0", "n_envs": 2, "n_rollout_steps": 8,
                         "n_batches": 2, "n_epochs": 1, "n_steps": 32, "seed": 1} | kw


def test_train_writes_a_run_and_reports_every_update(tmp_path):
    cfg = _cfg()
    run_dir = new_run_dir(cfg, tmp_path, "r")
    assert not run_dir.exists()  # created only once the agent is built
    seen = []
    status, logs = train(cfg, run_dir, on_update=lambda logs, step: seen.append((step, logs["train/loss"])))
    assert status == "done" and [s for s, _ in seen] == [16, 32]
    assert json.loads((run_dir / "config.json").read_text()) == cfg
    assert load_checkpoint(run_dir / "ckpt_last.pt")["step"] == 32 and any(run_dir.glob("events.out.tfevents.*"))
    assert "rollout/ep_rew_mean" in logs

    checkpoint = load_checkpoint(run_dir / "ckpt_last.pt")
    cfg2 = dict(checkpoint["config"], n_steps=48)
    status, _ = train(cfg2, run_dir, checkpoint=checkpoint)
    assert status == "done" and load_checkpoint(run_dir / "ckpt_last.pt")["step"] == 48
    # every start and resume records where it ran, so a report can tell runs that moved
    segments = json.loads((run_dir / "runtime.json").read_text())["segments"]
    assert [(s["from_step"], s["device"], s["env_backend"], s["vec_env"]) for s in segments] == [
        (0, "cpu", "cuerecall", "sync"), (32, "cpu", "cuerecall", "sync")]


def test_train_runs_outside_the_main_thread(tmp_path):
    """A Ray Tune trial runs its function in a worker thread, where no signal handler may be set."""
    result = {}
    cfg = _cfg(n_steps=16)
    worker = threading.Thread(target=lambda: result.update(out=train(cfg, tmp_path / "run")))
    worker.start()
    worker.join(timeout=120)
    assert result["out"][0] == "done"
