"""Every mistake a user can make with main.py and its config files: one clear line, non-zero exit, nothing left behind.

Each case runs `main.main(argv)` in-process (as `python main.py ARGV` would) and checks the exit code,
that stderr holds at most 2 lines and no traceback, and that the experiments directory is still
empty (or, for --resume cases, unchanged).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, run_main

BASE = [*TINY, "--var", "model=CNN-PPO", "--var", "env=CueRecall-D1-v0", "--no-progress"]


def call_main(argv: list[str]) -> int:
    import main

    try:
        return main.main(argv)
    except SystemExit as exit_:  # argparse
        return int(exit_.code)


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


def check_clean_failure(code: int, err: str, expected: str) -> None:
    lines = err.strip().splitlines()
    assert code != 0, err
    assert "Traceback" not in err, err
    assert 1 <= len(lines) <= 2, err
    assert expected.lower() in err.lower(), err


# (extra argv, a piece of the expected message); TINY is n_envs=2, n_rollout_steps=16, n_batches=2
VAR_CASES = [
    (["--var", "seed=-1"], "'seed' must be in [0, 4294967295]"),
    (["--var", "seed=4294967296"], "'seed' must be in"),
    (["--seed", "-5"], "'seed' must be"),
    (["--seed", "abc"], "invalid int value"),
    (["--var", "max_grad_norm=0"], "'max_grad_norm' must be > 0"),
    (["--var", "max_grad_norm=-1"], "'max_grad_norm' must be > 0"),
    (["--var", "epsilon=0"], "'epsilon' must be in (0, 1)"),
    (["--var", "clip_reward=0"], "'clip_reward' must be > 0"),
    (["--var", "clip_reward=-1"], "'clip_reward' must be > 0"),
    (["--var", "min_lr=-1e-5"], "'min_lr' must be in [0, 1]"),
    (["--var", "lr_decay=linear", "--var", "min_lr=0.5"], "'min_lr' (0.5) must not exceed 'learning_rate'"),
    (["--var", "ent_decay=linear", "--var", "min_ent_coef=0.1"], "'min_ent_coef' (0.1) must not exceed"),
    (["--var", "clip_decay=exponential", "--var", "min_clip_range=0.5"], "'min_clip_range' (0.5) must not exceed"),
    (["--var", "min_ent_coef=-0.1"], "'min_ent_coef' must be >= 0"),
    (["--var", "min_clip_range=-0.1"], "'min_clip_range' must be >= 0"),
    (["--var", "vf_coef=-0.5"], "'vf_coef' must be >= 0"),
    (["--var", "ent_coef=-0.01"], "'ent_coef' must be >= 0"),
    (["--var", "beta=0"], "'beta' must be > 0"),
    (["--var", "beta=-1"], "'beta' must be > 0"),
    (["--var", "beta=inf"], "is not a valid float"),
    (["--var", "learning_rate=nan"], "is not a valid float"),
    (["--var", "clip_range_vf=-0.1"], "'clip_range_vf' must be > 0"),
    (["--var", "clip_range=0"], "'clip_range' must be > 0"),
    (["--var", "save_ckpt=2"], "'save_ckpt': '2' is not a valid bool"),
    (["--var", "save_ckpt=maybe"], "is not a valid bool"),
    (["--var", "n_batches=7"], "(32) must be divisible by n_batches (7)"),
    (["--var", "n_envs=0"], "'n_envs' must be in [1, 4096]"),
    (["--var", "n_envs=100000"], "'n_envs' must be in [1, 4096]"),
    (["--var", "n_envs=2.5"], "is not a valid int"),
    (["--var", "n_steps=0"], "'n_steps' must be in [1, 10000000000]"),
    (["--var", "n_steps=1e20"], "'n_steps' must be in [1, 10000000000]"),
    (["--var", "n_epochs=0"], "'n_epochs' must be in [1, 1000]"),
    (["--var", "learning_rate=0"], "'learning_rate' must be in (0, 1]"),
    (["--var", "learning_rate=2"], "'learning_rate' must be in (0, 1]"),
    (["--var", "gamma=1.5"], "'gamma' must be in (0, 1]"),
    (["--var", "gae_lambda=-0.1"], "'gae_lambda' must be in [0, 1]"),
    (["--var", "torch_threads=0"], "'torch_threads' must be in [1, 1024]"),
    (["--var", "mem_len=0"], "'mem_len' must be in"),
    (["--var", "topk=0"], "'topk' must be in"),
    (["--var", "lm_layers=0"], "'lm_layers' must be >= 1"),
    (["--var", "clip_cache_size=-1"], "'clip_cache_size' must be >= 0"),
    (["--var", "best_min_episodes=0"], "'best_min_episodes' must be in [1, 100]"),
    (["--var", "best_min_episodes=101"], "'best_min_episodes' must be in [1, 100]"),
    (["--var", "ckpt_last_every_s=-1"], "'ckpt_last_every_s' must be in"),
    (["--var", "lrr=1"], "unknown config key 'lrr'"),
    (["--var", "learning-rate=1e-3"], "did you mean learning_rate"),
    (["--var", "novalue"], "--var expects KEY=VALUE"),
    (["--var", "env=NoSuchEnv-v0"], "NoSuchEnv-v0"),
    (["--var", "model=NoSuchModel"], "unknown model 'NoSuchModel'"),
    (["--var", "device=tpu"], "'device': 'tpu' is not one of"),
    (["--var", "vec_env=threads"], "'vec_env': 'threads' is not one of"),
    (["--var", "vec_env=envpool"], "vec_env=envpool is for MiniGrid ids; use sync or async for CueRecall"),
    (["--var", "vec_env=envpool", "--var", "env=MiniGrid-MultiRoom-N4-S5-v1"], "EnvPool does not implement"),
    (["--var", "lm_mode=sideways"], "'lm_mode': 'sideways' is not one of"),
    (["--var", "model=HELM", "--var", "lm=/nonexistent/lm"], "/nonexistent/lm"),
    (["--var", "model=HELM", "--var", "mem_reset=zero", "--var", "lm=minilm"], "mem_reset='zero' is only"),
    (["--run-id", "../../escaped"], "must be a plain directory name"),
    (["--run-id", "a/b"], "must be a plain directory name"),
    (["--run-id", ".hidden"], "must be a plain directory name"),
    (["--no-such-flag"], "unrecognized arguments"),
]


@pytest.mark.parametrize("extra,expected", VAR_CASES, ids=[" ".join(c[0]) for c in VAR_CASES])
def test_bad_values_and_options(extra, expected, experiments, capsys, one_thread):
    code = call_main([*BASE, *extra, "--experiments-dir", str(experiments)])
    check_clean_failure(code, capsys.readouterr().err, expected)
    assert not experiments.exists() or not any(experiments.rglob("*"))


def _config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.json"
    path.write_text(text)
    return path


FILE_CASES = [
    ("missing", None, "config file not found"),
    ("not json", "{n_envs: 2", "is not valid JSON"),
    ("a list", "[1, 2]", "must hold a JSON object"),
    ("unknown key", '{"n_env": 2}', "unknown config key 'n_env'; did you mean n_envs"),
    ("string for int", '{"n_envs": "16"}', "'n_envs': '16' is not a valid int"),
    ("null for non-null", '{"gamma": null}', "'gamma': None is not a valid float"),
    ("bool for float", '{"beta": true}', "'beta': True is not a valid float"),
    ("NaN", '{"beta": NaN}', "'beta': nan is not a valid float"),
    ("out of range", '{"gamma": 2}', "'gamma' must be in (0, 1]"),
    ("not utf-8", b"\xff\xfe{", "is not valid JSON"),
]


@pytest.mark.parametrize("name,text,expected", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_config_files(name, text, expected, tmp_path, experiments, capsys):
    if text is None:
        path = tmp_path / "nope.json"
    elif isinstance(text, bytes):
        path = tmp_path / "cfg.json"
        path.write_bytes(text)
    else:
        path = _config_file(tmp_path, text)
    code = call_main(["--config", str(path), "--experiments-dir", str(experiments), "--no-progress"])
    check_clean_failure(code, capsys.readouterr().err, expected)
    assert not experiments.exists()


def test_an_experiments_dir_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "experiments"
    target.write_text("not a folder")
    code = call_main([*BASE, "--experiments-dir", str(target)])
    check_clean_failure(code, capsys.readouterr().err, "is a file, not a directory")
    assert target.read_text() == "not a folder"


def test_an_experiments_dir_that_is_read_only(tmp_path, capsys, monkeypatch):
    import os

    target = tmp_path / "ro"
    target.mkdir()
    real_access = os.access
    # root may write anywhere, so the permission check is what is tested: pretend the folder is read-only
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == target else real_access(path, mode))
    code = call_main([*BASE, "--experiments-dir", str(target / "experiments")])
    check_clean_failure(code, capsys.readouterr().err, f"{target} is not writable")
    assert not any(target.iterdir())


def test_a_config_that_is_a_directory(tmp_path, experiments, capsys):
    code = call_main(["--config", str(tmp_path), "--experiments-dir", str(experiments), "--no-progress"])
    check_clean_failure(code, capsys.readouterr().err, f"config file {tmp_path} is a directory")
    assert not experiments.exists()


def test_settings_the_model_does_not_use_are_reported(experiments, capsys, one_thread):
    assert run_main("--var", "model=CNN-PPO", "--var", "env=CueRecall-D1-v0", "--var", "topk=3",
                    "--var", "n_steps=32", experiments=experiments) == 0
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    # only what the user set: the default config.json's lm_mode=causal is not theirs
    assert warning == "warning: CNN-PPO does not use topk=3; ignored"


def test_settings_of_the_users_own_config_file_are_reported(experiments, capsys, one_thread):
    assert run_main("--config", str(ROOT / "config.json"), "--var", "model=CNN-PPO", "--var", "env=CueRecall-D1-v0",
                    "--var", "n_steps=32", experiments=experiments) == 0
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert warning == "warning: CNN-PPO does not use lm_mode='causal'; ignored"


def test_a_plain_run_of_a_baseline_warns_about_nothing(experiments, capsys, one_thread):
    assert run_main("--var", "model=Impala-PPO", "--var", "env=CueRecall-D1-v0", "--var", "n_steps=32",
                    experiments=experiments) == 0
    assert "warning" not in capsys.readouterr().err


# -- --resume ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    experiments = tmp_path_factory.mktemp("resume") / "experiments"
    torch.set_num_threads(1)
    assert run_main("--var", "model=CNN-PPO", "--var", "env=CueRecall-D1-v0", "--run-id", "r",
                    experiments=experiments) == 0
    return experiments / "CNN-PPO" / "CueRecall-D1-v0" / "r"


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


RESUME_CASES = [
    (["--seed", "3"], "--seed would make it another run"),
    (["--config", "config.json"], "--config would make it another run"),
    (["--run-id", "other"], "--run-id would make it another run"),
    (["--experiments-dir", "elsewhere"], "--experiments-dir would make it another run"),
    (["--var", "learning_rate=1e-3"], "--resume accepts only --var n_steps, device, torch_threads; not learning_rate"),
    (["--var", "n_steps=0"], "'n_steps' must be in [1, 10000000000]"),
    (["--var", "n_steps=1e20"], "'n_steps' must be in [1, 10000000000]"),
    (["--var", "n_steps=32"], "already at step 64 of n_steps=32"),
    (["--var", "device=tpu"], "is not one of"),
]


@pytest.mark.parametrize("extra,expected", RESUME_CASES, ids=[" ".join(c[0]) for c in RESUME_CASES])
def test_resume_refuses_what_it_cannot_honour(extra, expected, finished_run, tmp_path, capsys):
    run = _copy(finished_run, tmp_path)
    before = snapshot(run)
    code = call_main(["--resume", str(run), *extra, "--no-progress"])
    check_clean_failure(code, capsys.readouterr().err, expected)
    assert snapshot(run) == before


def test_resume_without_ckpt_last_does_not_fall_back_to_best(finished_run, tmp_path, capsys):
    run = _copy(finished_run, tmp_path)
    (run / "ckpt_last.pt").unlink()
    before = snapshot(run)
    code = call_main(["--resume", str(run), "--var", "n_steps=96", "--no-progress"])
    check_clean_failure(code, capsys.readouterr().err, "no ckpt_last.pt")
    assert snapshot(run) == before


@pytest.mark.parametrize("damage,expected", [
    ("missing dir", "run directory not found"),
    ("corrupt", "is corrupt or unreadable"),
    ("not ours", "is not a checkpoint of this project"),
    ("future format", "this version reads 1 to"),
    ("unknown key", "keys this version does not know: old_key"),
    ("bad value", "'n_envs': 'many' is not a valid int"),
    ("agent mismatch", "does not match its config"),
    ("no env", "config lacks key 'env'"),
])
def test_resume_from_a_damaged_run(damage, expected, finished_run, tmp_path, capsys):
    run = _copy(finished_run, tmp_path)
    last = run / "ckpt_last.pt"
    payload = torch.load(last, weights_only=False)
    if damage == "missing dir":
        run = tmp_path / "nowhere"
    elif damage == "corrupt":
        last.write_bytes(last.read_bytes()[:1000])
    elif damage == "not ours":
        torch.save({"weights": 1}, last)
    elif damage == "future format":
        torch.save({**payload, "format": 99}, last)
    elif damage == "unknown key":
        torch.save({**payload, "config": {**payload["config"], "old_key": 1}}, last)
    elif damage == "bad value":
        torch.save({**payload, "config": {**payload["config"], "n_envs": "many"}}, last)
    elif damage == "no env":
        torch.save({**payload, "config": {k: v for k, v in payload["config"].items() if k != "env"}}, last)
    else:
        torch.save({**payload, "agent": {"nothing": torch.zeros(1)}}, last)
    before = snapshot(run)
    code = call_main(["--resume", str(run), "--var", "n_steps=96", "--no-progress"])
    check_clean_failure(code, capsys.readouterr().err, expected)
    assert snapshot(run) == before  # in particular no new TensorBoard events file


def test_resume_records_what_changed(finished_run, tmp_path, capsys, one_thread):
    run = _copy(finished_run, tmp_path)
    assert call_main(["--resume", str(run), "--var", "n_steps=96", "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["n_steps"] == 96
    err = capsys.readouterr().err
    assert "resume: n_steps 64 -> 96" in err and "resuming from step 64 of 96" in err


def test_resume_accepts_the_checkpoint_file_and_refuses_the_best(finished_run, tmp_path, capsys, one_thread):
    run = _copy(finished_run, tmp_path)
    assert call_main(["--resume", str(run / "ckpt_last.pt"), "--var", "n_steps=96", "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["n_steps"] == 96
    capsys.readouterr()
    before = snapshot(run)
    code = call_main(["--resume", str(run / "ckpt_best.pt"), "--var", "n_steps=128", "--no-progress"])
    check_clean_failure(code, capsys.readouterr().err, "--resume takes a run directory")
    assert snapshot(run) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_resume_that_fails_records_and_claims_nothing(finished_run, tmp_path, capsys):
    run = _copy(finished_run, tmp_path)
    before = snapshot(run)
    code = call_main(["--resume", str(run), "--var", "n_steps=96", "--var", "device=cuda", "--no-progress"])
    err = capsys.readouterr().err
    check_clean_failure(code, err, "no CUDA device")
    assert "recorded" not in err and snapshot(run) == before


def test_real_process_reports_one_line(tmp_path):
    """The same as a user sees it: a real `python main.py`, no traceback, one line."""
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--var", "gamma=2",
                           "--experiments-dir", str(tmp_path / "e")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: config key 'gamma' must be in (0, 1], got 2.0"
    assert not (tmp_path / "e").exists()
