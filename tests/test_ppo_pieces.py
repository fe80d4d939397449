import numpy as np
import pytest
import torch

from trainers.normalize import RewardNormalizer
from trainers.ppo import explained_variance, ppo_losses
from trainers.schedules import decayed


def _losses(log_probs, old, adv, clip=0.2, values=None, old_values=None, returns=None, clip_vf=None):
    n = len(adv)
    values = torch.zeros(n) if values is None else values
    old_values = torch.zeros(n) if old_values is None else old_values
    returns = torch.zeros(n) if returns is None else returns
    return ppo_losses(log_probs, old, adv, values, old_values, returns, torch.ones(n), clip, clip_vf)


def test_policy_loss_unclipped_at_ratio_one():
    adv = torch.tensor([1.0, -2.0, 0.5])
    lp = torch.log(torch.tensor([0.3, 0.2, 0.5]))
    out = _losses(lp, lp, adv)
    assert out["policy_loss"].item() == pytest.approx(-adv.mean().item())
    assert out["approx_kl"].item() == pytest.approx(0.0)
    assert out["clip_fraction"].item() == 0.0
    assert out["entropy_loss"].item() == -1.0


def test_policy_loss_clips_the_ratio_pessimistically():
    old = torch.log(torch.tensor([0.5, 0.5]))
    new = torch.log(torch.tensor([1.0, 0.1]))  # ratios 2.0 and 0.2
    adv = torch.tensor([1.0, -1.0])
    out = _losses(new, old, adv)
    # positive advantage: min(2, 1.2) * 1 -> 1.2; negative: max(0.2, 0.8) * -1 -> -0.8 (loss 0.8)
    assert out["policy_loss"].item() == pytest.approx((-1.2 + 0.8) / 2)
    assert out["clip_fraction"].item() == 1.0


def test_value_loss_with_and_without_clipping():
    values, old, returns = torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([1.0])
    lp = torch.zeros(1)
    assert _losses(lp, lp, torch.zeros(1), values=values, old_values=old, returns=returns)["value_loss"].item() == 1.0
    clipped = _losses(lp, lp, torch.zeros(1), values=values, old_values=old, returns=returns, clip_vf=0.5)
    assert clipped["value_loss"].item() == pytest.approx(0.25)  # prediction clipped to 0.5


def test_explained_variance():
    target = torch.tensor([1.0, 2.0, 3.0])
    assert explained_variance(target, target) == 1.0
    assert explained_variance(torch.zeros(3) + 2, target) == pytest.approx(0.0)


def test_schedules():
    assert decayed(1.0, 0.1, "none", 0.5) == 1.0
    assert decayed(1.0, 0.0, "linear", 0.25) == 0.75
    assert decayed(1.0, 0.01, "exponential", 0.5) == pytest.approx(0.1)
    assert decayed(1.0, 0.01, "exponential", 1.0) == pytest.approx(0.01)
    assert decayed(1.0, 0.0, "linear", 2.0) == 0.0


def test_reward_normalizer_divides_by_return_std_and_clips():
    norm = RewardNormalizer(n_envs=2, gamma=0.9, clip=1.0)
    rng = np.random.default_rng(0)
    returns, history = np.zeros(2), []
    for _ in range(200):
        r = rng.normal(size=2)
        dones = rng.random(2) < 0.1
        out = norm(r, dones)
        returns = returns * 0.9 + r
        history.extend(returns)
        returns[dones] = 0
        assert np.all(np.abs(out) <= 1.0)
    # the running variance matches the variance of all discounted returns seen
    assert norm.rms.var == pytest.approx(np.var(history), rel=0.02)
    expected = np.clip(np.array([0.3, -5.0]) / np.sqrt(norm.rms.var + 1e-8), -1, 1)
    assert np.allclose(norm.scale(np.array([0.3, -5.0])), expected)
    off = RewardNormalizer(n_envs=2, gamma=0.9, enabled=False)
    assert np.allclose(off(np.array([3.0, -2.0]), np.array([False, False])), [3.0, -2.0])


def test_success_means_the_episode_ended_on_a_positive_reward():
    """RandomMaze: wall bumps make the return negative even when the goal (+1, last step) is reached."""
    from trainers.ppo import EpisodeStats

    stats = EpisodeStats(2)
    stats.update(np.array([-1.0, -0.01]), np.array([False, False]))
    stats.update(np.array([-0.01, -0.01]), np.array([False, False]))
    stats.update(np.array([1.0, -0.01]), np.array([True, True]))  # env 0 reaches the goal, env 1 times out
    summary = stats.summary()
    assert stats.recent_returns[0] < 0 and summary["rollout/success_rate"] == 0.5

    restored = EpisodeStats(2)
    restored.load_state_dict(stats.state_dict())
    assert restored.summary() == summary
    old = {k: v for k, v in stats.state_dict().items() if k != "recent_successes"}  # older checkpoints
    legacy = EpisodeStats(2)
    legacy.load_state_dict(old)
    assert list(legacy.recent_successes) == [False, False]  # return > 0, as MiniGrid counted it
