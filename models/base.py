"""The small interface through which the one PPO trainer drives every agent, and the one agent
that every model is: an encoder, a memory and the actor-critic heads.

The caller (the trainer's rollout, eval.py) owns the memory's state: it asks the agent for an
``initial_state``, passes the state to every ``act`` and keeps the state ``act`` returns. Whatever
``act`` returns in ``features`` is stored with the rollout and handed back to ``evaluate`` in the
update, so an expensive frozen computation (HELM's language model) runs once per env step and
never in the PPO epochs. An agent with a trained memory is ``recurrent``: the trainer then gives
``evaluate`` whole per-env sequences, shaped ``[T, B, ...]``, with the state the rollout started
from in ``batch["state"]``, and the memory is re-run over them (``Memory.scan``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.distributions import Categorical

from models.memory import Memory, NoMemory, State
from models.networks import ActorCritic


@dataclass
class ActOutput:
    actions: torch.Tensor  # [B]
    values: torch.Tensor  # [B]
    log_probs: torch.Tensor  # [B]
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # [B, ...] each, stored per step
    memory_out: torch.Tensor | None = None  # [B, out_dim] what the memory gave the policy (not stored; probes read it)


class Agent(nn.Module):
    recurrent: bool = False
    # state_dict prefixes of frozen pretrained weights that are reloaded from their source
    # instead of being written into every checkpoint
    frozen_prefixes: tuple[str, ...] = ()

    def initial_state(self, n_envs: int) -> State:
        """The memory of `n_envs` envs that have seen nothing yet."""
        raise NotImplementedError

    def act(self, obs: torch.Tensor, state: State, episode_start: torch.Tensor,
            deterministic: bool = False) -> tuple[ActOutput, State]:
        """Choose actions for one env step; rows with ``episode_start`` begin a new episode."""
        raise NotImplementedError

    def peek_values(self, obs: torch.Tensor, state: State, episode_start: torch.Tensor) -> torch.Tensor:
        """V(obs) as if ``act`` were called next; ``state`` is left as it was."""
        raise NotImplementedError

    def evaluate(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probs of ``batch['actions']``, entropies and values, with gradients."""
        raise NotImplementedError

    def step_log(self) -> dict[str, float]:
        """Extra scalars for TensorBoard (e.g. a feature-cache hit rate)."""
        return {}

    def step_text(self) -> dict[str, str]:
        """Text for TensorBoard, logged every few updates (e.g. the words in env 0's memory)."""
        return {}

    # -- checkpoints: everything but the frozen pretrained weights ---------------------------
    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith(self.frozen_prefixes)}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(self.frozen_prefixes)]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the agent: missing {missing[:3]}, unexpected {unexpected[:3]}")


def distribution(logits: torch.Tensor) -> Categorical:
    return Categorical(logits=logits)


def sample(logits: torch.Tensor, values: torch.Tensor, deterministic: bool, features: dict[str, Any] | None = None) -> ActOutput:
    dist = distribution(logits)
    actions = logits.argmax(-1) if deterministic else dist.sample()
    return ActOutput(actions, values, dist.log_prob(actions), features or {})


def sample_without_syncs(logits: torch.Tensor, values: torch.Tensor, deterministic: bool,
                         features: dict[str, Any] | None = None) -> ActOutput:
    """`sample` with no device-host sync, for a captured CUDA graph.

    `Categorical` checks its arguments on the host. Here an action is drawn by the exponential
    race (argmax_i p_i / E_i with E_i ~ Exp(1) picks i with probability p_i), which is also how
    `torch.multinomial` draws one sample. Rows with non-finite logits get action -1, for the
    caller to report with the actions it fetches anyway.
    """
    log_p = logits.float().log_softmax(-1)
    if deterministic:
        actions = logits.argmax(-1)
    else:
        actions = (log_p - torch.empty_like(log_p).exponential_().log()).argmax(-1)
    log_probs = log_p.gather(-1, actions[:, None]).squeeze(-1)
    actions = actions.masked_fill(~torch.isfinite(logits).all(-1), -1)
    return ActOutput(actions, values, log_probs, features or {})


