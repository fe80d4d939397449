"""The papers' Transformer-XL (wt103) as the agent's memory, in our own code.

transformers dropped Transformer-XL after 4.37, so HELM's original memory is implemented here
with torch only; `load_transfo_xl` reads the hub checkpoint (`transfo-xl/transfo-xl-wt103`) or a
local copy of it, and `TransfoXLMemory` runs it one env step at a time.

The model (what the checkpoint holds)
    * adaptive input embedding: token ids are split into clusters by `cutoffs`; cluster j has its
      own table of width d_embed / div_val**j and a projection to d_model; the result is scaled by
      sqrt(d_model);
    * `n_layer` post-norm blocks: relative multi-head attention (no biases in the projections,
      learned per-layer "content" and "position" biases r_w_bias / r_r_bias, sinusoidal relative
      position embeddings projected by r_net) followed by a position-wise feed-forward block.

The memory (what `TransfoXLMemory` keeps)
    Transformer-XL remembers, per layer, the *inputs* of the last mem_len positions. The LM is
    frozen, so a remembered position's key and value never change: we keep the per-layer keys
    and values instead, in fixed ring buffers written in place, and a step computes only the new
    tokens' projections and their attention over the buffers. The relative position term needs
    r_net of the sinusoid of every distance 0..mem_len-1 (clamped at clamp_len); those tables are
    computed once per layer.

    Window (`same_length`, the wt103 setting): the token at absolute index q attends to the keys
    at distances 0..mem_len-1, i.e. itself and the mem_len - 1 tokens before it. That is what
    transformers 4.37 lets a query see once its memory holds mem_len positions (always the case
    in HELM, which starts from mem_len zero positions), for one or several tokens per call. So
    only the last mem_len - 1 positions are ever needed again, and that is the buffers' size.

    Episode boundaries, two choices (`reset`):
    * "zero" (the original HELM, exact): memory starts as zero positions and an episode start
      sets the row's remembered layer inputs to zero. With bias-free key/value projections that
      means zero keys and values: those positions stay in the softmax with a content score of 0
      and their position score, and add nothing to the output.
    * "mask" (default): keys from before the row's current episode (and never-filled slots) are
      masked out, so a token attends to the tokens of its own episode within the window:
      max(q - mem_len + 1, episode start) .. q. This is what 4.37 computes for a sequence that
      starts at the episode start with empty (not zero) memory. Distances are always q - j, so
      however long an episode runs nothing is ever re-encoded.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import collections
import dataclasses
import json
import math
import os
import pickle
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from models.memory import Memory
from utils.errors import UserError
from utils.hub import first_line, hub_offline, hub_reachable

SHORT_NAME = "transfo-xl-wt103"
HUB_ID = "transfo-xl/transfo-xl-wt103"
OFFLINE_DEFAULT = "minilm"  # the offline default LM of models.lm_memory (not imported: it needs transformers 5)

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # preferred first
VOCAB_FILES = ("vocab.pkl", "vocab.bin")


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrXLConfig:
    """The architecture settings of a Transformer-XL checkpoint; the defaults are wt103's."""

    n_token: int = 267735
    cutoffs: tuple[int, ...] = (20000, 40000, 200000)
    div_val: int = 4
    d_model: int = 1024
    d_embed: int = 1024
    n_head: int = 16
    d_head: int = 64
    d_inner: int = 4096
    n_layer: int = 18
    pre_lnorm: bool = False
    untie_r: bool = True
    same_length: bool = True
    clamp_len: int = 1000
    layer_norm_epsilon: float = 1e-5
    tie_projs: tuple[bool, ...] = (False, True, True, True)
    attn_type: int = 0

    @classmethod
    def from_dict(cls, raw: dict, source: str = CONFIG_FILE) -> TrXLConfig:
        """Read the keys of a transformers `TransfoXLConfig` dict (unknown keys are ignored)."""
        if not isinstance(raw, dict):
            raise UserError(f"{source} must hold a JSON object")
        model_type = raw.get("model_type")
        if model_type is not None and model_type != "transfo-xl":
            raise UserError(f"{source} describes a {model_type!r} model, not Transformer-XL ('transfo-xl')")
        defaults = cls()
        values = {}
        try:
            values["n_token"] = int(raw.get("vocab_size", raw.get("n_token", defaults.n_token)))
            values["cutoffs"] = tuple(int(c) for c in raw.get("cutoffs", defaults.cutoffs))
            for name in ("div_val", "d_model", "n_head", "d_head", "d_inner", "n_layer", "clamp_len", "attn_type"):
                values[name] = int(raw.get(name, getattr(defaults, name)))
            values["d_embed"] = int(raw.get("d_embed", values["d_model"]))
            for name in ("pre_lnorm", "untie_r", "same_length"):
                values[name] = bool(raw.get(name, getattr(defaults, name)))
            values["layer_norm_epsilon"] = float(raw.get("layer_norm_epsilon", defaults.layer_norm_epsilon))
            if "tie_projs" in raw:
                values["tie_projs"] = tuple(bool(t) for t in raw["tie_projs"])
            else:
                share = bool(raw.get("proj_share_all_but_first", True))
                values["tie_projs"] = (False,) + (share,) * len(values["cutoffs"])
        except (TypeError, ValueError) as err:
            raise UserError(f"{source}: bad Transformer-XL setting ({err})") from None
        config = cls(**values)
        config.check(source)
        return config

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["vocab_size"] = out.pop("n_token")
        out["cutoffs"] = list(self.cutoffs)
        out["tie_projs"] = list(self.tie_projs)
        out["model_type"] = "transfo-xl"
        return out

    def check(self, source: str = CONFIG_FILE) -> None:
        """Refuse settings this implementation does not run (one-line UserErrors)."""
        if self.attn_type != 0:
            raise UserError(f"{source}: attn_type={self.attn_type} is not supported; only 0 (relative, as wt103)")
        if self.pre_lnorm:
            raise UserError(f"{source}: pre_lnorm=True is not supported; only post-norm blocks (as wt103)")
        if not self.same_length:
            raise UserError(f"{source}: same_length=False is not supported; the memory window needs same_length=True (as wt103)")
        sizes = (self.n_token, self.d_model, self.d_embed, self.n_head, self.d_head, self.d_inner, self.n_layer, self.div_val)
        if min(sizes) < 1:
            raise UserError(f"{source}: sizes must be positive")
        bounds = (0, *self.cutoffs, self.n_token)
        if any(lo >= hi for lo, hi in zip(bounds, bounds[1:])):
            raise UserError(f"{source}: cutoffs {list(self.cutoffs)} must increase strictly within 1..vocab_size-1")
        if self.div_val > 1 and self.d_embed // self.div_val ** len(self.cutoffs) < 1:
            raise UserError(f"{source}: d_embed={self.d_embed} is too small for div_val={self.div_val}")


