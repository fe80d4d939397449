"""Every file the project reads from a user or the hub is data, never a program.

One table: each row plants a harmless payload (a pickle whose loading would call `os.system` to
create a marker file) in one kind of file (checkpoints, semantic databases, LM, Transformer-XL and
CLIP directories, Transformer-XL's vocabulary, config files) and runs the real command that reads
it. The command must fail with one line and exit code 2, and the marker must not appear.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, run_main
from tiny_clip import save_tiny_clip
from tiny_lms import tiny_gpt2, tiny_transfo_xl

pytestmark = pytest.mark.usefixtures("one_thread")


class Payload:
    """Unpickling this runs a shell command: what a crafted file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_torch(path: Path, marker: Path, legacy: bool = False, base: dict | None = None) -> None:
    """A torch.save file (zip or the legacy format) holding `base` plus the payload."""
    torch.save({**(base or {}), "x": Payload(marker)}, path, _use_new_zipfile_serialization=not legacy)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished CNN-PPO run, a sweep over it, and tiny LM / CLIP / Transformer-XL directories."""
    root = tmp_path_factory.mktemp("untrusted")
    experiments = root / "experiments"
    assert run_main("--var", "model=CNN-PPO", "--var", "env=CueRecall-D1-v0", "--run-id", "r",
                    experiments=experiments) == 0
    return {
        "root": root,
        "run": experiments / "CNN-PPO" / "CueRecall-D1-v0" / "r",
        "gpt2": tiny_gpt2(str(root / "gpt2")),
        "trxl": tiny_transfo_xl(str(root / "trxl")),
        "clip": str(save_tiny_clip(root / "clip")),
    }


def copy_dir(source: str | Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _sweep_over(run: Path, tmp: Path) -> list[str]:
    """A sweep state whose one trial is `run`, as `sweep.py` writes it; returns the resume argv."""
    config = json.loads((run / "config.json").read_text())
    state = tmp / "experiments" / "sweeps" / "s"
    state.mkdir(parents=True)
    trial = {"cfg": dict(config, n_steps=10_000), "point": {}, "config_file": "c.json", "run_dir": str(run)}
    (state / "sweep.json").write_text(json.dumps({"name": "s", "argv": [], "trials": [trial]}))
    return ["sweep.py", "--name", "s", "--resume", "--experiments-dir", str(tmp / "experiments")]


def case_resume(world, tmp, marker, legacy=False):
    run = copy_dir(world["run"], tmp / "run")
    plant_torch(run / "ckpt_last.pt", marker, legacy)
    return ["main.py", "--resume", str(run), "--var", "n_steps=128", "--no-progress"]


def case_eval_best(world, tmp, marker):
    run = copy_dir(world["run"], tmp / "run")
    plant_torch(run / "ckpt_best.pt", marker)
    return ["eval.py", "--ckpt-path", str(run), "--n-episodes", "1", "--no-progress"]


def case_sweep_resume(world, tmp, marker):
    run = copy_dir(world["run"], tmp / "experiments" / "CNN-PPO" / "CueRecall-D1-v0" / "s-seed1")
    plant_torch(run / "ckpt_last.pt", marker)
    return _sweep_over(run, tmp)


def case_semantic_db(world, tmp, marker):
    db = tmp / "db.pt"
    plant_torch(db, marker, base={"embeddings": torch.zeros(2, 4)})
    return ["main.py", *TINY, "--var", "model=SHELM", "--var", "env=CueRecall-D1-v0", "--var", f"lm={world['gpt2']}",
            "--var", f"clip_model={world['clip']}", "--var", f"semantic_db={db}", "--var", "mem_len=8",
            "--experiments-dir", str(tmp / "e"), "--no-progress"]


def _helm_with_lm(lm: Path, tmp: Path) -> list[str]:
    return ["main.py", *TINY, "--var", "model=HELM", "--var", "env=CueRecall-D1-v0", "--var", f"lm={lm}",
            "--var", "mem_len=8", "--experiments-dir", str(tmp / "e"), "--no-progress"]


def case_lm_weights(world, tmp, marker):
    lm = copy_dir(world["gpt2"], tmp / "lm")
    (lm / "model.safetensors").unlink()
    plant_torch(lm / "pytorch_model.bin", marker)
    return _helm_with_lm(lm, tmp)


def case_trxl_weights(world, tmp, marker):
    lm = copy_dir(world["trxl"], tmp / "trxl")
    plant_torch(lm / "pytorch_model.bin", marker, legacy=True)
    return _helm_with_lm(lm, tmp)


def case_trxl_vocab(world, tmp, marker):
    lm = copy_dir(world["trxl"], tmp / "trxl")
    with open(lm / "vocab.pkl", "wb") as f:
        pickle.dump({"idx2sym": ["a"], "x": Payload(marker)}, f)
    return ["prepare_embeddings.py", "--clip-model", world["clip"], "--lm", str(lm), "--templates", "none",
            "--out", str(tmp / "db.pt")]


def case_clip_weights(world, tmp, marker):
    clip = copy_dir(world["clip"], tmp / "clip")
    (clip / "model.safetensors").unlink()
    plant_torch(clip / "pytorch_model.bin", marker)
    return ["main.py", *TINY, "--var", "model=HELMv2", "--var", "env=CueRecall-D1-v0", "--var", f"lm={world['gpt2']}",
            "--var", f"clip_model={clip}", "--var", "mem_len=8", "--experiments-dir", str(tmp / "e"), "--no-progress"]


def case_config_file(world, tmp, marker):
    config = tmp / "config.json"
    with open(config, "wb") as f:
        pickle.dump(Payload(marker), f)
    return ["main.py", "--config", str(config), "--experiments-dir", str(tmp / "e"), "--no-progress"]


# (id, how to plant the payload and which command reads it, a piece of the one-line error)
CASES = [
    ("checkpoint, main.py --resume", case_resume, "refers to posix.system"),
    ("legacy-format checkpoint, main.py --resume",
     lambda w, t, m: case_resume(w, t, m, legacy=True), "refers to posix.system"),
    ("ckpt_best.pt, eval.py", case_eval_best, "refers to posix.system"),
    ("checkpoint, sweep.py --resume", case_sweep_resume, "refers to posix.system"),
    ("semantic database, SHELM", case_semantic_db, "semantic database"),
    ("LM pytorch_model.bin, HELM", case_lm_weights, "lm"),
    ("Transformer-XL pytorch_model.bin, HELM", case_trxl_weights, "pytorch_model.bin"),
    ("Transformer-XL vocab.pkl, prepare_embeddings.py", case_trxl_vocab, "vocab.pkl"),
    ("CLIP pytorch_model.bin, HELMv2", case_clip_weights, "clip"),
    ("config file holding a pickle, main.py", case_config_file, "is not valid JSON"),
]


@pytest.mark.parametrize("plant,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_crafted_file_runs_nothing(plant, expected, world, tmp_path):
    marker = tmp_path / "MARKER"
    script, *argv = plant(world, tmp_path, marker)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / script), *argv], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)
    err = proc.stderr.strip()
    assert not marker.exists(), f"the payload ran: {err}"
    assert proc.returncode == 2, err
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected.lower() in err.lower(), err
