"""The rollout writes what it can while the envs step (EnvPool, AsyncVectorEnv): a run is identical with and without."""

import numpy as np
import pytest
import torch

from trainers.ppo import PPOTrainer
from trainers.run import build_trainer
from utils.config import defaults

ENV = "MiniGrid-KeyCorridorS3R1-v0"


def _has_envpool() -> bool:
    try:
        import envpool  # noqa: F401
    except ImportError:
        return False
    return True


def _plain_step(self, actions, meanwhile):
    meanwhile()
    return self.envs.step(actions)


def _train(vec_env: str) -> PPOTrainer:
    cfg = defaults() | {"model": "CNN-PPO", "env": ENV, "vec_env": vec_env, "n_envs": 4, "n_rollout_steps": 16,
                        "n_steps": 128, "n_batches": 2, "n_epochs": 1, "seed": 5, "torch_threads": 1,
                        "device": "cpu", "save_ckpt": False}
    trainer = build_trainer(cfg, None, writer=False)
    try:
        trainer.train()
    finally:
        trainer.envs.close()
    return trainer


@pytest.mark.parametrize("vec_env", [
    "sync", "async",
    pytest.param("envpool", marks=pytest.mark.skipif(not _has_envpool(), reason="needs EnvPool")),
])
def test_a_run_is_identical_with_and_without_the_overlap(vec_env, monkeypatch):
    overlapped = _train(vec_env)
    monkeypatch.setattr(PPOTrainer, "_step_envs", _plain_step)
    plain = _train(vec_env)
    assert overlapped.step == plain.step == 128
    for a, b in zip(overlapped.agent.parameters(), plain.agent.parameters()):
        assert torch.equal(a, b)
    for field in ("obs", "actions", "log_probs", "values", "rewards", "dones", "episode_starts"):
        assert torch.equal(getattr(overlapped.rollout, field), getattr(plain.rollout, field)), field


@pytest.mark.skipif(not _has_envpool(), reason="needs EnvPool")
def test_envpool_steps_while_the_trainer_writes():
    """step_async returns before the step is collected, and async + wait equals step."""
    from envs import make_env

    stepped, overlapped = make_env(ENV, 3, "envpool"), make_env(ENV, 3, "envpool")
    try:
        a, _ = stepped.reset(seed=2)
        b, _ = overlapped.reset(seed=2)
        rng = np.random.default_rng(0)
        for _ in range(200):
            actions = rng.integers(0, 3, 3)
            one = stepped.step(actions)
            overlapped.step_async(actions)
            two = overlapped.step_wait()
            for x, y in zip(one[:4], two[:4]):
                np.testing.assert_array_equal(x, y)
            assert one[4].keys() == two[4].keys()
    finally:
        stepped.close()
        overlapped.close()
