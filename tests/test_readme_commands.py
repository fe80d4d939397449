"""Every shell command of the README runs as written, at a tiny scale, so the README cannot rot.

The commands run in order, in a fresh folder that holds the project's scripts, `config.json`,
`configs/` and the result configs and probes (as a clone does), so that a command can use what
an earlier one made (the run that `--resume` continues, the sweep that `report.py` reports).
They are shrunk, never rewritten: `main.py` and `sweep.py` get tiny `--var`s after their own (the
last one counts) and one seed, a `--resume` a small `n_steps`, `eval.py` and `probe.py` a few
episodes; `make` targets run as a dry run (`make -n`). `source` and `tensorboard` lines are not run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT

BASH_BLOCK = re.compile(r"```bash\n(.*?)```", re.S)
TINY = ["--var", "n_steps=64", "--var", "n_envs=2", "--var", "n_rollout_steps=16", "--var", "n_batches=2",
        "--var", "n_epochs=1", "--var", "torch_threads=1"]
SCRIPTS = ("main.py", "eval.py", "sweep.py", "report.py", "probe.py", "prepare_embeddings.py", "demo_clip.py")
NOT_RUN = ("source", "tensorboard")


def readme_commands() -> list[str]:
    """The README's shell commands in order, comments removed."""
    commands = []
    for block in BASH_BLOCK.findall((ROOT / "README.md").read_text()):
        for line in block.splitlines():
            command = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def expanded_by_shell(word: str) -> bool:
    return any(ch in word for ch in "*?{")


def _set(words: list[str], flag: str, value: str) -> list[str]:
    return [value if i and words[i - 1] == flag else w for i, w in enumerate(words)]


def shrink(command: str) -> list[str] | None:
    """The command as it runs in the test (argv, or a shell line for globs); None: not run."""
    words = shlex.split(command)
    if words[0] in NOT_RUN:
        return None
    if words[0] == "make":
        return ["make", "-n", "-C", str(ROOT), *words[1:]]
    assert words[0] == "python" and words[1] in SCRIPTS, f"the README runs something the test does not know: {command}"
    script, args = words[1], words[2:]
    if script == "main.py" and "--resume" in args:
        args = [re.sub(r"^n_steps=.*", "n_steps=96", a) for a in args]
    elif script == "main.py" or (script == "sweep.py" and "--resume" not in args):
        args = [*_set(args, "--seeds", "1"), *TINY]
    elif script == "eval.py":
        args = _set(args, "--n-episodes", "2")
    elif script == "probe.py":
        args = _set(args, "--episodes", "6")
    elif script == "report.py":
        args = [*args, "--reps", "50"]
    return [sys.executable, script, *args]


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path):
    for script in (*SCRIPTS, "config.json", "configs"):
        (tmp_path / script).symlink_to(ROOT / script)
    # what the results' commands read (their reports are rewritten here): every configs/ and probes/
    for part in sorted((ROOT / "results").rglob("*")):
        names = part.relative_to(ROOT).parts
        if part.is_dir() and names[-1] in ("configs", "probes") and not {"configs", "probes"} & set(names[:-1]):
            link = tmp_path / part.relative_to(ROOT)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(part)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", RAY_DEDUP_LOGS="0")
    commands = readme_commands()
    assert len(commands) >= 10
    for command in commands:
        argv = shrink(command)
        if argv is None:
            continue
        if any(map(expanded_by_shell, argv)):  # a glob or braces: the shell expands them, as a user's does
            argv = ["bash", "-c", " ".join(a if expanded_by_shell(a) else shlex.quote(a) for a in argv)]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
