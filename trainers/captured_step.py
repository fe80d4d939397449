"""The rollout's per-step forward as one CUDA graph (config `cuda_graph=true`).

A rollout step for 16 envs is a few GFLOP spread over hundreds of small kernels: on a GPU it is
bound by the launches and by the host waiting on the device, not by compute. Captured once in a
CUDA graph, the whole step (encoder where it can be captured, memory step, heads, sampling) is
replayed with one launch, and the only device-host sync left per step is fetching the actions.

A graph replays fixed kernels on fixed addresses, so everything it touches must be static:

* inputs: the observations and episode starts are copied into buffers made once;
* the memory's state: an LM memory built with `static=True` updates its buffers in place
  (`StaticLMMemory`, `TransfoXLMemory(static=True)`); a trained memory's state (LSTM, GRU,
  GTrXL: a dict of tensors) is copied back into the same buffers after each step;
* sampling: `sample_without_syncs` (no host-side argument checks); a row with non-finite logits
  gets action -1, which the trainer turns into its usual error;
* the encoder is captured when it does no host work (`graph_safe`: the CNNs, the FrozenHopfield
  without its frame cache); CLIP-fed encoders and cached FrozenHopfields run eagerly before the
  replay, writing into the graph's input buffer.

`CapturedStep` runs the same code without a graph on the CPU, so its buffers and copies are
tested without a GPU; the capture itself is tested where CUDA is available.
"""

from __future__ import annotations

from typing import Any

import torch

from models.base import ActOutput, MemoryAgent, sample_without_syncs
from models.memory import NoMemory
from utils.errors import UserError

WARMUP_STEPS = 3  # eager steps on a side stream before capture (lazy allocations, cuBLAS workspaces)


def check_capturable(agent: MemoryAgent, device: torch.device) -> None:
    """One line on why this agent or device cannot use `cuda_graph`, or nothing."""
    if device.type != "cuda":
        raise UserError(f"cuda_graph=true needs a CUDA device, and this run uses {device.type}: "
                        "set device=cuda on a GPU machine, or cuda_graph=false")
    if not isinstance(agent, MemoryAgent):
        raise UserError(f"cuda_graph is not available for {type(agent).__name__}")
    memory = agent.memory
    if not (memory.trainable or isinstance(memory, NoMemory) or getattr(memory, "static", False)):
        raise UserError(f"cuda_graph needs a static-shape memory; {type(memory).__name__} is not one")


class CapturedStep:
    """`agent.act` for `n_envs` envs through static buffers; on CUDA, a captured graph replayed.

    The memory's state lives here (`.state`), and the outputs of `__call__` are buffers that the
    next call overwrites: copy what must outlive a step (the rollout does).
    """

    def __init__(self, agent: MemoryAgent, n_envs: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
                 device: torch.device, capture: bool | None = None) -> None:
        self.agent, self.device = agent, device
        self.capture = device.type == "cuda" if capture is None else capture
        self.state = agent.initial_state(n_envs)
        self.obs = torch.zeros((n_envs, *obs_shape), dtype=obs_dtype, device=device)
        self.starts = torch.zeros(n_envs, dtype=torch.bool, device=device)
        self.encoder_inside = bool(getattr(agent.encoder, "graph_safe", True))
        self.inputs: torch.Tensor | None = None  # the encoder's output, when it runs outside the graph
        self.extra: dict[str, torch.Tensor] = {}
        self.graph: Any = None
        self.calls = 0
        self._outputs: tuple[ActOutput, torch.Tensor, dict[str, torch.Tensor]] | None = None

    def __call__(self, obs: torch.Tensor, starts: torch.Tensor) -> ActOutput:
        """One step: actions, values and log-probs for `obs`; rows with `starts` begin an episode."""
        self.obs.copy_(obs, non_blocking=True)
        self.starts.copy_(starts, non_blocking=True)
        if not self.encoder_inside:
            self._encode_outside()
        with torch.no_grad():
            if self.capture and self.graph is None and self.calls >= WARMUP_STEPS:
                self._capture()
            if self.graph is not None:
                self.graph.replay()
                out, inputs, extra = self._outputs
            elif self.capture:
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    out, inputs, extra = self._body()
                torch.cuda.current_stream(self.device).wait_stream(side)
            else:
                out, inputs, extra = self._body()
        self.calls += 1
        self.agent.record(inputs, extra, self.starts)
        return out

    def _encode_outside(self) -> None:
        with torch.no_grad():
            inputs, extra = self.agent.encode(self.obs)
        if self.inputs is None:  # first call: the buffers the graph reads from then on
            self.inputs, self.extra = inputs.clone(), {name: value.clone() for name, value in extra.items()}
            return
        self.inputs.copy_(inputs)
        for name, value in extra.items():
            self.extra[name].copy_(value)

    def _body(self) -> tuple[ActOutput, torch.Tensor, dict[str, torch.Tensor]]:
        """What the graph captures: encoder (if inside), memory step, heads, sampling, state copy-back."""
        if self.encoder_inside:
            inputs, extra = self.agent.encode(self.obs)
        else:
            inputs, extra = self.inputs, self.extra
        out, state = self.agent.act_on_inputs(inputs, extra, self.obs, self.state, self.starts,
                                              sampler=sample_without_syncs)
        if isinstance(self.state, dict):  # a trained memory returns new tensors: back into the same buffers
            for name, value in state.items():
                self.state[name].copy_(value)
        return out, inputs, extra

    def _capture(self) -> None:
        torch.cuda.synchronize(self.device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._outputs = self._body()