# ----------------------------------------------------------------------------------------------
# The network (parameter names follow the checkpoint, minus its `transformer.` prefix)
# ----------------------------------------------------------------------------------------------


class AdaptiveEmbedding(nn.Module):
    """Token id -> d_model vector: per-cluster table, per-cluster projection, times sqrt(d_model)."""

    def __init__(self, config: TrXLConfig) -> None:
        super().__init__()
        self.d_model = config.d_model
        self.scale = config.d_model**0.5
        self.bounds = (0, *config.cutoffs, config.n_token) if config.div_val > 1 else (0, config.n_token)
        self.emb_layers = nn.ModuleList()
        self.emb_projs = nn.ParameterList()
        for j, (lo, hi) in enumerate(zip(self.bounds, self.bounds[1:])):
            width = config.d_embed // config.div_val**j
            self.emb_layers.append(nn.Embedding(hi - lo, width))
            # div_val 1 with d_embed == d_model is the one layout without a projection
            if config.div_val > 1 or width != config.d_model:
                self.emb_projs.append(nn.Parameter(torch.empty(config.d_model, width)))

    def _cluster(self, j: int, rows: torch.Tensor) -> torch.Tensor:
        out = rows
        if len(self.emb_projs):
            out = F.linear(out, self.emb_projs[j])
        return out * self.scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        weight = self.emb_layers[0].weight
        flat = ids.reshape(-1)
        out = torch.zeros(flat.shape[0], self.d_model, dtype=weight.dtype, device=weight.device)
        for j, (lo, hi) in enumerate(zip(self.bounds, self.bounds[1:])):
            where = ((flat >= lo) & (flat < hi)).nonzero().squeeze(1)
            if where.numel():
                out[where] = self._cluster(j, self.emb_layers[j](flat[where] - lo))
        return out.reshape(*ids.shape, self.d_model)

    def table(self) -> torch.Tensor:
        """The embedding of every id, [n_token, d_model]."""
        return torch.cat([self._cluster(j, layer.weight) for j, layer in enumerate(self.emb_layers)])

    def cached_table(self) -> torch.Tensor:
        """`table()` computed once per device and dtype of the weights (the LM is frozen)."""
        weight = self.emb_layers[0].weight
        cached = getattr(self, "_table", None)
        if cached is None or cached.device != weight.device or cached.dtype != weight.dtype:
            with torch.no_grad():
                cached = self.table().detach()
            object.__setattr__(self, "_table", cached)  # a plain attribute: never in a state dict
        return cached


