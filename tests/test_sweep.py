"""sweep.py on Ray Tune: trials as normal run directories, failures reported, interrupt and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

import sweep  # noqa: E402
from utils.checkpoint import load_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = {"env": "CueRecall-D1-v0", "n_envs": 2, "n_rollout_steps": 8, "n_batches": 2, "n_epochs": 1, "n_steps": 32}


def write_config(path: Path, **values) -> str:
    path.write_text(json.dumps(TINY | values))
    return str(path)


def run_sweep(*args: str, cwd: Path, wait: bool = True):
    env = dict(os.environ, RAY_DEDUP_LOGS="0", TRANSFORMERS_VERBOSITY="error")
    command = [sys.executable, str(ROOT / "sweep.py"), *args]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def steps(run_dir: Path) -> int:
    return load_checkpoint(run_dir / "ckpt_last.pt")["step"]


@pytest.mark.slow
def test_two_configs_two_seeds_and_a_failing_trial(tmp_path):
    cnn = write_config(tmp_path / "cnn.json", model="CNN-PPO")
    lstm = write_config(tmp_path / "lstm.json", model="Impala-PPO")
    broken = write_config(tmp_path / "broken.json", model="HELM", lm=str(tmp_path / "no-such-lm"))
    done = run_sweep("--config", cnn, lstm, broken, "--seeds", "2", "--name", "t", "--experiments-dir", "exp", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr  # one config failed, the others finished
    exp = tmp_path / "exp"
    for model in ("CNN-PPO", "Impala-PPO"):
        for seed in (1, 2):
            run = exp / model / "CueRecall-D1-v0" / f"t-seed{seed}"
            assert steps(run) == 32 and any(run.glob("events.out.tfevents.*"))
            assert json.loads((run / "config.json").read_text())["seed"] == seed
    failed = [line for line in done.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 2 and all("no-such-lm" in line for line in failed)
    state = json.loads((exp / "sweeps" / "t" / "sweep.json").read_text())
    assert len(state["trials"]) == 6
    # quiet: one compact table with the trials' full names, no traceback above the failed: lines,
    # none of Ray's hints (Tuner.restore, tensorboard --logdir /tmp/ray/...), no Ray files in exp/
    output = done.stdout + done.stderr
    assert "Traceback" not in output and "Tuner.restore" not in output and "/tmp/ray" not in output, output
    assert "CNN-PPO-t-seed1" in output and len(output.splitlines()) < 80, output
    assert sorted(p.name for p in (exp / "sweeps" / "t").iterdir()) == ["sweep.json"]
    assert not list(exp.rglob("*tune*"))

    # resuming a sweep whose trials all ended reruns only the failed ones (they fail again)
    again = run_sweep("--name", "t", "--resume", "--experiments-dir", "exp", cwd=tmp_path)
    assert "4 finished before, 2 to run" in again.stderr and again.returncode == 1


@pytest.mark.slow
def test_interrupted_sweep_resumes_from_the_last_checkpoints(tmp_path):
    cnn = write_config(tmp_path / "cnn.json", model="CNN-PPO", n_steps=4000)
    # three trials on two CPUs: the third is still pending when Ctrl-C comes
    proc = run_sweep("--config", cnn, "--seeds", "3", "--name", "i", "--experiments-dir", "exp", "--cpus-per-trial", "1",
                     cwd=tmp_path, wait=False)
    runs = [tmp_path / "exp" / "CNN-PPO" / "CueRecall-D1-v0" / f"i-seed{seed}" for seed in (1, 2)]
    deadline = time.monotonic() + 300
    while not all((run / "ckpt_last.pt").exists() for run in runs):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "timeout"
        time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out
    assert "--resume" in out
    interrupted = [steps(run) for run in runs]
    assert all(0 < s < 4000 for s in interrupted)

    resumed = run_sweep("--name", "i", "--resume", "--experiments-dir", "exp", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert all(steps(run) >= 4000 for run in [*runs, runs[0].with_name("i-seed3")])


def test_bad_input_is_one_line(tmp_path, capsys):
    cnn = write_config(tmp_path / "cnn.json", model="CNN-PPO")
    cases = [
        ["--config", str(tmp_path / "missing.json"), "--seeds", "1"],
        ["--config", cnn, "--seeds", "1", "--grid", "beta"],
        ["--config", cnn, "--seeds", "1", "--grid", "no_such_key=1,2"],
        ["--config", cnn, "--seeds", "1", "--grid", "beta=1,"],
        ["--config", cnn],
        ["--config", cnn, "--seed-list", "1,x"],
        ["--config", cnn, "--seeds", "1", "--var", "seed=3"],
        ["--name", "nothing-here", "--resume"],
        ["--config", cnn, "--seeds", "1", "--address", "127.0.0.1:1"],
    ]
    for args in cases:
        assert sweep.main([*args, "--experiments-dir", str(tmp_path / "exp")]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert err and err[-1].startswith("error: ") and len(err[-1]) < 400, (args, err)


def test_trials_cross_configs_grid_and_seeds(tmp_path):
    cnn = write_config(tmp_path / "cnn.json", model="CNN-PPO")
    args = sweep.parse_args(["--config", cnn, "--seeds", "2", "--grid", "learning_rate=1e-3,1e-4", "--grid", "ent_coef=0,0.01",
                             "--name", "g", "--experiments-dir", str(tmp_path / "exp")])
    name, trials = sweep.build_trials(args)
    assert name == "g" and len(trials) == 8
    names = {Path(t["run_dir"]).name for t in trials}
    assert "g-learning_rate0.001-ent_coef0.0-seed1" in names and len(names) == 8
    assert all(t["cfg"]["torch_threads"] == 1 for t in trials)


def test_a_name_that_leaves_the_experiments_dir_is_refused(tmp_path, capsys):
    cnn = write_config(tmp_path / "cnn.json", model="CNN-PPO")
    for name in ("../../x", "a/b", ".hidden", ".."):
        for extra in ([], ["--resume"]):
            args = ["--name", name, *extra] if extra else ["--config", cnn, "--seeds", "1", "--name", name]
            assert sweep.main([*args, "--experiments-dir", str(tmp_path / "exp" / "inner")]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert err == [f"error: --name {name!r} must be a plain directory name (no '/', not starting with '.')"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.json"]  # nothing written anywhere


def test_usage_errors_are_one_line(capsys):
    for args in (["--seeds", "abc"], ["--no-such-flag"], ["--cpus-per-trial", "x"]):
        with pytest.raises(SystemExit) as exit_:
            sweep.parse_args(args)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ": error: " in err and "(see --help)" in err, err


def test_an_unreachable_cluster_leaves_nothing_so_the_command_can_be_rerun(tmp_path, capsys):
    cnn = write_config(tmp_path / "cnn.json", model="CNN-PPO")
    argv = ["--config", cnn, "--seeds", "1", "--name", "u", "--address", "127.0.0.1:1",
            "--experiments-dir", str(tmp_path / "exp")]
    for _ in range(2):
        assert sweep.main(argv) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "cannot reach the Ray cluster at 127.0.0.1:1" in line  # not "sweep exists" the second time
    assert not (tmp_path / "exp").exists()


def test_a_grid_over_models_checks_each_model_against_its_own_settings(tmp_path, capsys):
    """config.json sets lm_mode for HELM: a CNN-PPO trial of the same grid must not warn about it."""
    args = sweep.parse_args(["--config", str(ROOT / "config.json"), "--seeds", "1", "--grid", "model=HELM,CNN-PPO",
                             "--name", "m", "--experiments-dir", str(tmp_path / "exp")])
    sweep.build_trials(args)
    assert "warning" not in capsys.readouterr().err
    args = sweep.parse_args(["--config", str(ROOT / "config.json"), "--seeds", "1", "--grid", "model=CNN-PPO",
                             "--var", "topk=3", "--name", "m2", "--experiments-dir", str(tmp_path / "exp")])
    sweep.build_trials(args)
    assert "warning: CNN-PPO does not use topk=3" in capsys.readouterr().err  # what the user set still warns


@pytest.mark.slow
def test_the_trained_memories_sweep_and_report_like_every_model(tmp_path):
    import report

    config = write_config(tmp_path / "zoo.json", model="Impala-PPO", trxl_dim=16, trxl_heads=2, trxl_mem_len=4)
    done = run_sweep("--config", config, "--grid", "model=LSTM-PPO,GRU-PPO,TrXL-PPO", "--seeds", "1", "--name", "zoo",
                     "--experiments-dir", "exp", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = [tmp_path / "exp" / model / "CueRecall-D1-v0" / f"zoo-model{model}-seed1" for model in ("LSTM-PPO", "GRU-PPO", "TrXL-PPO")]
    assert all(steps(run) == 32 for run in runs)
    assert report.main([str(tmp_path / "exp"), "--out", str(tmp_path / "report"), "--reps", "50"]) == 0
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert list(data["envs"]["CueRecall-D1-v0"]["models"]) == ["LSTM-PPO", "GRU-PPO", "TrXL-PPO"]


def test_a_gpu_plan_that_cannot_fit_is_refused_before_anything_starts(tmp_path, capsys):
    from utils.config import defaults

    helm = defaults() | TINY | {"model": "HELM", "lm": "minilm", "mem_len": 511, "n_envs": 256}
    per_trial = sweep.trial_gpu_bytes(helm)
    assert per_trial > sweep.GPU_OVERHEAD_BYTES  # MiniLM's weights and 256 envs' keys and values
    sweep.check_gpu_plan([helm], 0.125, gpu_bytes=8 * per_trial + 1, address=None)  # 8 fit
    with pytest.raises(sweep.UserError, match=r"8 trials per GPU \(--gpus-per-trial 0.125\) need about 8 x"):
        sweep.check_gpu_plan([helm], 0.125, gpu_bytes=8 * per_trial - 1, address=None)
    sweep.check_gpu_plan([helm], 0.5, gpu_bytes=8 * per_trial - 1, address=None)  # 2 fit
    with pytest.raises(sweep.UserError, match="this machine has no CUDA GPU"):
        sweep.check_gpu_plan([helm], 0.125, gpu_bytes=None, address=None)
    sweep.check_gpu_plan([helm], 0.125, gpu_bytes=None, address="10.0.0.1:6379")  # a cluster's nodes: not ours to know
    sweep.check_gpu_plan([helm], 0.0, gpu_bytes=None, address=None)  # CPU trials


def test_gpus_per_trial_without_a_gpu_is_one_line_and_leaves_nothing(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cnn = write_config(tmp_path / "cnn.json", model="CNN-PPO")
    assert sweep.main(["--config", cnn, "--seeds", "1", "--name", "g", "--gpus-per-trial", "0.125",
                       "--experiments-dir", str(tmp_path / "exp")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "no CUDA GPU" in line and not (tmp_path / "exp").exists()
