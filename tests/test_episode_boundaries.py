"""Pin the two episode-boundary behaviours: same-step autoreset and truncation bootstrapping."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from envs import make_env
from models.base import ActOutput, Agent
from trainers.ppo import PPOTrainer
from utils.config import defaults

VALUE = 0.5


class ThreeSteps(gym.Env):
    """Ends after 3 steps with reward 1: by termination, or by a time limit (truncation)."""

    def __init__(self, truncate: bool):
        self.truncate = truncate
        self.observation_space = gym.spaces.Box(0, 255, (4, 4, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def _obs(self):
        return np.full((4, 4, 3), self.t, dtype=np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        end = self.t == 3
        return self._obs(), float(end), end and not self.truncate, end and self.truncate, {}


class ConstantValueAgent(Agent):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.peeked = []

    def initial_state(self, n_envs):
        return {}

    def act(self, obs, state, episode_start, deterministic=False):
        n = obs.shape[0]
        return ActOutput(torch.zeros(n, dtype=torch.long), torch.full((n,), VALUE), torch.zeros(n)), state

    def peek_values(self, obs, state, episode_start):
        self.peeked.append(obs.clone())
        return torch.full((obs.shape[0],), VALUE)

    def evaluate(self, batch):
        n = batch["actions"].shape[0]
        logits = self.w.expand(n, 2)
        dist = torch.distributions.Categorical(logits=logits)
        return dist.log_prob(batch["actions"]), dist.entropy(), logits[:, 0] * 0 + VALUE


def _trainer(envs, **overrides):
    cfg = defaults() | {"seed": 0, "norm_reward": False, "n_rollout_steps": 6, "n_steps": 12,
                        "n_batches": 1, "n_epochs": 1, "gamma": 0.9, "model": "CNN-PPO"} | overrides
    return PPOTrainer(cfg, ConstantValueAgent(), envs, torch.device("cpu"), progress=False)


def test_truncation_bootstraps_from_final_observation_and_termination_does_not():
    mode = gym.vector.AutoresetMode.SAME_STEP
    envs = gym.vector.SyncVectorEnv([lambda: ThreeSteps(False), lambda: ThreeSteps(True)], autoreset_mode=mode)
    trainer = _trainer(envs)
    trainer.obs, _ = envs.reset(seed=0)
    trainer.episode_start = np.ones(2, dtype=bool)
    trainer.memory_state = trainer.agent.initial_state(2)
    trainer.collect_rollout()
    r, dones, starts = trainer.rollout.rewards, trainer.rollout.dones, trainer.rollout.episode_starts
    # step index 2 ends both episodes
    assert r[2, 0].item() == pytest.approx(1.0)  # terminated: no bootstrap
    assert r[2, 1].item() == pytest.approx(1.0 + 0.9 * VALUE)  # truncated: + gamma * V(final obs)
    assert dones[2].all() and not dones[:2].any()
    # the bootstrap looked at the final observation (t=3), not at the reset one (t=0)
    assert trainer.agent.peeked[0][1].max().item() == 3
    # same-step autoreset: the step after a done already holds the next episode's first observation
    assert starts[3].all() and trainer.rollout.obs[3].max().item() == 0
    assert starts[0].all() and not starts[1:3].any()
    # GAE does not bootstrap across the episode end in either case
    adv = trainer.rollout.advantages
    assert adv[2, 0].item() == pytest.approx(1.0 - VALUE)
    assert adv[2, 1].item() == pytest.approx(1.0 + 0.9 * VALUE - VALUE)


def test_make_env_uses_same_step_autoreset():
    envs = make_env("CueRecall-D1-v0", 2)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, _ = envs.reset(seed=0)
    for _ in range(3):  # cue, wait, query: the third step ends the episode
        obs, reward, term, trunc, info = envs.step(np.zeros(2, dtype=int))
    assert term.all() and "final_obs" in info
    assert obs.shape == (2, 56, 56, 3) and obs.dtype == np.uint8
    assert not np.array_equal(obs[0], info["final_obs"][0])  # the new episode's cue, not the query


def test_minigrid_observation_is_the_papers_56x56_rgb_partial_view():
    envs = make_env("MiniGrid-KeyCorridorS3R1-v0", 2)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, 56, 56, 3) and obs.dtype == np.uint8
    assert envs.single_action_space.n == 7
    envs.close()