class SinusoidTable(nn.Module):
    """[sin(d * f) || cos(d * f)] for relative distances d; `inv_freq` is stored in the checkpoint."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.register_buffer("inv_freq", default_inv_freq(d_model))

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        angles = distance[:, None] * self.inv_freq[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def default_inv_freq(d_model: int) -> torch.Tensor:
    return 1.0 / (10000.0 ** (torch.arange(0.0, d_model, 2.0) / d_model))


class RelativeAttention(nn.Module):
    def __init__(self, config: TrXLConfig) -> None:
        super().__init__()
        inner = config.n_head * config.d_head
        self.qkv_net = nn.Linear(config.d_model, 3 * inner, bias=False)
        self.r_net = nn.Linear(config.d_model, inner, bias=False)
        self.o_net = nn.Linear(inner, config.d_model, bias=False)
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        if config.untie_r:
            self.r_w_bias = nn.Parameter(torch.zeros(config.n_head, config.d_head))
            self.r_r_bias = nn.Parameter(torch.zeros(config.n_head, config.d_head))


class FeedForward(nn.Module):
    def __init__(self, config: TrXLConfig) -> None:
        super().__init__()
        # The checkpoint's names: "0" is the first linear map, "3" the second (ReLU and dropouts between).
        self.CoreNet = nn.ModuleDict(
            {"0": nn.Linear(config.d_model, config.d_inner), "3": nn.Linear(config.d_inner, config.d_model)}
        )
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.CoreNet["0"](x))
        return self.layer_norm(x + self.CoreNet["3"](hidden))


class Block(nn.Module):
    def __init__(self, config: TrXLConfig) -> None:
        super().__init__()
        self.dec_attn = RelativeAttention(config)
        self.pos_ff = FeedForward(config)


class TransfoXL(nn.Module):
    """Transformer-XL's weights plus a plain (uncached) forward used as a reference.

    `TransfoXLMemory` runs the cached per-step computation with these weights.
    """

    def __init__(self, config: TrXLConfig) -> None:
        super().__init__()
        config.check("config")
        self.config = config
        self.word_emb = AdaptiveEmbedding(config)
        self.pos_emb = SinusoidTable(config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        if not config.untie_r:  # one pair of biases shared by all layers
            self.r_w_bias = nn.Parameter(torch.zeros(config.n_head, config.d_head))
            self.r_r_bias = nn.Parameter(torch.zeros(config.n_head, config.d_head))
        self.lm_name: str | None = None
        self.vocab_file: str | None = None  # where `tokenizer()` finds the vocabulary, if anywhere

    def biases(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(content bias r_w_bias, position bias r_r_bias) of layer i, [n_head, d_head] each."""
        owner = self.layers[i].dec_attn if self.config.untie_r else self
        return owner.r_w_bias, owner.r_r_bias

    def position_keys(self, i: int, n_dist: int) -> torch.Tensor:
        """r_net of the sinusoids of distances 0..n_dist-1 (clamped at clamp_len), [n_head, d_head, n_dist]."""
        c = self.config
        distance = torch.arange(n_dist, device=self.pos_emb.inv_freq.device, dtype=self.pos_emb.inv_freq.dtype)
        if c.clamp_len > 0:
            distance = distance.clamp(max=c.clamp_len)
        keys = self.layers[i].dec_attn.r_net(self.pos_emb(distance))  # [n_dist, n_head * d_head]
        return keys.reshape(n_dist, c.n_head, c.d_head).permute(1, 2, 0)

    @torch.no_grad()
    def full_forward(self, embeds: torch.Tensor, mem_len: int) -> torch.Tensor:
        """Hidden states of every position of sequences `embeds` [B, T, d_model], each position
        attending to itself and the mem_len - 1 positions before it. No cache: the reference."""
        c = self.config
        B, T, _ = embeds.shape
        pos = torch.arange(T, device=embeds.device)
        distance = pos[:, None] - pos[None, :]  # query minus key
        visible = (distance >= 0) & (distance < mem_len)
        scale = 1.0 / math.sqrt(c.d_head)
        x = embeds
        for i, block in enumerate(self.layers):
            attn = block.dec_attn
            r_w, r_r = self.biases(i)
            q, k, v = attn.qkv_net(x).reshape(B, T, 3, c.n_head, c.d_head).unbind(2)
            rel = self.position_keys(i, T).permute(2, 0, 1)  # [T (distance), H, D]
            content = torch.einsum("bihd,bjhd->bhij", q + r_w, k)
            # position score of every (query, distance) pair, then picked per (query, key)
            by_distance = torch.einsum("bihd,ehd->bhie", q + r_r, rel)
            index = distance.clamp(min=0)[None, None].expand(B, c.n_head, T, T)
            position = by_distance.gather(3, index)
            score = ((content + position) * scale).masked_fill(~visible, torch.finfo(x.dtype).min)
            mixed = torch.einsum("bhij,bjhd->bihd", score.softmax(dim=-1), v).reshape(B, T, -1)
            x = attn.layer_norm(x + attn.o_net(mixed))
            x = block.pos_ff(x)
        return x


# ----------------------------------------------------------------------------------------------
# The memory
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrXLState:
    """What a `TransfoXLMemory` remembers for `n` envs: per layer, the keys and values of each
    row's last mem_len - 1 tokens, in ring buffers that `step` writes in place.

    Tokens are numbered by their absolute index t = 0, 1, ... (all rows advance together); token t
    lives in slot t % capacity.
    """

    keys: list[torch.Tensor]  # per layer [B, H, d_head, slot] (laid out for q @ k)
    values: list[torch.Tensor]  # per layer [B, H, slot, d_head] (laid out for weights @ v)
    start: torch.Tensor  # [B] first token of each row's episode
    t: int | torch.Tensor = 0  # tokens appended so far (static mode: a device tensor, updated in place)
    tokens_encoded: int = 0  # tokens per row whose keys/values were computed (each once; a replayed graph does not count)

    def to(self, device: torch.device | str) -> TrXLState:
        """This memory on another device (in place; returns itself)."""
        self.keys, self.values = [k.to(device) for k in self.keys], [v.to(device) for v in self.values]
        self.start = self.start.to(device)
        if isinstance(self.t, torch.Tensor):
            self.t = self.t.to(device)
        return self


