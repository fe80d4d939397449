"""precision=bf16: the CNN under bfloat16 autocast, the frozen LM in bfloat16, everything else fp32."""

from __future__ import annotations

import pytest
import torch

from conftest import run_main
from models import build_agent
from models.networks import SmallImpalaCNN
from tests.tiny_lms import tiny_gpt2, tiny_transfo_xl
from utils.checkpoint import load_checkpoint
from utils.config import defaults

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return tiny_gpt2(str(tmp_path_factory.mktemp("lm") / "gpt2"), n_positions=64)


def _helm(lm: str, precision: str):
    cfg = defaults() | {"model": "HELM", "lm": lm, "mem_len": 8, "seed": 3, "precision": precision}
    return build_agent("HELM", (56, 56, 3), 7, cfg)


def test_bf16_cnn_keeps_fp32_weights_outputs_and_gradients():
    torch.manual_seed(0)
    full = SmallImpalaCNN((56, 56, 3), channel_scale=4, hidden=1024)
    half = SmallImpalaCNN((56, 56, 3), channel_scale=4, hidden=1024, precision="bf16")
    half.load_state_dict(full.state_dict())
    obs = torch.randint(0, 256, (8, 56, 56, 3), dtype=torch.uint8)
    out_full, out_half = full(obs), half(obs)
    assert out_half.dtype == torch.float32 and all(p.dtype == torch.float32 for p in half.parameters())
    # bf16 keeps 8 bits of mantissa: close to fp32, not equal
    assert not torch.equal(out_full, out_half)
    torch.testing.assert_close(out_half, out_full, atol=0.05 * out_full.abs().max().item(), rtol=0.05)
    out_half.square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and p.grad.isfinite().all()
               for p in half.parameters())


def test_precision_must_be_fp32_or_bf16():
    with pytest.raises(ValueError, match="precision"):
        SmallImpalaCNN((56, 56, 3), precision="fp16")


def test_bf16_helm_has_a_bf16_lm_and_an_fp32_frozen_hopfield(lm_dir):
    full, half = _helm(lm_dir, "fp32"), _helm(lm_dir, "bf16")
    assert full.memory.lm.dtype == torch.float32 and half.memory.lm.dtype == torch.bfloat16
    assert half.encoder.hopfield.embeddings.dtype == torch.float32
    obs = torch.randint(0, 256, (2, 56, 56, 3), dtype=torch.uint8)
    # the retrieval runs in fp32 over the LM's (now bf16-rounded) vocabulary
    inputs = half.encoder(obs)
    assert inputs.dtype == torch.float32
    torch.testing.assert_close(inputs, full.encoder(obs), atol=2e-3, rtol=0)
    for agent in (full, half):
        state = agent.initial_state(2)
        out, state = agent.act(obs, state, torch.ones(2, dtype=torch.bool))
        assert out.features["memory_out"].dtype == torch.float32 and out.features["memory_out"].isfinite().all()


@pytest.mark.parametrize("model", ["CNN-PPO", "Impala-PPO", "HELM"])
def test_main_trains_and_evaluates_in_bf16(model, lm_dir, experiments, tmp_path):
    args = ["--var", f"model={model}", "--var", "precision=bf16", "--var", "env=MiniGrid-MemoryS7-v0", "--run-id", "b"]
    if model == "HELM":
        args += ["--var", f"lm={lm_dir}", "--var", "mem_len=16"]
    assert run_main(*args, experiments=experiments) == 0
    run = next(experiments.glob(f"{model}/*/b"))
    checkpoint = load_checkpoint(run / "ckpt_last.pt")
    assert checkpoint["step"] == 64 and checkpoint["config"]["precision"] == "bf16"
    assert all(v.dtype != torch.bfloat16 for v in checkpoint["agent"].values() if torch.is_tensor(v))

    import eval as evaluate

    assert evaluate.main(["--ckpt-path", str(run), "--n-episodes", "1", "--out", str(tmp_path / "ev"),
                          "--no-progress"]) == 0


def test_unknown_precision_is_a_one_line_error(experiments, capsys):
    assert run_main("--var", "model=CNN-PPO", "--var", "precision=fp16", experiments=experiments) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "precision" in err[0] and "bf16" in err[0]


def test_helm_with_a_bf16_transfo_xl_trains(tmp_path, experiments):
    trxl = tiny_transfo_xl(str(tmp_path / "trxl"))
    agent = _helm(trxl, "bf16")
    assert agent.vocabulary.embeddings().dtype == torch.bfloat16
    assert run_main("--var", "model=HELM", "--var", f"lm={trxl}", "--var", "mem_len=6", "--var", "precision=bf16",
                    "--var", "env=MiniGrid-MemoryS7-v0", "--run-id", "t", experiments=experiments) == 0
    assert load_checkpoint(next(experiments.glob("HELM/*/t")) / "ckpt_last.pt")["step"] == 64
