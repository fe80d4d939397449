"""Impala-PPO: the recurrent baseline, a small CNN followed by an LSTM.

The LSTM state is zeroed for an env at its episode start. In the PPO update the LSTM is re-run
over each env's whole rollout from the state stored at the rollout's start (BPTT over the
rollout), with the same resets, so the gradients see the memory the actions were taken with.
"""

from __future__ import annotations

import torch
from torch import nn

from models.base import ActOutput, Agent, distribution, sample
from models.networks import ActorCritic, SmallImpalaCNN


class ImpalaPPO(Agent):
    recurrent = True

    def __init__(self, obs_shape: tuple[int, int, int], n_actions: int, cfg: dict, hidden: int = 256):
        super().__init__()
        self.cnn = SmallImpalaCNN(obs_shape, channel_scale=1, hidden=hidden, precision=cfg.get("precision", "fp32"))
        self.lstm = nn.LSTM(hidden, hidden)
        self.heads = ActorCritic(hidden, n_actions)
        self.hidden = hidden
        self.h = self.c = torch.zeros(1, 0, hidden)

    def reset_memory(self, n_envs: int) -> None:
        device = next(self.parameters()).device
        self.h = torch.zeros(1, n_envs, self.hidden, device=device)
        self.c = torch.zeros(1, n_envs, self.hidden, device=device)

    def _step(self, x, episode_start, h, c):
        keep = (~episode_start).float().view(1, -1, 1)
        out, (h, c) = self.lstm(x.unsqueeze(0), (h * keep, c * keep))
        return out.squeeze(0), h, c

    def act(self, obs: torch.Tensor, episode_start: torch.Tensor, deterministic: bool = False) -> ActOutput:
        out, self.h, self.c = self._step(self.cnn(obs), episode_start, self.h, self.c)
        logits, values = self.heads(out)
        return sample(logits, values, deterministic)

    def peek_values(self, obs: torch.Tensor, episode_start: torch.Tensor) -> torch.Tensor:
        out, _, _ = self._step(self.cnn(obs), episode_start, self.h, self.c)
        return self.heads(out)[1]

    def rollout_state(self) -> dict[str, torch.Tensor]:
        return {"h": self.h[0].clone(), "c": self.c[0].clone()}

    def evaluate(self, batch):
        obs, starts = batch["obs"], batch["episode_starts"]  # [T, B, ...], [T, B]
        steps, n_seq = starts.shape
        x = self.cnn(obs.reshape(steps * n_seq, *obs.shape[2:])).view(steps, n_seq, -1)
        h, c = batch["state"]["h"].unsqueeze(0), batch["state"]["c"].unsqueeze(0)
        # Run the LSTM over whole stretches between episode starts (one fused call each) instead
        # of step by step; states are zeroed only where a stretch begins with a start.
        cuts = torch.nonzero(starts[1:].any(dim=1)).flatten().add(1).tolist()
        outs = []
        for begin, end in zip([0, *cuts], [*cuts, steps]):
            keep = (~starts[begin]).float().view(1, -1, 1)
            out, (h, c) = self.lstm(x[begin:end], (h * keep, c * keep))
            outs.append(out)
        logits, values = self.heads(torch.cat(outs).view(steps * n_seq, -1))
        dist = distribution(logits)
        actions = batch["actions"].reshape(-1)
        return dist.log_prob(actions), dist.entropy(), values
