import torch

from trainers.gae import compute_gae


def test_gae_by_hand_with_termination():
    # one env, 3 steps; the episode terminates after step 1 (index 1), a new one starts at step 2
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [0.25], [1.0]])
    dones = torch.tensor([[False], [True], [False]])
    last = torch.tensor([2.0])
    g, lam = 0.9, 0.8
    d2 = 3.0 + g * 2.0 - 1.0
    d1 = 2.0 - 0.25  # terminal: no bootstrap
    d0 = 1.0 + g * 0.25 - 0.5
    a2, a1 = d2, d1
    a0 = d0 + g * lam * a1
    adv, ret = compute_gae(rewards, values, dones, last, g, lam)
    assert torch.allclose(adv[:, 0], torch.tensor([a0, a1, a2]))
    assert torch.allclose(ret, adv + values)


def test_gae_lambda_one_is_discounted_return_minus_value():
    rewards = torch.ones(4, 2)
    values = torch.zeros(4, 2)
    dones = torch.zeros(4, 2, dtype=torch.bool)
    adv, _ = compute_gae(rewards, values, dones, torch.tensor([10.0, 0.0]), 0.5, 1.0)
    expected0 = 1 + 0.5 + 0.25 + 0.125 + 0.0625 * 10
    assert adv[0, 0].item() == expected0
    assert adv[0, 1].item() == 1 + 0.5 + 0.25 + 0.125
