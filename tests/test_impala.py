import torch

from models import build_agent
from utils.config import defaults


def _agent():
    torch.manual_seed(0)
    agent = build_agent("Impala-PPO", (56, 56, 3), 7, defaults())
    agent.eval()
    return agent


def _obs(n, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 255, (steps, n, 56, 56, 3), dtype=torch.uint8, generator=g)


def test_episode_start_resets_only_that_envs_state():
    agent = _agent()
    obs = _obs(2, 4)
    state = agent.initial_state(2)
    no = torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        for t in range(3):
            _, state = agent.act(obs[t], state, no)
        h_before = state["h"][None].clone()
        _, state = agent.act(obs[3], state, torch.tensor([True, False]))
        after = state["h"][None].clone()
        _, fresh_state = agent.act(obs[3], agent.initial_state(2), no)
        fresh = fresh_state["h"][None].clone()
    assert torch.allclose(after[0, 0], fresh[0, 0], atol=1e-6)  # env 0 forgot its past
    assert not torch.allclose(after[0, 1], fresh[0, 1], atol=1e-4)  # env 1 kept its memory
    assert not torch.allclose(h_before, after)


def test_update_re_runs_the_lstm_from_the_stored_state_exactly():
    agent = _agent()
    steps, n = 6, 3
    obs = _obs(n, steps, seed=1)
    starts = torch.zeros(steps, n, dtype=torch.bool)
    starts[0] = True
    starts[3, 1] = True  # env 1 starts a new episode mid-rollout
    with torch.no_grad():
        _, state = agent.act(obs[0], agent.initial_state(n), torch.ones(n, dtype=torch.bool))  # some history first
        first, outs = state, []
        for t in range(steps):
            out, state = agent.act(obs[t], state, starts[t])
            outs.append(out)
        state = first
    batch = {"obs": obs, "episode_starts": starts, "state": state,
             "actions": torch.stack([o.actions for o in outs])}
    log_probs, entropy, values = agent.evaluate(batch)
    assert torch.allclose(values, torch.stack([o.values for o in outs]).reshape(-1), atol=1e-5)
    assert torch.allclose(log_probs, torch.stack([o.log_probs for o in outs]).reshape(-1), atol=1e-5)
    assert values.requires_grad