class TransfoXLMemory(Memory):
    """Transformer-XL with a per-layer key/value ring buffer of each env's last mem_len - 1 tokens.

    See the module docstring for the window and the two `reset` modes. The model is not a
    registered submodule (it is frozen, stays in eval mode and is reloaded by name rather than
    stored in checkpoints), but `.to()` moves it. What it remembers is a `TrXLState` that the
    caller holds; `step` writes the new tokens' keys and values into it, `peek` writes nothing.

    `static=True` makes a step capturable in a CUDA graph: the token count is a device tensor and
    episode starts are applied to every row by masks, so no step reads a device value on the host
    or allocates state. The buffers already have fixed shapes; the outputs are the same.
    """

    def __init__(self, model: TransfoXL, mem_len: int, reset: str = "mask", static: bool = False) -> None:
        super().__init__()
        if isinstance(mem_len, bool) or not isinstance(mem_len, int) or mem_len < 1:
            raise UserError(f"mem_len must be a positive integer, got {mem_len!r}")
        if reset not in ("mask", "zero"):
            raise UserError(f"unknown mem_reset {reset!r}; use 'mask' (forget earlier episodes) or 'zero' (the original HELM)")
        object.__setattr__(self, "_model", model)  # not registered: see the class docstring
        self.mem_len = mem_len
        self.reset_mode = reset
        self.static = static
        self.in_dim = self.out_dim = model.config.d_model
        self._capacity = mem_len - 1  # keys/values kept per row and layer
        c = model.config
        # Distances whose position term can differ: 0..mem_len-1, fewer when clamp_len clamps them.
        self._n_dist = min(c.clamp_len, mem_len - 1) + 1 if c.clamp_len > 0 else mem_len
        self._position_keys: list[torch.Tensor] | None = None

    @property
    def model(self) -> TransfoXL:
        return self._model

    def extra_repr(self) -> str:
        return f"lm={self._model.lm_name or 'TransfoXL'}, layers={len(self._model.layers)}, mem_len={self.mem_len}, reset={self.reset_mode!r}"

    def _apply(self, fn, recurse=True):
        self._model._apply(fn)
        self._position_keys = None
        return super()._apply(fn, recurse)

    # -- state -------------------------------------------------------------------------------------

    def initial_state(self, n: int) -> TrXLState:
        """An empty memory for `n` rows (zero mode: mem_len zero positions, as HF's init_mems)."""
        c = self._model.config
        weight = self._model.word_emb.emb_layers[0].weight
        return TrXLState(
            keys=[weight.new_zeros(n, c.n_head, c.d_head, self._capacity) for _ in self._model.layers],
            values=[weight.new_zeros(n, c.n_head, self._capacity, c.d_head) for _ in self._model.layers],
            start=torch.zeros(n, dtype=torch.long, device=weight.device),
            t=torch.zeros((), dtype=torch.long, device=weight.device) if self.static else 0,
        )

    def step(self, embeds: torch.Tensor, state: TrXLState, starts: torch.Tensor) -> tuple[torch.Tensor, TrXLState]:
        """Append k tokens per env (rows with `starts` forget first); hidden state of the newest, [B, d_model].

        embeds: [B, k, d_model] (or [B, d_model] for k = 1); starts: bool [B] (tensor or array).
        The state's buffers are updated in place; the returned state is the same object.
        """
        embeds, restart = self._check(embeds, state, starts)
        if self.static:  # the same, without asking the device whether any row restarts
            state.start.copy_(torch.where(restart, state.t, state.start))
            if self.reset_mode == "zero":
                for buffer in (*state.keys, *state.values):
                    buffer.masked_fill_(restart[:, None, None, None], 0)
        elif restart.any():  # most steps: nothing to do (and nothing to copy)
            state.start = torch.where(restart, state.t, state.start)
            if self.reset_mode == "zero":
                index = restart.nonzero().squeeze(1)
                for buffer in (*state.keys, *state.values):
                    buffer.index_fill_(0, index, 0)
        return self._advance(embeds, state, state.start, None, commit=True), state

    def peek(self, embeds: torch.Tensor, state: TrXLState, starts: torch.Tensor) -> torch.Tensor:
        """What `step` would return; nothing remembered changes (to bootstrap final observations)."""
        embeds, restart = self._check(embeds, state, starts)
        start = torch.where(restart, state.t, state.start)
        forgotten = restart if self.reset_mode == "zero" else None
        return self._advance(embeds, state, start, forgotten, commit=False)

    def _check(self, embeds: torch.Tensor, state: TrXLState, starts) -> tuple[torch.Tensor, torch.Tensor]:
        n = state.start.shape[0]
        if embeds.dim() == 2:
            embeds = embeds[:, None]
        if embeds.dim() != 3 or embeds.shape[0] != n or embeds.shape[2] != self.in_dim:
            raise ValueError(f"embeds must be [{n}, k, {self.in_dim}], got {tuple(embeds.shape)}")
        if embeds.shape[1] == 0:
            raise ValueError("embeds must hold at least one token per env")
        cache = self._model.word_emb.emb_layers[0].weight
        embeds = embeds.to(device=cache.device, dtype=cache.dtype)
        restart = torch.as_tensor(starts, device=cache.device).to(torch.bool).reshape(n)
        return embeds, restart

    def _positions(self) -> list[torch.Tensor]:
        if self._position_keys is None:
            with torch.no_grad():
                self._position_keys = [self._model.position_keys(i, self._n_dist) for i in range(len(self._model.layers))]
        return self._position_keys

    @torch.no_grad()
    def _advance(self, x: torch.Tensor, state: TrXLState, start: torch.Tensor, forgotten: torch.Tensor | None,
                 commit: bool) -> torch.Tensor:
        """Run k new tokens through every layer against the state's buffers.

        start: first token of each row's episode (mask mode hides keys before it); forgotten:
        rows whose buffers count as zero (zero mode's peek at an episode start), else None.
        The buffers are written only when `commit`, after each layer has read them.
        """
        model, c = self._model, self._model.config
        B, k, _ = x.shape
        H, D, C, t = c.n_head, c.d_head, self._capacity, state.t
        device = x.device
        last = self.mem_len - 1  # largest visible distance

        # Which token each slot holds: the one in t-C..t-1 congruent to the slot modulo C.
        slot = torch.arange(C, device=device)
        slot_token = t - C + (slot - t) % C if C else slot
        query = t + torch.arange(k, device=device)
        old_distance = query[:, None] - slot_token[None, :]  # [k, C], >= 1
        old_visible = (old_distance <= last)[None]  # [1, k, C]
        if self.reset_mode == "mask":
            old_visible = old_visible & (slot_token[None, None, :] >= start[:, None, None])  # [B, k, C]
        new_distance = query[:, None] - query[None, :]  # [k, k]
        new_visible = (new_distance >= 0) & (new_distance <= last)
        hidden = ~torch.cat([old_visible.expand(B, k, C), new_visible[None].expand(B, k, k)], dim=-1)[:, None]
        index = torch.cat([old_distance, new_distance.clamp(min=0)], dim=-1).clamp(max=self._n_dist - 1)
        index = index[None, None].expand(B, H, k, C + k)
        keep = None if forgotten is None else (~forgotten).to(x.dtype)[:, None, None, None]

        scale = 1.0 / math.sqrt(D)
        written = t + torch.arange(max(k - C, 0), k, device=device)  # the new tokens that stay remembered
        positions = self._positions()
        for i, block in enumerate(model.layers):
            attn = block.dec_attn
            r_w, r_r = model.biases(i)
            q, key, value = attn.qkv_net(x).reshape(B, k, 3, H, D).permute(2, 0, 3, 1, 4)  # each [B, H, k, D]
            old_keys, old_values = state.keys[i], state.values[i]
            content_q = q + r_w[:, None, :]
            old_score = content_q @ old_keys  # [B, H, k, C]
            if keep is not None:
                old_score = old_score * keep
            score = torch.cat([old_score, content_q @ key.transpose(-1, -2)], dim=-1)
            # position term: the score of each distance (one matmul per head), then picked per key
            position_q = (q + r_r[:, None, :]).permute(1, 0, 2, 3).reshape(H, B * k, D)
            by_distance = torch.bmm(position_q, positions[i]).reshape(H, B, k, -1).transpose(0, 1)  # [B, H, k, n_dist]
            score = score + by_distance.gather(-1, index)
            weights = (score * scale).masked_fill(hidden, torch.finfo(score.dtype).min).softmax(dim=-1)
            mixed = weights[..., C:] @ value
            if C:
                from_old = weights[..., :C] @ old_values
                mixed = mixed + (from_old if keep is None else from_old * keep)
            mixed = mixed.transpose(1, 2).reshape(B, k, H * D)
            out = attn.layer_norm(x + attn.o_net(mixed))
            out = block.pos_ff(out)
            if commit and C:
                slots = written % C
                kept = slice(k - written.numel(), k)
                old_keys.index_copy_(3, slots, key[:, :, kept].transpose(-1, -2).to(old_keys.dtype))
                old_values.index_copy_(2, slots, value[:, :, kept].to(old_values.dtype))
            x = out
        if commit:
            state.t += k  # in place when a tensor (static mode)
            state.tokens_encoded += k
        return x[:, -1].contiguous()


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def checkpoint_key_to_ours(key: str, config: TrXLConfig) -> str | None:
    """Our parameter name for a checkpoint key (TransfoXLLMHeadModel or TransfoXLModel layout), or
    None for keys we do not use (the LM head `crit.*`; per-layer copies of shared r biases)."""
    if key.startswith("crit."):
        return None
    if key.startswith("transformer."):
        key = key[len("transformer.") :]
    if not config.untie_r and key.startswith("layers.") and key.endswith((".dec_attn.r_w_bias", ".dec_attn.r_r_bias")):
        return None
    return key


