"""Faults during training: signals, hard kills, full disks, non-finite values, old checkpoints, resumes."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY, run_main
from utils.checkpoint import FORMAT, load_checkpoint

CNN = ["--var", "model=CNN-PPO", "--var", "env=CueRecall-D1-v0"]


def _scalar_steps(run_dir: Path, tag: str = "train/loss") -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return [event.step for event in acc.Scalars(tag)]


def _start(experiments: Path, run_id: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "main.py"), *TINY, *CNN, "--var", "n_steps=10000000", *extra,
           "--run-id", run_id, "--experiments-dir", str(experiments), "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def _run(experiments: Path, run_id: str) -> Path:
    return experiments / "CNN-PPO" / "CueRecall-D1-v0" / run_id


# -- signals and kills -------------------------------------------------------------------------


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_saves_and_prints_the_resume_command(sig, code, experiments):
    proc = _start(experiments, "s", "--var", "ckpt_last_every_s=1000")
    run = _run(experiments, "s")
    _wait_for(run / "ckpt_best.pt", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "resume with:" in err and f"main.py --resume {run}" in err and "Traceback" not in err
    step = load_checkpoint(run / "ckpt_last.pt")["step"]
    assert step > 0 and step % 32 == 0  # whole rollouts only (2 envs x 16 steps)


def test_a_second_ctrl_c_does_not_cut_the_final_save(experiments, monkeypatch, one_thread):
    """Ctrl-C twice: the second arrives while ckpt_last.pt is being written, which must still finish."""
    from trainers.ppo import PPOTrainer

    original = PPOTrainer.save
    calls = []

    def save(self, name):
        calls.append(name)
        if self.stop_requested and name == "ckpt_last.pt":
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, during the final save
            time.sleep(0.05)
        original(self, name)

    def env_step_then_ctrl_c(self, step_fn):
        def stepped(actions):
            if self.n_updates == 2 and not self.stop_requested:
                os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C, mid-rollout
            return step_fn(actions)
        return stepped

    monkeypatch.setattr(PPOTrainer, "save", save)
    original_begin = PPOTrainer.begin

    def begin(self):
        original_begin(self)
        self.envs.step = env_step_then_ctrl_c(self, self.envs.step)

    monkeypatch.setattr(PPOTrainer, "begin", begin)
    assert run_main(*CNN, "--var", "n_steps=100000", "--var", "ckpt_last_every_s=1000", "--run-id", "twice",
                    experiments=experiments) == 130
    run = _run(experiments, "twice")
    assert calls[-1] == "ckpt_last.pt"
    assert load_checkpoint(run / "ckpt_last.pt")["step"] == 64  # the partial third rollout is not counted
    assert not list(run.glob(".ckpt_*"))


def test_sigkill_loses_at_most_one_update_and_resume_cleans_up(experiments):
    """ckpt_last_every_s=0: a checkpoint after every update, so a SIGKILL at any time loses < 1 update."""
    proc = _start(experiments, "k", "--var", "ckpt_last_every_s=0")
    run = _run(experiments, "k")
    _wait_for(run / "ckpt_last.pt", proc)
    time.sleep(1.5)
    proc.kill()
    proc.communicate(timeout=60)
    saved = load_checkpoint(run / "ckpt_last.pt")["step"]
    (run / ".ckpt_last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # what a kill mid-write leaves

    import main

    assert main.main(["--resume", str(run), "--var", f"n_steps={saved + 64}", "--no-progress"]) == 0
    assert load_checkpoint(run / "ckpt_last.pt")["step"] == saved + 64
    assert not list(run.glob(".ckpt_*"))


def test_ckpt_last_cadence_bounds_the_work_a_kill_loses(monkeypatch, experiments, one_thread):
    """With a fake clock: updates of 7 s each, cadence 30 s -> unsaved work never exceeds 30 s (+0)."""
    import trainers.ppo as ppo

    clock = [0.0]
    monkeypatch.setattr(ppo.time, "monotonic", lambda: clock[0])
    original_update = ppo.PPOTrainer.update

    def slow_update(self):
        clock[0] += 7.0
        return original_update(self)

    saves = []
    original_save = ppo.PPOTrainer.save

    def save(self, name):
        if name == "ckpt_last.pt":
            saves.append(clock[0])
        original_save(self, name)

    monkeypatch.setattr(ppo.PPOTrainer, "update", slow_update)
    monkeypatch.setattr(ppo.PPOTrainer, "save", save)
    assert run_main(*CNN, "--var", "n_steps=640", "--run-id", "c", experiments=experiments) == 0
    gaps = np.diff([0.0, *saves])
    assert saves[-1] == 20 * 7.0 and max(gaps) <= 30.0 and min(gaps[:-1]) >= 21.0, saves


# -- resume fidelity -----------------------------------------------------------------------------


def test_resume_has_no_gap_and_no_duplicate_in_tensorboard(experiments, one_thread):
    import main

    assert run_main(*CNN, "--var", "ckpt_last_every_s=0", "--run-id", "tb", experiments=experiments) == 0
    run = _run(experiments, "tb")
    kept = (run / "ckpt_last.pt").read_bytes()  # step 64
    assert main.main(["--resume", str(run), "--var", "n_steps=96", "--no-progress"]) == 0
    # a kill after the update at 96 was logged but before its checkpoint: 96's events must be dropped
    (run / "ckpt_last.pt").write_bytes(kept)
    assert main.main(["--resume", str(run), "--var", "n_steps=128", "--no-progress"]) == 0
    assert _scalar_steps(run) == [32, 64, 96, 128]


def test_an_interrupted_run_ends_where_an_uninterrupted_one_does(experiments, monkeypatch, one_thread):
    from trainers.ppo import PPOTrainer

    import main

    assert run_main(*CNN, "--var", "n_steps=100", "--run-id", "whole", experiments=experiments) == 0
    whole = load_checkpoint(_run(experiments, "whole") / "ckpt_last.pt")["step"]

    original_begin = PPOTrainer.begin

    def begin(self):  # Ctrl-C in the middle of the second rollout
        original_begin(self)
        step_fn = self.envs.step

        def stepped(actions):
            if self.n_updates == 1 and self.step == 40:
                self.stop_requested = True
            return step_fn(actions)

        self.envs.step = stepped

    monkeypatch.setattr(PPOTrainer, "begin", begin)
    assert run_main(*CNN, "--var", "n_steps=100", "--run-id", "cut", experiments=experiments) == 130
    run = _run(experiments, "cut")
    assert load_checkpoint(run / "ckpt_last.pt")["step"] == 32
    monkeypatch.setattr(PPOTrainer, "begin", original_begin)
    assert main.main(["--resume", str(run), "--no-progress"]) == 0
    assert load_checkpoint(run / "ckpt_last.pt")["step"] == whole == 128  # n_steps rounded up to whole rollouts


def test_an_old_format_checkpoint_resumes_with_the_new_keys_defaults(experiments, one_thread):
    """A format-1 checkpoint: its config predates mem_reset, best_min_episodes and ckpt_last_every_s."""
    import main

    assert run_main(*CNN, "--run-id", "old", experiments=experiments) == 0
    run = _run(experiments, "old")
    payload = torch.load(run / "ckpt_last.pt", weights_only=False)
    config = {k: v for k, v in payload["config"].items() if k not in ("mem_reset", "best_min_episodes", "ckpt_last_every_s")}
    config["save_ckpt"] = 1  # format 1 stored it as an int
    stats = {k: v for k, v in payload["episode_stats"].items() if k != "recent_successes"}
    # format 1 named CNN-PPO's CNN `cnn.*` (today `encoder.*`)
    agent = {("cnn." + k[len("encoder."):] if k.startswith("encoder.") else k): v for k, v in payload["agent"].items()}
    assert any(k.startswith("cnn.") for k in agent)
    torch.save({**payload, "format": 1, "config": config, "agent": agent, "episode_stats": stats,
                "best_mean_return": 0.9}, run / "ckpt_last.pt")
    assert main.main(["--resume", str(run), "--var", "n_steps=96", "--no-progress"]) == 0
    resumed = load_checkpoint(run / "ckpt_last.pt")
    assert resumed["format"] == FORMAT and resumed["step"] == 96
    assert resumed["config"]["best_min_episodes"] == 100 and resumed["config"]["save_ckpt"] is True
    assert json.loads((run / "config.json").read_text())["mem_reset"] == "auto"


# -- full disk -------------------------------------------------------------------------------------


def test_a_full_disk_during_a_checkpoint_is_one_line(experiments, monkeypatch, capsys, one_thread):
    import utils.checkpoint as checkpoint

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    assert run_main(*CNN, "--run-id", "full", experiments=experiments) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot write checkpoint ") and "No space left on device" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not list(_run(experiments, "full").glob(".ckpt_*"))


def test_a_full_disk_under_tensorboard_is_one_line(experiments, monkeypatch, capsys, one_thread):
    from torch.utils.tensorboard import SummaryWriter

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "events.out.tfevents")

    monkeypatch.setattr(SummaryWriter, "add_scalar", full)
    assert run_main(*CNN, "--run-id", "tbfull", experiments=experiments) == 1
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error")]
    assert line.startswith("error: No space left on device (events.out.tfevents)")


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="mounting a tmpfs needs root on Linux")
def test_a_really_full_disk(tmp_path, capsys, one_thread):
    """A 1 MiB tmpfs cannot hold a CNN-PPO checkpoint: the run stops with one line."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("tmpfs mount not permitted here")
    try:
        code = run_main(*CNN, "--run-id", "t", experiments=mount / "experiments")
        lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error")]
        assert code in (1, 2) and len(lines) == 1 and "No space left on device" in lines[0]
        assert not list((mount / "experiments").rglob(".ckpt_*"))
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# -- non-finite values and ckpt_best -------------------------------------------------------------


