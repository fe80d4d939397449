"""Bad inputs to eval.py and prepare_embeddings.py: exit code 2, at most two lines on stderr, no
traceback, and nothing left behind in the output folder. Mostly in-process (`main(argv)`), plus a
few real subprocess runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval as evaluate
import prepare_embeddings
from envs import make_env
from models import build_agent
from tests.tiny_clip import save_tiny_clip, save_wordpiece_tokenizer
from tests.tiny_lms import tiny_gpt2
from utils import config
from utils.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """A tiny CNN-PPO checkpoint, tiny CLIP/LM directories and a few broken files."""
    root = tmp_path_factory.mktemp("cli")
    run = root / "run"
    run.mkdir()
    cfg = config.defaults() | {"model": "CNN-PPO", "env": "CueRecall-D1-v0", "seed": 0}
    envs = make_env(cfg["env"], 1, "sync")
    agent = build_agent("CNN-PPO", envs.single_observation_space.shape, int(envs.single_action_space.n), cfg)
    envs.close()
    save_checkpoint(run / "ckpt_last.pt", {"config": cfg, "agent": agent.checkpoint_state(), "optimizer": {}, "step": 0})
    (root / "no_ckpt").mkdir()
    (root / "corrupt.pt").write_bytes(b"\x00garbage")
    torch.save({"hello": 1}, root / "foreign.pt")
    (root / "a_file.txt").write_text("x\n")
    (root / "full").mkdir()
    (root / "full" / "old.txt").write_text("old results\n")
    (root / "empty_templates.txt").write_text("# nothing but a comment\n")
    save_tiny_clip(root / "clip")
    save_wordpiece_tokenizer(root / "lm")
    tiny_gpt2(str(root / "gpt2"))
    return {"root": str(root), "run": str(run), "clip": str(root / "clip"), "lm": str(root / "lm"),
            "gpt2": str(root / "gpt2"), "file": str(root / "a_file.txt"), "unwritable": unwritable_dir(root)}


def unwritable_dir(root: Path) -> str:
    """A folder this process cannot create files in (root ignores permissions: use /sys there)."""
    if os.geteuid() != 0:
        locked = root / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        return str(locked)
    return "/sys"


def snapshot(root: str) -> set[str]:
    return {str(p.relative_to(root)) for p in Path(root).rglob("*")}


def check_refused(main, argv: list[str], expected: str, files: dict, capsys) -> None:
    before = snapshot(files["root"])
    code = main([arg.format(**files) for arg in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert 1 <= len(lines) <= 2 and "Traceback" not in err, err
    assert expected in err, err
    assert snapshot(files["root"]) == before  # nothing left behind


# (argv, a substring of the error); {key} is a path from `files`, {root}/new is a folder that must not appear.
EVAL_BAD = [
    (["--ckpt-path", "{run}", "--n-envs", "0"], "--n-envs: must be at least 1, got 0"),
    (["--ckpt-path", "{run}", "--n-envs", "-3"], "--n-envs: must be at least 1, got -3"),
    (["--ckpt-path", "{run}", "--n-envs", "two"], "--n-envs: expected an integer"),
    (["--ckpt-path", "{run}", "--n-episodes", "0"], "--n-episodes: must be at least 1"),
    (["--ckpt-path", "{run}", "--n-episodes", "-1"], "--n-episodes: must be at least 1"),
    (["--ckpt-path", "{run}", "--video", "--video-episodes", "0"], "--video-episodes: must be at least 1"),
    (["--ckpt-path", "{run}", "--video", "--video-episodes", "-2"], "--video-episodes: must be at least 1"),
    (["--ckpt-path", "{run}", "--video-episodes", "2"], "--video-episodes needs --video"),
    (["--ckpt-path", "{run}", "--n-episodes", "2", "--video", "--video-episodes", "5"], "exceeds --n-episodes 2"),
    (["--ckpt-path", "{run}", "--seed", "-1"], "--seed: must be at least 0"),
    (["--ckpt-path", "{run}", "--deterministic", "--random"], "not allowed with argument"),
    (["--ckpt-path", "{run}", "--trace-format", "xml"], "invalid choice"),
    (["--ckpt-path", "{run}", "--bogus"], "unrecognized arguments"),
    ([], "--ckpt-path"),
    (["--ckpt-path", "{root}/missing", "--out", "{root}/new"], "checkpoint not found"),
    (["--ckpt-path", "{root}/no_ckpt"], "no checkpoint"),
    (["--ckpt-path", "{root}/corrupt.pt", "--out", "{root}/new"], "corrupt or unreadable"),
    (["--ckpt-path", "{root}/foreign.pt", "--out", "{root}/new"], "not a checkpoint of this project"),
    (["--ckpt-path", "{run}", "--out", "{file}"], "is a file"),
    (["--ckpt-path", "{run}", "--out", "{file}/sub"], "is a file, not a directory"),
    (["--ckpt-path", "{run}", "--out", "{unwritable}/eval"], "cannot write in"),
    (["--ckpt-path", "{run}", "--out", "{root}/full"], "already holds files"),
]


@pytest.mark.parametrize("argv,expected", EVAL_BAD, ids=[" ".join(a[2:] or a) or "no-args" for a, _ in EVAL_BAD])
def test_eval_refuses(files, capsys, argv, expected):
    check_refused(evaluate.main, argv, expected, files, capsys)


def test_eval_refuses_cuda_without_a_gpu(files, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available")
    check_refused(evaluate.main, ["--ckpt-path", "{run}", "--device", "cuda", "--out", "{root}/new"],
                  "no CUDA device is available; use --device cpu or auto", files, capsys)


def test_eval_names_a_config_key_the_checkpoint_lacks(files, capsys, monkeypatch):
    import utils.checkpoint

    real = utils.checkpoint.load_checkpoint

    def without_env(path):
        payload = real(path)
        payload["config"] = {k: v for k, v in payload["config"].items() if k != "env"}
        return payload

    monkeypatch.setattr(utils.checkpoint, "load_checkpoint", without_env)
    check_refused(evaluate.main, ["--ckpt-path", "{run}", "--out", "{root}/new"], "config lacks key 'env'", files, capsys)


def test_eval_leaves_nothing_when_writing_fails(files, capsys, monkeypatch):
    def broken_video(episodes, path, *args, **kwargs):
        path.write_bytes(b"half a gif")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(evaluate, "save_video", broken_video)
    out = Path(files["root"]) / "deep" / "er" / "eval"
    code = evaluate.main(["--ckpt-path", files["run"], "--n-episodes", "1", "--video", "--out", str(out), "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("loading ")  # eval says which checkpoint it evaluates
    assert code == 2 and len(lines) == 2 and "No space left on device" in lines[1]
    assert not (Path(files["root"]) / "deep").exists()


def test_eval_random_says_so_and_shows_progress(files, capsys, tmp_path):
    out = tmp_path / "ev"
    assert evaluate.main(["--ckpt-path", files["run"], "--n-episodes", "2", "--random", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "random actions" in captured.out and "2 episodes" in captured.out
    assert "episode" in captured.err  # the tqdm bar
    assert json.loads((out / "summary.json").read_text())["random"] is True
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    assert evaluate.main(["--ckpt-path", files["run"], "--n-episodes", "1", "--no-progress", "--out", str(tmp_path / "q")]) == 0
    (line,) = capsys.readouterr().err.strip().splitlines()  # no progress bar: only what is evaluated
    assert line.startswith("loading ") and line.endswith("(the last state, step 0)")


def test_eval_interrupted_before_any_episode_says_so(files, capsys, monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
        yield  # a generator, like the real one

    monkeypatch.setattr(evaluate, "run_episodes", interrupted)
    code = evaluate.main(["--ckpt-path", files["run"], "--out", str(tmp_path / "ev"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 130 and "before any episode finished" in captured.err
    assert "nan" not in captured.out + captured.err and "{}" not in captured.out
    assert not (tmp_path / "ev").exists()


PREPARE_BAD = [
    (["--clip-model", "{clip}", "--lm", "{lm}", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["--clip-model", "{clip}", "--lm", "{lm}", "--batch-size", "-5"], "--batch-size: must be at least 1"),
    (["--clip-model", "{clip}"], "--lm"),
    (["--clip-model", "{root}/nope", "--lm", "{lm}", "--out", "{root}/new/db.pt"], "--clip-model path does not exist"),
    (["--clip-model", "{clip}", "--lm", "{root}/nope", "--out", "{root}/new/db.pt"], "--lm path does not exist"),
    (["--clip-model", "{gpt2}", "--lm", "{lm}", "--out", "{root}/new/db.pt"], "not a CLIP model"),
    (["--clip-model", "{lm}", "--lm", "{lm}", "--out", "{root}/new/db.pt"], "has no config.json"),
    (["--clip-model", "{clip}", "--lm", "{clip}", "--out", "{root}/new/db.pt"], "not a language model"),
    (["--clip-model", "{clip}", "--lm", "{gpt2}", "--out", "{root}/new/db.pt"], "has no vocabulary"),
    (["--clip-model", "nobody-xyz/uncached-clip", "--lm", "{lm}", "--out", "{root}/new/db.pt"], "not in the local cache"),
    (["--clip-model", "{clip}", "--lm", "{lm}", "--templates", "bogus", "--out", "{root}/new/db.pt"], "--templates must be"),
    (["--clip-model", "{clip}", "--lm", "{lm}", "--templates", "{root}/missing.txt", "--out", "{root}/new/db.pt"],
     "is neither"),
    (["--clip-model", "{clip}", "--lm", "{lm}", "--templates", "{root}/empty_templates.txt", "--out", "{root}/new/db.pt"],
     "has no templates"),
    (["--clip-model", "{clip}", "--lm", "{lm}", "--out", "{root}"], "is a directory"),
    (["--clip-model", "{clip}", "--lm", "{lm}", "--out", "{root}", "--force"], "is a directory"),
    (["--clip-model", "{clip}", "--lm", "{lm}", "--out", "{file}/db.pt"], "is a file, not a directory"),
    (["--clip-model", "{clip}", "--lm", "{lm}", "--out", "{unwritable}/db.pt"], "cannot write in"),
    (["--clip-model", "{clip}", "--lm", "{lm}", "--out", "{file}"], "is not a semantic database; pass --force"),
    (["--clip-model", "{clip}", "--lm", "{lm}", "--device", "nodevice", "--out", "{root}/new/db.pt"], "not a torch device"),
]


@pytest.mark.parametrize("argv,expected", PREPARE_BAD, ids=[" ".join(a[4:]) or " ".join(a) for a, _ in PREPARE_BAD])
def test_prepare_refuses(files, capsys, monkeypatch, argv, expected):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_refused(prepare_embeddings.main, argv, expected, files, capsys)


def test_prepare_refuses_cuda_without_a_gpu(files, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available")
    check_refused(prepare_embeddings.main, ["--clip-model", "{clip}", "--lm", "{lm}", "--device", "cuda",
                                            "--out", "{root}/new/db.pt"], "no CUDA device", files, capsys)


def test_prepare_interrupted_leaves_nothing(files, capsys, monkeypatch):
    import models.semantic_db

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(models.semantic_db, "build_database", interrupted)
    before = snapshot(files["root"])
    code = prepare_embeddings.main(["--clip-model", files["clip"], "--lm", files["lm"], "--out",
                                    f"{files['root']}/new/db.pt"])
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert snapshot(files["root"]) == before


def test_prepare_builds(files, capsys, tmp_path):
    out = tmp_path / "a" / "b" / "db.pt"
    assert prepare_embeddings.main(["--clip-model", files["clip"], "--lm", files["lm"], "--out", str(out),
                                    "--device", "cpu", "--no-progress"]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["db.pt"]


# -- the real thing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("script,argv,expected", [
    ("eval.py", ["--ckpt-path", "{run}", "--n-envs", "0"], "--n-envs"),
    ("eval.py", ["--ckpt-path", "{root}/corrupt.pt", "--out", "{root}/new"], "corrupt"),
    ("prepare_embeddings.py", ["--clip-model", "{clip}", "--lm", "{lm}", "--out", "{root}", "--force"], "is a directory"),
    ("prepare_embeddings.py", ["--clip-model", "{gpt2}", "--lm", "{lm}", "--out", "{root}/new/db.pt"], "not a CLIP model"),
])
def test_scripts_refuse_in_one_line(files, script, argv, expected):
    before = snapshot(files["root"])
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / script), *[a.format(**files) for a in argv]], cwd=files["root"],
                          env=env, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert expected in proc.stderr and "error:" in lines[0]
    assert snapshot(files["root"]) == before