def checkpoint_name(ours: str) -> str:
    """The hub checkpoint's name for one of our parameters."""
    return "transformer." + ours


def check_checkpoint_shapes(model: TransfoXL, shapes: dict[str, Iterable[int]], what: str) -> dict[str, str]:
    """Map checkpoint names -> ours and check every parameter of `model` is present with its shape.

    Returns {our name: checkpoint name}. Layers beyond the model's (lm_layers) are ignored, as
    are other keys we do not use. Raises a one-line UserError naming the first bad key.
    """
    found: dict[str, str] = {}
    for key in shapes:
        ours = checkpoint_key_to_ours(key, model.config)
        if ours is not None:
            found.setdefault(ours, key)
    for name, tensor in model.state_dict().items():
        if name == "pos_emb.inv_freq" and name not in found:
            continue  # a fixed function of d_model; filled in when absent
        if name not in found:
            raise UserError(f"{what}: missing key {checkpoint_name(name)!r}")
        shape = tuple(shapes[found[name]])
        if shape != tuple(tensor.shape):
            raise UserError(f"{what}: key {found[name]!r} has shape {list(shape)}, the config needs {list(tensor.shape)}")
    return found


def build_from_state_dict(config: TrXLConfig, state: dict[str, torch.Tensor], what: str = "checkpoint") -> TransfoXL:
    """A frozen TransfoXL in eval mode holding `state`'s tensors (float32)."""
    with torch.device("meta"):
        model = TransfoXL(config)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{what}: not a state dict of tensors")
    found = check_checkpoint_shapes(model, {k: v.shape for k, v in state.items()}, what)
    weights = {}
    for name in model.state_dict():
        if name in found:
            tensor = state[found[name]]
            weights[name] = tensor.float() if tensor.is_floating_point() else tensor
        else:
            weights[name] = default_inv_freq(config.d_model)
    model.load_state_dict(weights, assign=True)
    model.requires_grad_(False)
    model.eval()
    return model


