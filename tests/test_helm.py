"""The HELM agent: frozen LM, FrozenHopfield inputs, stored LM outputs, end-to-end runs."""

from __future__ import annotations

import pytest
import torch

from conftest import run_main
from models import build_agent
from tests.tiny_lms import tiny_gpt2, tiny_llama
from trainers.ppo import PPOTrainer
from envs import make_env
from utils.checkpoint import load_checkpoint
from utils.config import defaults


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return tiny_gpt2(str(tmp_path_factory.mktemp("lm") / "gpt2"), n_positions=64)


def _cfg(lm, **kw):
    return defaults() | {"model": "HELM", "lm": lm, "mem_len": 8, "seed": 3, "n_envs": 2,
                         "n_rollout_steps": 8, "n_batches": 2, "n_epochs": 2, "n_steps": 16} | kw


def test_projection_survives_checkpoint_reload(lm_dir):
    agent = build_agent("HELM", (56, 56, 3), 7, _cfg(lm_dir, seed=1))
    other = build_agent("HELM", (56, 56, 3), 7, _cfg(lm_dir, seed=2))
    assert not torch.equal(agent.encoder.hopfield.projection, other.encoder.hopfield.projection)
    other.load_checkpoint_state(agent.checkpoint_state())
    assert torch.equal(agent.encoder.hopfield.projection, other.encoder.hopfield.projection)
    # the frozen LM is reloaded from `lm`, never written into checkpoints
    assert not any(k.startswith("memory") and "lm" in k for k in agent.checkpoint_state())


def test_update_trains_only_cnn_and_heads_and_never_runs_the_lm(lm_dir, monkeypatch):
    cfg = _cfg(lm_dir)
    envs = make_env("CueRecall-D1-v0", cfg["n_envs"])
    agent = build_agent("HELM", envs.single_observation_space.shape, 2, cfg)
    lm_before = {k: v.clone() for k, v in agent.memory.lm.state_dict().items()}
    trainer = PPOTrainer(cfg, agent, envs, torch.device("cpu"), progress=False)
    trainable = {n for g in trainer.optimizer.param_groups for p in g["params"] for n, q in agent.named_parameters() if p is q}
    assert trainable == {n for n, _ in agent.named_parameters() if n.startswith(("skip.", "heads."))}
    assert all(not p.requires_grad for p in agent.memory.lm.parameters())

    trainer.obs, _ = envs.reset(seed=0)
    trainer.episode_start = torch.ones(2, dtype=torch.bool).numpy()
    trainer.memory_state = agent.initial_state(2)
    trainer.collect_rollout()
    assert trainer.rollout.features["memory_out"].shape == (8, 2, agent.memory.out_dim)

    def forbidden(*args, **kwargs):
        raise AssertionError("the PPO update must not run the language model")

    monkeypatch.setattr(agent.memory, "step", forbidden)
    monkeypatch.setattr(agent.memory, "peek", forbidden)
    monkeypatch.setattr(agent.memory.lm, "forward", forbidden)
    heads_before = [p.clone() for p in agent.heads.parameters()]
    trainer.update()
    assert any(not torch.equal(a, b) for a, b in zip(heads_before, agent.heads.parameters()))
    for name, value in agent.memory.lm.state_dict().items():
        assert torch.equal(value, lm_before[name]), name
    assert all(p.grad is None for p in agent.memory.lm.parameters())
    assert not agent.memory.lm.training


def test_rollout_lm_outputs_are_what_the_policy_saw(lm_dir):
    """Evaluating stored features reproduces the rollout's log-probs and values exactly."""
    cfg = _cfg(lm_dir)
    envs = make_env("CueRecall-D1-v0", 2)
    agent = build_agent("HELM", envs.single_observation_space.shape, 2, cfg)
    trainer = PPOTrainer(cfg, agent, envs, torch.device("cpu"), progress=False)
    trainer.obs, _ = envs.reset(seed=0)
    trainer.episode_start = torch.ones(2, dtype=torch.bool).numpy()
    trainer.memory_state = agent.initial_state(2)
    trainer.collect_rollout()
    r = trainer.rollout
    batch = {"obs": r.obs.flatten(0, 1), "actions": r.actions.flatten(),
             "memory_out": r.features["memory_out"].flatten(0, 1)}
    log_probs, _, values = agent.evaluate(batch)
    assert torch.allclose(values, r.values.flatten(), atol=1e-5)
    assert torch.allclose(log_probs, r.log_probs.flatten(), atol=1e-5)


@pytest.mark.parametrize("maker", [tiny_gpt2, tiny_llama])
def test_main_trains_resumes_and_evaluates_helm(maker, tmp_path, experiments):
    lm = maker(str(tmp_path / "lm"))
    args = ["--var", "model=HELM", "--var", f"lm={lm}", "--var", "mem_len=16", "--var", "env=MiniGrid-MemoryS7-v0",
            "--run-id", "h"]
    assert run_main(*args, experiments=experiments) == 0
    run = next(experiments.glob("HELM/*/h"))
    assert load_checkpoint(run / "ckpt_last.pt")["step"] == 64

    import eval as evaluate
    import main

    assert main.main(["--resume", str(run), "--var", "n_steps=96", "--no-progress"]) == 0
    assert load_checkpoint(run / "ckpt_last.pt")["step"] == 96
    assert evaluate.main(["--ckpt-path", str(run), "--n-episodes", "1", "--out", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "summary.json").is_file()


def test_bad_lm_values_are_one_line_errors(tmp_path, experiments, capsys):
    assert run_main("--var", "model=HELM", "--var", f"lm={tmp_path}/nope", experiments=experiments) == 2
    assert run_main("--var", "model=HELM", "--var", "lm=no-such-org/no-such-model", experiments=experiments) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert "no-such-org/no-such-model" in err[1] and "minilm" in err[1]
    assert not experiments.exists() or not any(experiments.rglob("*.pt"))


def test_memory_words_search_each_distinct_input_once(lm_dir):
    """Traces name each memory input by its nearest token; repeated inputs reuse the first search."""
    agent = build_agent("HELM", (56, 56, 3), 7, _cfg(lm_dir))
    vocab = agent.vocabulary.embeddings()
    items = torch.stack([vocab[[5, 9]], vocab[[9, 5]], vocab[[5, 5]]]) * 3.0  # [3 rows, k=2, d]
    searched = []
    nearest = agent.vocabulary.nearest_tokens
    agent.vocabulary.nearest_tokens = lambda embeds: searched.append(len(embeds)) or nearest(embeds)
    words = agent.encoder.words(items)
    texts = agent.vocabulary.token_texts
    assert words == [texts([5, 9]), texts([9, 5]), texts([5, 5])]
    assert agent.encoder.words(items[1:]) == words[1:]
    assert searched == [2]  # two distinct inputs, searched once
