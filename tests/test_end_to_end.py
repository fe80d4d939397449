"""Short real runs of main.py and eval.py for every model."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, run_main
from utils.checkpoint import load_checkpoint

BASELINES = ["CNN-PPO", "Impala-PPO"]
TRAINED_MEMORIES = ["LSTM-PPO", "GRU-PPO", "TrXL-PPO"]  # the memory zoo beside the papers' baselines


def _run_dir(experiments: Path) -> Path:
    (run,) = [p for p in experiments.glob("*/*/*") if p.is_dir()]
    return run


def _scalars(run_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("model", BASELINES + TRAINED_MEMORIES)
def test_train_resume_and_eval(model, experiments, tmp_path, capsys):
    assert run_main("--var", f"model={model}", "--var", "env=CueRecall-D1-v0", "--run-id", "r",
                    experiments=experiments) == 0
    run = _run_dir(experiments)
    assert {"config.json", "ckpt_last.pt", "ckpt_best.pt"} <= {p.name for p in run.iterdir()}
    scalars = _scalars(run)
    for tag in ["time/fps", "train/policy_loss", "train/value_loss", "train/entropy", "train/approx_kl",
                "train/clip_fraction", "train/explained_variance", "train/learning_rate", "train/ent_coef"]:
        assert tag in scalars, tag
    assert load_checkpoint(run / "ckpt_last.pt")["step"] == 64

    import main

    assert main.main(["--resume", str(run), "--var", "n_steps=96", "--no-progress"]) == 0
    assert load_checkpoint(run / "ckpt_last.pt")["step"] == 96

    import eval as evaluate

    out = tmp_path / "eval"
    assert evaluate.main(["--ckpt-path", str(run), "--n-episodes", "2", "--video", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 2
    assert (out / "episodes.npz").is_file() and (out / "episodes.gif").stat().st_size > 0
    assert "return" in capsys.readouterr().out


@pytest.mark.parametrize("model", BASELINES + TRAINED_MEMORIES)
def test_trains_on_minigrid(model, experiments):
    assert run_main("--var", f"model={model}", "--var", "env=MiniGrid-MemoryS7-v0", experiments=experiments) == 0
    assert load_checkpoint(_run_dir(experiments) / "ckpt_last.pt")["step"] == 64


def test_episode_statistics_are_logged(experiments):
    # CueRecall-D1 episodes last 3 steps, so a tiny run finishes many of them
    assert run_main("--var", "model=CNN-PPO", "--var", "env=CueRecall-D1-v0", experiments=experiments) == 0
    scalars = _scalars(_run_dir(experiments))
    assert scalars["rollout/ep_len_mean"][-1] == 3.0
    assert 0.0 <= scalars["rollout/success_rate"][-1] <= 1.0
    assert "rollout/ep_rew_mean" in scalars


def test_same_seed_gives_the_same_first_update(experiments):
    losses = []
    for run_id in ("a", "b"):
        assert run_main("--var", "model=CNN-PPO", "--var", "n_steps=32", "--run-id", run_id,
                        experiments=experiments) == 0
        run = next(experiments.glob(f"*/*/{run_id}"))
        losses.append({k: v for k, v in _scalars(run).items() if k.startswith("train/")})
    assert losses[0] == losses[1]


def test_existing_run_directory_is_never_overwritten(experiments, capsys):
    assert run_main("--var", "model=CNN-PPO", "--var", "n_steps=32", "--run-id", "x", experiments=experiments) == 0
    before = (next(experiments.glob("*/*/x")) / "ckpt_last.pt").stat().st_mtime_ns
    assert run_main("--var", "model=CNN-PPO", "--run-id", "x", experiments=experiments) == 2
    assert "already exists" in capsys.readouterr().err
    assert (next(experiments.glob("*/*/x")) / "ckpt_last.pt").stat().st_mtime_ns == before
    # without --run-id two runs in the same second still get distinct directories
    assert run_main("--var", "model=CNN-PPO", "--var", "n_steps=32", experiments=experiments) == 0
    assert run_main("--var", "model=CNN-PPO", "--var", "n_steps=32", experiments=experiments) == 0
    assert len(list(experiments.glob("*/*/*"))) == 3


def test_eval_errors_are_one_line(tmp_path):
    corrupt = tmp_path / "ckpt_best.pt"
    corrupt.write_bytes(b"garbage")
    for path in (tmp_path / "missing", corrupt):
        proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--ckpt-path", str(path)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")


def test_ctrl_c_saves_a_checkpoint_that_resumes(experiments):
    cmd = [sys.executable, str(ROOT / "main.py"), *TINY, "--var", "model=CNN-PPO", "--var", "n_steps=1000000",
           "--var", "env=CueRecall-D1-v0", "--run-id", "int", "--experiments-dir", str(experiments), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = experiments / "CNN-PPO" / "CueRecall-D1-v0" / "int"
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "ckpt_best.pt").exists():  # written after the first update
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    step = load_checkpoint(run / "ckpt_last.pt")["step"]
    assert step > 0

    import main

    assert main.main(["--resume", str(run), "--var", f"n_steps={step + 32}", "--no-progress"]) == 0
    assert load_checkpoint(run / "ckpt_last.pt")["step"] == step + 32


def test_ctrl_c_during_start_up_is_a_clean_exit(monkeypatch, experiments, capsys):
    import main

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(main, "setup", interrupted)
    assert main.main(["--no-progress", "--experiments-dir", str(experiments)]) == 130
    assert capsys.readouterr().err.strip().startswith("interrupted")


def test_non_finite_loss_stops_with_a_clear_message(experiments, capsys, monkeypatch):
    from models.base import MemoryAgent

    original = MemoryAgent.evaluate

    def poisoned(self, batch):
        log_probs, entropy, values = original(self, batch)
        return log_probs, entropy, values * float("nan")

    monkeypatch.setattr(MemoryAgent, "evaluate", poisoned)
    assert run_main("--var", "model=CNN-PPO", "--run-id", "nan", experiments=experiments) == 1
    assert "non-finite loss" in capsys.readouterr().err