def load_transfo_xl(lm: str, lm_layers: int | None = None) -> TransfoXL:
    """Load Transformer-XL wt103 (`transfo-xl-wt103`, its hub id, or a local directory holding
    config.json, pytorch_model.bin or model.safetensors, and optionally vocab.pkl / vocab.bin).

    `lm_layers=n` keeps the first n layers. The model is frozen and in eval mode.
    """
    config_path, weights_path, vocab_path = _locate(lm)
    try:
        with open(config_path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {config_path}: {first_line(err)}") from None
    config = TrXLConfig.from_dict(raw, config_path)
    if lm_layers is not None:
        if isinstance(lm_layers, bool) or not isinstance(lm_layers, int) or not 1 <= lm_layers <= config.n_layer:
            raise UserError(f"lm_layers={lm_layers!r} but LM {lm!r} has {config.n_layer} layers; use 1..{config.n_layer}")
        config = dataclasses.replace(config, n_layer=lm_layers)
    model = build_from_state_dict(config, _read_weights(weights_path), weights_path)
    model.lm_name = lm
    model.vocab_file = vocab_path
    return model


def load_transfo_xl_vocab(lm: str) -> TransfoXLVocab:
    """The word vocabulary of `lm` (hub id or directory), e.g. for SHELM's semantic database."""
    vocab_path = _locate(lm)[2]
    if vocab_path is None:
        raise UserError(f"LM {lm!r} has no word vocabulary ({' or '.join(VOCAB_FILES)}), which SHELM needs")
    return load_vocab(vocab_path)


def _locate(lm: str) -> tuple[str, str, str | None]:
    """(config, weights, vocabulary or None) files of `lm`."""
    if lm in (SHORT_NAME, HUB_ID):
        return _locate_on_hub(lm)
    path = os.path.expanduser(lm)
    if not os.path.exists(path):
        raise UserError(f"LM path {lm!r} does not exist")
    if not os.path.isdir(path):
        raise UserError(f"LM path {lm!r} is not a directory (expected config.json and pytorch_model.bin in it)")
    config = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config):
        raise UserError(f"LM directory {lm!r} has no {CONFIG_FILE}")
    weights = [os.path.join(path, name) for name in WEIGHT_FILES if os.path.isfile(os.path.join(path, name))]
    if not weights:
        raise UserError(f"LM directory {lm!r} has no weights ({' or '.join(WEIGHT_FILES)})")
    vocab = [os.path.join(path, name) for name in VOCAB_FILES if os.path.isfile(os.path.join(path, name))]
    return config, weights[0], (vocab[0] if vocab else None)