def test_non_finite_weights_stop_the_run_and_keep_the_last_good_checkpoint(experiments, monkeypatch, capsys,
                                                                          one_thread):
    from trainers.ppo import PPOTrainer

    original = PPOTrainer.update
    # poison the weights through the optimizer: the check runs at the end of update()
    original_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        out = original_step(self, *args, **kwargs)
        if getattr(self, "_poison", False):
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    def update(self):
        self.optimizer._poison = self.n_updates == 1
        return original(self)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    monkeypatch.setattr(PPOTrainer, "update", update)
    assert run_main(*CNN, "--var", "ckpt_last_every_s=0", "--run-id", "nan", experiments=experiments) == 1
    err = capsys.readouterr().err
    assert "error: non-finite weights during the update at step 64" in err and "last good checkpoint kept" in err
    for name in ("ckpt_last.pt", "ckpt_best.pt"):
        state = load_checkpoint(_run(experiments, "nan") / name)
        assert state["step"] == 32
        assert all(torch.isfinite(v).all() for v in state["agent"].values() if v.is_floating_point())


def test_ckpt_best_needs_a_full_window(experiments, one_thread):
    # CueRecall-D1 episodes last 3 steps: 64 steps finish about 20 episodes, fewer than 100
    assert run_main(*CNN, "--var", "best_min_episodes=100", "--run-id", "w", experiments=experiments) == 0
    run = _run(experiments, "w")
    assert (run / "ckpt_last.pt").exists() and not (run / "ckpt_best.pt").exists()


