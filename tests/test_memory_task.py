"""A memory test that can fail: cue recall, where only an agent with memory beats chance.

The cue (red or blue) is shown at the first step only; one step later a query asks which it was.
HELM with a tiny frozen (random) LM and every trained memory (the LSTM baseline, the GRU and the
GTrXL) must learn it well above chance within a CPU-minute budget, while CNN-PPO, which only sees
the query, must stay at chance.
"""

from __future__ import annotations

import pytest
import torch

from conftest import run_main
from tests.curves_helpers import final_success

# Raw advantages (rewards are 0 or 1): once the task is solved they are near zero, and per-minibatch
# normalisation blows that noise up to unit scale, so PPO drifts off the solution (HELM fell back to
# chance in 2 of 4 seeds, the GRU in 3 of 4, some before learning, with the policy's entropy gone).
BUDGET = [
    "--var", "env=CueRecall-D1-v0", "--var", "n_envs=16", "--var", "n_rollout_steps=24", "--var", "n_batches=4",
    "--var", "learning_rate=1e-3", "--var", "ent_coef=0.01", "--var", "adv_norm=false", "--var", "save_ckpt=0", "--var", "n_steps=4608", "--var", "n_epochs=3",
]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """One layer, 128 wide: a random LM whose output still separates the two cue tokens clearly."""
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=128, n_head=4, n_positions=64, vocab_size=256,
                        bos_token_id=None, eos_token_id=None)
    path = tmp_path_factory.mktemp("lm") / "gpt2-1x128"
    GPT2Model(config).save_pretrained(path)
    return str(path)


def _train(model: str, experiments, *extra) -> float:
    assert run_main("--var", f"model={model}", *BUDGET, *extra, "--var", "seed=1", "--run-id", "cue",
                    experiments=experiments) == 0
    return final_success(next(experiments.glob(f"{model}/*/cue")))


@pytest.mark.slow
def test_helm_remembers_the_cue(tiny_lm, experiments):
    assert _train("HELM", experiments, "--var", f"lm={tiny_lm}", "--var", "mem_len=8") >= 0.75


@pytest.mark.slow
@pytest.mark.parametrize("model", ["Impala-PPO", "GRU-PPO", "TrXL-PPO"])
def test_trained_memories_remember_the_cue(model, experiments):
    # twice the budget (--var given twice: the last one counts): a memory trained from scratch must
    # first learn what to keep. The transformer needs the normalised step to leave chance in time
    # (raw advantages: 2 of 4 seeds still at chance after 9k steps), and a smaller one than 1e-3,
    # where its updates' KL jumps to 0.3-0.5 and it forgets what it had solved; with 3e-4 and
    # normalised advantages 4 of 4 seeds reach 1.0.
    lr = ["--var", "learning_rate=3e-4", "--var", "adv_norm=true"] if model == "TrXL-PPO" else []
    assert _train(model, experiments, "--var", "n_steps=9216", *lr) >= 0.75


@pytest.mark.slow
def test_cnn_without_memory_stays_at_chance(experiments):
    assert _train("CNN-PPO", experiments) <= 0.65