def _locate_on_hub(lm: str) -> tuple[str, str, str | None]:
    from huggingface_hub import hf_hub_download

    def fetch(offline: bool) -> tuple[str, str, str | None]:
        config = hf_hub_download(HUB_ID, CONFIG_FILE, local_files_only=offline)
        weights = None
        for name in reversed(WEIGHT_FILES):  # the hub repo has pytorch_model.bin
            try:
                weights = hf_hub_download(HUB_ID, name, local_files_only=offline)
                break
            except (OSError, ValueError) as err:
                missing = err
        if weights is None:
            raise missing
        vocab = None
        for name in VOCAB_FILES:
            try:
                vocab = hf_hub_download(HUB_ID, name, local_files_only=offline)
                break
            except (OSError, ValueError):
                continue
        return config, weights, vocab

    # The local cache first, which never touches the network.
    try:
        return fetch(offline=True)
    except (OSError, ValueError):
        pass  # not (all) cached
    # Only try a download when the hub answers at all: huggingface_hub otherwise retries for ~30 s.
    if not hub_offline() and hub_reachable():
        try:
            return fetch(offline=False)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot download LM {lm!r}: {first_line(err)}") from None
    from utils.hub import download_hint

    reason = "the hub is offline (HF_HUB_OFFLINE)" if hub_offline() else "the hub is unreachable"
    raise UserError(
        f"LM {lm!r} is not in the local cache and {reason}: {download_hint(lm)}; "
        f"or use the offline default lm={OFFLINE_DEFAULT}"
    )


def _read_weights(path: str) -> dict[str, torch.Tensor]:
    try:
        if path.endswith(".safetensors"):
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise UserError(f"{path} needs the safetensors package: pip install safetensors") from None
            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as err:  # corrupt or foreign files raise many kinds of errors
        raise UserError(f"cannot read weights {path}: {first_line(err)}") from None


# ----------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------
#
# Real vocab.pkl files come in two formats, and neither is plain data:
# * the hub's (transfo-xl/transfo-xl-wt103): a legacy (non-zip) `torch.save` stream of the
#   original Transformer-XL vocabulary's attributes (builtins, Counter, OrderedDict);
# * transformers' own saves (`save_pretrained`, up to 4.37): `pickle.dump(tokenizer.__dict__)`,
#   which also holds compiled regexes, sacremoses tokenizers, `tokenizers.AddedToken`s and a Trie.
# Both are read by one restricted unpickler: plain data is rebuilt, the few known tokenizer
# objects become inert placeholders (nothing is imported or called), and any other global is
# refused. Only idx2sym / sym2idx / special are used.

_SAFE_BUILTINS = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float", "complex", "bool", "slice"}
)
_SAFE_COLLECTIONS = frozenset({"OrderedDict", "Counter", "defaultdict", "deque"})
# Globals that real vocabulary files reference but whose objects we never need: each is replaced
# by an inert placeholder. transformers 4.37.2's vocab.pkl references the first six; releases
# before 4.34 had their own AddedToken class; protocol 0/1 pickles rebuild objects through
# copyreg._reconstructor(cls, object, state).
_INERT_GLOBALS = frozenset(
    {
        ("re", "_compile"),
        ("sacremoses.normalize", "MosesPunctNormalizer"),
        ("sacremoses.tokenize", "MosesTokenizer"),
        ("sacremoses.tokenize", "MosesDetokenizer"),
        ("tokenizers", "AddedToken"),
        ("transformers.tokenization_utils", "Trie"),
        ("transformers.tokenization_utils_base", "AddedToken"),
        ("copyreg", "_reconstructor"),
        ("builtins", "object"),
    }
)
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a legacy torch.save file
_LEGACY_TORCH_PROTOCOL = 1001


class _Inert:
    """Stands in for an allow-listed object of a vocabulary file: keeps what the file says about it
    (constructor arguments, state, items) as data and never runs any of the real class's code."""

    _origin = "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self.__dict__.update(args=args, kwargs=kwargs, state=None, items=[])
        return self

    def __init__(self, *args, **kwargs) -> None:  # called by REDUCE; __new__ kept everything
        pass

    def __setstate__(self, state) -> None:  # BUILD
        self.__dict__["state"] = state

    def append(self, item) -> None:  # APPEND(S)
        self.items.append(item)

    def extend(self, items) -> None:
        self.items.extend(items)

    def add(self, item) -> None:  # ADDITEMS
        self.items.append(item)

    def __setitem__(self, key, value) -> None:  # SETITEM(S)
        self.items.append((key, value))

    def __repr__(self) -> str:
        return f"<inert {self._origin}>"


_INERT_TYPES: dict[tuple[str, str], type] = {
    key: type(f"Inert_{key[1]}", (_Inert,), {"_origin": ".".join(key), "__module__": __name__}) for key in _INERT_GLOBALS
}