def test_progress_text_says_how_many_episodes_the_mean_is_over():
    from trainers.ppo import PPOTrainer

    assert PPOTrainer.return_text({}) == "no episode finished yet"
    assert PPOTrainer.return_text({"rollout/ep_rew_mean": 0.488, "rollout/episodes_in_mean": 2.0}) == "ret=0.488 (2 ep)"
    assert PPOTrainer.return_text({"rollout/ep_rew_mean": 0.07, "rollout/episodes_in_mean": 100.0}) == "ret=0.070"


def test_default_threads_follow_the_idle_cores(monkeypatch):
    from trainers import run as run_lib

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.1, 2.0, 2.0))
    assert run_lib.idle_cores() == 1  # busy: one thread
    monkeypatch.setattr(os, "getloadavg", lambda: (0.05, 0.1, 0.1))
    assert run_lib.idle_cores() == 2  # quiet: every core


def test_eval_says_which_checkpoint_it_loads(experiments, tmp_path, capsys, one_thread):
    import eval as evaluate

    assert run_main(*CNN, "--run-id", "e", experiments=experiments) == 0
    run = _run(experiments, "e")
    capsys.readouterr()
    assert evaluate.main(["--ckpt-path", str(run), "--n-episodes", "1", "--no-progress", "--out", str(tmp_path / "a")]) == 0
    assert f"loading {run / 'ckpt_best.pt'} (the best policy, mean training return " in capsys.readouterr().err
    (run / "ckpt_best.pt").unlink()  # no full window yet: the last state
    assert evaluate.main(["--ckpt-path", str(run), "--n-episodes", "1", "--no-progress", "--out", str(tmp_path / "b")]) == 0
    assert f"loading {run / 'ckpt_last.pt'} (the last state, step 64)" in capsys.readouterr().err
