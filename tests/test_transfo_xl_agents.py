"""HELM, HELMv2 and SHELM with the papers' LM: a tiny Transformer-XL trains, resumes and evaluates end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_main
from models import build_agent
from models.frozen_lm import load_lm_tokenizer
from models.transfo_xl import TransfoXLMemory
from tests.tiny_clip import save_tiny_clip
from tests.tiny_lms import tiny_transfo_xl
from utils.checkpoint import load_checkpoint
from utils.config import defaults
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trxl(tmp_path_factory) -> str:
    return tiny_transfo_xl(str(tmp_path_factory.mktemp("lm") / "tiny-trxl"))


@pytest.mark.parametrize("reset", ["mask", "zero"])
def test_helm_with_transfo_xl_trains_resumes_and_evaluates(trxl, tmp_path, experiments, reset):
    import eval as evaluate
    import main

    args = ["--var", "model=HELM", "--var", f"lm={trxl}", "--var", "mem_len=6", "--var", f"mem_reset={reset}",
            "--var", "env=MiniGrid-MemoryS7-v0", "--run-id", "trxl"]
    assert run_main(*args, experiments=experiments) == 0
    run = next(experiments.glob("HELM/*/trxl"))
    assert load_checkpoint(run / "ckpt_last.pt")["step"] == 64
    # the frozen Transformer-XL is reloaded from `lm`, never written into checkpoints
    assert not any("layers" in key for key in load_checkpoint(run / "ckpt_last.pt")["agent"])

    assert main.main(["--resume", str(run), "--var", "n_steps=96", "--no-progress"]) == 0
    assert load_checkpoint(run / "ckpt_last.pt")["step"] == 96
    out = tmp_path / "ev"
    assert evaluate.main(["--ckpt-path", str(run), "--n-episodes", "1", "--out", str(out)]) == 0
    trace = json.loads((out / "trace.json").read_text())
    # HELM's memory tokens are named by the Transformer-XL vocabulary (nearest token embeddings)
    assert trace and all(isinstance(w, str) and not w.startswith("#") for row in trace for w in row["words"])


def test_helm_agent_uses_the_transfo_xl_memory_and_its_embeddings(trxl):
    cfg = defaults() | {"model": "HELM", "lm": trxl, "mem_len": 6, "seed": 0, "env": "MiniGrid-MemoryS7-v0"}
    agent = build_agent("HELM", (56, 56, 3), 7, cfg)
    assert isinstance(agent.memory, TransfoXLMemory)
    assert agent.memory.reset_mode == "zero"  # mem_reset=auto: the original zeroes an env's mems at its episode end
    masked = build_agent("HELM", (56, 56, 3), 7, cfg | {"mem_reset": "mask"})
    assert masked.memory.reset_mode == "mask"
    vocab, d = agent.vocabulary.embeddings().shape
    hopfield = agent.encoder.hopfield
    assert hopfield.embeddings.shape == (vocab, d) and hopfield.projection.shape == (d, 56 * 56)


def test_transfo_xl_refuses_a_bidirectional_mode(trxl):
    cfg = defaults() | {"model": "HELM", "lm": trxl, "lm_mode": "bidirectional", "seed": 0}
    with pytest.raises(UserError, match="causal"):
        build_agent("HELM", (56, 56, 3), 7, cfg)


def test_zero_reset_is_only_for_transfo_xl(tmp_path):
    from tests.tiny_lms import tiny_gpt2

    cfg = defaults() | {"model": "HELM", "lm": tiny_gpt2(str(tmp_path / "gpt2")), "mem_reset": "zero", "seed": 0}
    with pytest.raises(UserError, match="Transformer-XL"):
        build_agent("HELM", (56, 56, 3), 7, cfg)


def test_shelm_database_and_training_with_the_transfo_xl_vocabulary(trxl, tmp_path, experiments):
    import eval as evaluate

    clip = str(save_tiny_clip(tmp_path / "clip"))
    db = tmp_path / "db.pt"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    done = subprocess.run([sys.executable, "prepare_embeddings.py", "--clip-model", clip, "--lm", trxl, "--out", str(db),
                           "--device", "cpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    words = torch.load(db, weights_only=True)["words"]
    vocab = load_lm_tokenizer(trxl)
    # the words both vocabularies hold as whole words (tiny CLIP's list and TRXL_WORDS)
    assert set(words) == {"the", "door", "key", "red", "blue", "ball", "cat", "dog", "box", "lamp", "grey"}
    assert all(vocab.get_vocab()[w] == i for w, i in zip(words, torch.load(db, weights_only=True)["lm_ids"].tolist()))

    args = ["--var", "model=SHELM", "--var", f"lm={trxl}", "--var", f"clip_model={clip}", "--var", f"semantic_db={db}",
            "--var", "topk=2", "--var", "mem_len=8", "--var", "env=CueRecall-D1-v0", "--run-id", "s"]
    assert run_main(*args, experiments=experiments) == 0
    run = next(experiments.glob("SHELM/*/s"))
    out = tmp_path / "ev"
    assert evaluate.main(["--ckpt-path", str(run), "--n-episodes", "1", "--out", str(out)]) == 0
    trace = json.loads((out / "trace.json").read_text())
    assert all(len(row["words"]) == 2 and set(row["words"]) <= set(words) for row in trace)


def test_helmv2_with_transfo_xl_trains(trxl, tmp_path, experiments):
    clip = str(save_tiny_clip(tmp_path / "clip"))
    args = ["--var", "model=HELMv2", "--var", f"lm={trxl}", "--var", f"clip_model={clip}", "--var", "mem_len=6",
            "--var", "env=CueRecall-D1-v0", "--run-id", "v2"]
    assert run_main(*args, experiments=experiments) == 0
    assert load_checkpoint(next(experiments.glob("HELMv2/*/v2")) / "ckpt_last.pt")["step"] == 64


def test_prepare_embeddings_without_a_transfo_xl_vocabulary_is_one_line(trxl, tmp_path):
    import shutil

    lm = tmp_path / "no-vocab"
    shutil.copytree(trxl, lm)
    (lm / "vocab.pkl").unlink()
    with pytest.raises(UserError, match="vocabulary"):
        load_lm_tokenizer(str(lm))