def _printable(text: str) -> str:
    """`text` itself, or its repr when it holds newlines or other control characters (messages stay one line)."""
    return text if text.isprintable() else repr(text)


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """The Python 3 name of a global: protocol 0-2 pickles written by Python 3 still use Python 2's
    names (__builtin__.set, copy_reg._reconstructor, commands.Popen for subprocess.Popen)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _VocabUnpickler(pickle.Unpickler):
    """Unpickles plain data (builtin and `collections` containers and scalars) and inert
    placeholders for `_INERT_GLOBALS`; refuses every other global and any persistent id (tensors)."""

    def __init__(self, file, path: str) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str):
        key = _py3_name(module, name)
        if key in _INERT_TYPES:
            return _INERT_TYPES[key]
        if key[0] == "builtins" and key[1] in _SAFE_BUILTINS:
            return getattr(builtins, key[1])
        if key[0] == "collections" and key[1] in _SAFE_COLLECTIONS:
            return getattr(collections, key[1])
        raise UserError(
            f"refusing to unpickle {_printable('.'.join(key))} from {self._path}: "
            "a vocabulary may hold only plain data and the tokenizer objects transformers saves"
        )

    def persistent_load(self, pid):
        raise UserError(f"vocabulary {self._path} holds tensor data (a persistent id); a word vocabulary has none")


def _unpickle(f, path: str):
    return _VocabUnpickler(f, path).load()


def _read_vocab_file(path: str):
    """The object a vocabulary file holds: a plain pickle, a legacy torch.save stream, or a zip torch.save archive."""
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            return _read_torch_zip(path)
        f.seek(0)
        obj = _unpickle(f, path)
        if type(obj) is not int or obj != _LEGACY_TORCH_MAGIC:
            return obj
        # legacy torch.save: magic, protocol version, sys info, the object, storage keys, storages
        protocol = _unpickle(f, path)
        if protocol != _LEGACY_TORCH_PROTOCOL:
            raise UserError(f"vocabulary {path} is a torch.save file of unknown protocol {_printable(repr(protocol))}")
        _unpickle(f, path)  # sys info: endianness and type sizes, which plain data does not depend on
        obj = _unpickle(f, path)
        storage_keys = _unpickle(f, path)
        if storage_keys:
            raise UserError(f"vocabulary {path} holds tensor storages; a word vocabulary has none")
        return obj


def _read_torch_zip(path: str):
    """The object of a zip torch.save archive, read from its data.pkl by the same restricted unpickler."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(names) != 1:
            raise UserError(f"vocabulary {path} is a zip file but not a torch.save archive (no single */data.pkl)")
        with archive.open(names[0]) as f:
            return _unpickle(f, path)


class TransfoXLVocab:
    """Transformer-XL's word-level vocabulary: token id <-> word (enough for HELM's traces and SHELM)."""

    SPECIALS = ("<eos>", "<unk>")

    def __init__(self, idx2sym: list[str], sym2idx: dict[str, int] | None = None, specials: Iterable[str] = ()) -> None:
        self.idx2sym = list(idx2sym)
        if sym2idx is None:
            sym2idx = {sym: i for i, sym in reversed(list(enumerate(self.idx2sym)))}  # first id wins
        self.sym2idx = dict(sym2idx)
        wanted = [*self.SPECIALS, *specials]
        self.all_special_tokens = [s for i, s in enumerate(wanted) if s in self.sym2idx and s not in wanted[:i]]
        self.added_tokens_decoder: dict = {}

    def __len__(self) -> int:
        return len(self.idx2sym)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.sym2idx)

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int) or (hasattr(ids, "ndim") and ids.ndim == 0):
            return self.idx2sym[int(ids)]
        return [self.idx2sym[int(i)] for i in ids]

    def decode(self, ids) -> str:
        if isinstance(ids, int) or (hasattr(ids, "ndim") and ids.ndim == 0):
            ids = [ids]
        return " ".join(self.idx2sym[int(i)] for i in ids)


def load_vocab(path: str) -> TransfoXLVocab:
    """Read a vocab.pkl / vocab.bin: a plain pickle (transformers' save), a legacy torch.save
    stream (the hub's) or a zip torch.save archive, all through `_VocabUnpickler`, never torch.load."""
    try:
        data = _read_vocab_file(path)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"cannot read vocabulary {path}: {first_line(err)}") from None
    if not isinstance(data, dict):
        raise UserError(f"vocabulary {path} is not a dict")
    idx2sym = data.get("idx2sym")
    if idx2sym is None and isinstance(data.get("sym2idx"), dict):
        by_id = sorted((i, s) for s, i in data["sym2idx"].items())
        idx2sym = [s for _, s in by_id]
    if not isinstance(idx2sym, (list, tuple)) or not all(isinstance(s, str) for s in idx2sym):
        raise UserError(f"vocabulary {path} has no list of words 'idx2sym'")
    sym2idx = data.get("sym2idx")
    n = len(idx2sym)
    if not isinstance(sym2idx, dict) or not all(
        isinstance(s, str) and isinstance(i, int) and 0 <= i < n for s, i in sym2idx.items()
    ):
        sym2idx = None  # rebuilt from idx2sym
    specials = data.get("special") if isinstance(data.get("special"), (list, tuple)) else ()
    return TransfoXLVocab(idx2sym, sym2idx, [s for s in specials if isinstance(s, str)])