class MemoryAgent(Agent):
    """encoder -> memory -> [memory output || skip(obs)] -> actor-critic heads.

    * `encoder`: observations [B, ...] -> the memory's inputs [B, ...]; trainable (a CNN) or frozen
      (HELM's FrozenHopfield, CLIP). A frozen encoder may return extra per-step features too.
    * `memory`: `NoMemory` (CNN-PPO), a trained memory (LSTM, GRU, TrXL: the agent is recurrent
      and the update re-runs encoder and memory over whole env sequences), or a frozen LM (its
      output is computed once per env step and stored with the rollout as `memory_out`).
    * `skip`: an optional trainable CNN of the current observation, concatenated to the memory's
      output (the HELM family's query CNN).
    """

    def __init__(self, encoder: nn.Module, memory: Memory, n_actions: int, skip: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder, self.memory, self.skip = encoder, memory, skip
        self.heads = ActorCritic(memory.out_dim + (skip.out_dim if skip is not None else 0), n_actions)
        self.recurrent = memory.trainable
        # a frozen memory with state (an LM): its outputs are stored, never recomputed in the update
        self.stores_memory_out = not memory.trainable and not isinstance(memory, NoMemory)

    def initial_state(self, n_envs: int) -> State:
        return self.memory.initial_state(n_envs)

    def encode(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The memory's inputs for observations [B, ...], and extra features to store per step."""
        return self.encoder(obs), {}

    def policy(self, memory_out: torch.Tensor, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and values from the memory's output (and the skip CNN of the observation)."""
        x = memory_out.float()  # a bf16 frozen LM (precision=bf16) too
        if self.skip is not None:
            x = torch.cat([x, self.skip(obs)], dim=-1)
        return self.heads(x)

    def act(self, obs: torch.Tensor, state: State, episode_start: torch.Tensor,
            deterministic: bool = False) -> tuple[ActOutput, State]:
        inputs, extra = self.encode(obs)
        out, state = self.act_on_inputs(inputs, extra, obs, state, episode_start, deterministic)
        self.record(inputs, extra, episode_start)
        return out, state

    def act_on_inputs(self, inputs: torch.Tensor, extra: dict[str, torch.Tensor], obs: torch.Tensor, state: State,
                      episode_start: torch.Tensor, deterministic: bool = False, sampler=sample) -> tuple[ActOutput, State]:
        """`act` from the encoder's output on: memory step, heads, sampling (what a CUDA graph captures)."""
        memory_out, state = self.memory.step(inputs, state, episode_start)
        logits, values = self.policy(memory_out, obs)
        features = {"memory_out": memory_out.float(), **extra} if self.stores_memory_out else extra
        out = sampler(logits, values, deterministic, features)
        out.memory_out = memory_out
        return out, state

    def frame_features(self, obs: torch.Tensor) -> torch.Tensor:
        """A memory-free representation of the current frame (the trainable CNN's): a probe's floor."""
        return (self.skip if self.skip is not None else self.encoder)(obs)

    def peek_values(self, obs: torch.Tensor, state: State, episode_start: torch.Tensor) -> torch.Tensor:
        return self.policy(self.memory.peek(self.encode(obs)[0], state, episode_start), obs)[1]

    def evaluate(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        obs = batch["obs"]
        if self.recurrent:  # whole env sequences [T, B, ...] from the rollout's first state
            steps, n_seq = batch["episode_starts"].shape
            flat_obs = obs.reshape(steps * n_seq, *obs.shape[2:])
            inputs = self.encode(flat_obs)[0]
            outs, _ = self.memory.scan(inputs.view(steps, n_seq, *inputs.shape[1:]), batch["state"],
                                       batch["episode_starts"])
            logits, values = self.policy(outs.reshape(steps * n_seq, -1), flat_obs)
            actions = batch["actions"].reshape(-1)
        else:
            memory_out = batch["memory_out"] if self.stores_memory_out else self.encode(obs)[0]
            logits, values = self.policy(memory_out, obs)
            actions = batch["actions"]
        dist = distribution(logits)
        return dist.log_prob(actions), dist.entropy(), values

    def record(self, inputs: torch.Tensor, extra: dict[str, torch.Tensor], episode_start: torch.Tensor) -> None:
        """A hook to keep what was fed to the memory, for traces (the LM-memory agents use it)."""
