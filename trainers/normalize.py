"""Reward scaling by the running standard deviation of the discounted return.

This is what Stable-Baselines3's ``VecNormalize(norm_reward=True, clip_reward=...)`` does and what
the papers trained with: rewards are divided by the std of the return (not centred), then clipped.
"""

from __future__ import annotations

import numpy as np


class RunningMeanStd:
    """Streaming mean and variance (Chan et al.'s parallel update)."""

    def __init__(self, epsilon: float = 1e-4):
        self.mean, self.var, self.count = 0.0, 1.0, epsilon

    def update(self, x: np.ndarray) -> None:
        batch_mean, batch_var, batch_count = float(np.mean(x)), float(np.var(x)), x.size
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean += delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var, self.count = m2 / total, total


class RewardNormalizer:
    def __init__(self, n_envs: int, gamma: float, clip: float = 1.0, enabled: bool = True, epsilon: float = 1e-8):
        self.returns = np.zeros(n_envs)
        self.rms = RunningMeanStd()
        self.gamma, self.clip, self.enabled, self.epsilon = gamma, clip, enabled, epsilon

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return rewards.astype(np.float32)
        self.returns = self.returns * self.gamma + rewards
        self.rms.update(self.returns)
        self.returns[dones] = 0.0
        return self.scale(rewards)

    def scale(self, rewards: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return rewards.astype(np.float32)
        scaled = rewards / np.sqrt(self.rms.var + self.epsilon)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {"returns": self.returns.copy(), "mean": self.rms.mean, "var": self.rms.var, "count": self.rms.count}

    def load_state_dict(self, state: dict) -> None:
        if len(state["returns"]) == len(self.returns):
            self.returns = np.array(state["returns"], dtype=float)
        self.rms.mean, self.rms.var, self.rms.count = state["mean"], state["var"], state["count"]
