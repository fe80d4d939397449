"""Our Transformer-XL (models/transfo_xl.py) against transformers 4.37 and against itself.

transformers 5 has no Transformer-XL, so the reference outputs were recorded once with 4.37.2 in
a side venv by tests/make_trxl_fixture.py (tests/fixtures/trxl_tiny.pt, a tiny random model with
wt103's structure; tests/fixtures/trxl_wt103_layout.json, the real checkpoint's key layout).
Nothing here needs transformers.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import time
from pathlib import Path

import pytest
import torch

from models.transfo_xl import (
    HUB_ID,
    SHORT_NAME,
    TransfoXL,
    TransfoXLMemory,
    TrXLConfig,
    TrXLState,
    build_from_state_dict,
    check_checkpoint_shapes,
    checkpoint_key_to_ours,
    load_transfo_xl,
    load_vocab,
)
from tests.memory_helpers import Fed
from tests.tiny_lms import make_vocab_pickle, trxl_words
from utils.errors import UserError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ATOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def recorded():
    return torch.load(FIXTURES / "trxl_tiny.pt", weights_only=True)


@pytest.fixture(scope="module")
def config(recorded) -> TrXLConfig:
    return TrXLConfig.from_dict(recorded["config"])


def fresh_model(recorded, **changes) -> TransfoXL:
    """A new TransfoXL with the fixture's weights (a new object each time: `.to()` moves it in place)."""
    import dataclasses

    cfg = dataclasses.replace(TrXLConfig.from_dict(recorded["config"]), **changes)
    return build_from_state_dict(cfg, recorded["state_dict"])


@pytest.fixture(scope="module")
def model(recorded) -> TransfoXL:
    return fresh_model(recorded)


@pytest.fixture(scope="module")
def model_dir(recorded, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("trxl") / "tiny-trxl"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(recorded["config"]))
    torch.save(recorded["state_dict"], path / "pytorch_model.bin")
    make_vocab_pickle(path / "vocab.pkl", trxl_words(recorded["config"]["vocab_size"]))
    return path


# ----------------------------------------------------------------------------------------------
# (a) parity with transformers 4.37
# ----------------------------------------------------------------------------------------------


def test_zero_mode_matches_transformers_437_step_by_step(recorded, model):
    """HELM's original use: zero initial mems, 1- and 2-token steps, rows' mems zeroed at episode starts."""
    memory = Fed(TransfoXLMemory(model, recorded["mem_len"], reset="zero"), 3)
    steps = recorded["zero_steps"]
    assert sum(s["embeds"].shape[1] for s in steps) > 5 * recorded["mem_len"]  # the memory overflows often
    assert sum(int(s["reset"][1:].sum()) for s in steps[1:]) >= 3  # and rows restart mid-sequence
    for n, s in enumerate(steps):
        out = memory.step(s["embeds"], s["reset"])
        assert torch.allclose(out, s["output"][:, -1], atol=ATOL, rtol=0), f"step {n}"


def test_mask_mode_matches_transformers_437_from_empty_mems(recorded, model):
    """Our default mode on an episode that starts at token 0 = 4.37 with empty (length-0) mems."""
    memory = Fed(TransfoXLMemory(model, recorded["mem_len"], reset="mask"), 3)
    for n, s in enumerate(recorded["empty_steps"]):
        out = memory.step(s["embeds"], s["reset"])
        assert torch.allclose(out, s["output"][:, -1], atol=ATOL, rtol=0), f"step {n}"


def test_embeddings_match_transformers_437(recorded, model):
    memory = TransfoXLMemory(model, recorded["mem_len"])
    table = model.word_emb.cached_table()  # the token embeddings (the vocabulary reads them there)
    assert table.shape == (200, 32) and memory.in_dim == memory.out_dim == 32
    assert torch.allclose(table, recorded["embedding_table"], atol=1e-6, rtol=0)
    assert model.word_emb.cached_table() is table  # computed once
    for s in recorded["zero_steps"][:5]:
        assert torch.allclose(model.word_emb(s["ids"]), s["embeds"], atol=1e-6, rtol=0)


def test_fixture_exercises_clamping_and_resets(recorded):
    """The recorded run would differ without clamp_len or without the resets, so both are tested."""
    unclamped = Fed(TransfoXLMemory(fresh_model(recorded, clamp_len=1000), recorded["mem_len"], reset="zero"), 3)
    no_resets = Fed(TransfoXLMemory(fresh_model(recorded), recorded["mem_len"], reset="zero"), 3)
    clamp_diff = reset_diff = 0.0
    for n, s in enumerate(recorded["zero_steps"]):
        want = s["output"][:, -1]
        clamp_diff = max(clamp_diff, (unclamped.step(s["embeds"], s["reset"]) - want).abs().max().item())
        reset = s["reset"] if n == 0 else torch.zeros(3, dtype=torch.bool)
        reset_diff = max(reset_diff, (no_resets.step(s["embeds"], reset) - want).abs().max().item())
    assert clamp_diff > 1e-3 and reset_diff > 1e-3


# ----------------------------------------------------------------------------------------------
# (b) the real wt103 checkpoint layout
# ----------------------------------------------------------------------------------------------


def test_wt103_layout_loads():
    layout = json.loads((FIXTURES / "trxl_wt103_layout.json").read_text())
    config = TrXLConfig.from_dict(layout["config"])
    assert config == TrXLConfig()  # our defaults are wt103's
    shapes = layout["state_dict"]
    assert len(shapes) == 257
    with torch.device("meta"):
        model = TransfoXL(config)
    found = check_checkpoint_shapes(model, shapes, "wt103")
    assert set(found) == set(model.state_dict())
    # every non-head key of the checkpoint is used, and the head (`crit.*`) is ignored
    assert sorted(found.values()) == sorted(k for k in shapes if not k.startswith("crit."))
    assert all(checkpoint_key_to_ours(k, config) is None for k in shapes if k.startswith("crit."))
    # the loader proper, with meta tensors of those shapes (nothing is allocated)
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    loaded = build_from_state_dict(config, state, "wt103")
    assert len(loaded.layers) == 18 and loaded.word_emb.emb_layers[3].weight.shape == (67735, 16)
    assert all(not p.requires_grad for p in loaded.parameters()) and not loaded.training
    memory = TransfoXLMemory(loaded, 511)
    assert memory.out_dim == memory.in_dim == 1024
    # a wrong shape is named
    bad = dict(shapes, **{"transformer.layers.3.dec_attn.r_net.weight": [1024, 512]})
    with pytest.raises(UserError, match=r"transformer\.layers\.3\.dec_attn\.r_net\.weight"):
        check_checkpoint_shapes(model, bad, "wt103")


def test_shared_r_biases_layout(recorded):
    """untie_r=False: one pair of biases, stored at the top (per-layer copies in a checkpoint are ignored)."""
    config = dataclasses_replace(TrXLConfig.from_dict(recorded["config"]), untie_r=False)
    state = dict(recorded["state_dict"])
    for name in ("r_w_bias", "r_r_bias"):
        state[f"transformer.{name}"] = state[f"transformer.layers.0.dec_attn.{name}"]
    model = build_from_state_dict(config, state)
    assert torch.equal(model.biases(2)[0], state["transformer.layers.0.dec_attn.r_w_bias"])
    del state["transformer.r_r_bias"]
    with pytest.raises(UserError, match=r"missing key 'transformer\.r_r_bias'"):
        build_from_state_dict(config, state)


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


# ----------------------------------------------------------------------------------------------
# (c) mask mode = a plain forward over each row's episode
# ----------------------------------------------------------------------------------------------


def random_schedule(n_steps: int, batch: int, seed: int, max_k: int = 3, reset_p: float = 0.08):
    gen = torch.Generator().manual_seed(seed)
    for n in range(n_steps):
        k = int(torch.randint(1, max_k + 1, (1,), generator=gen))
        start = torch.rand(batch, generator=gen) < reset_p
        if n == 0:
            start[:] = True
        yield torch.randn(batch, k, 32, generator=gen), start


@pytest.mark.parametrize("mem_len", [1, 2, 6, 9])
def test_mask_mode_equals_full_forward_over_each_episode(model, mem_len):
    batch = 3
    memory = Fed(TransfoXLMemory(model, mem_len, reset="mask"), batch)
    episodes: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    for embeds, start in random_schedule(40, batch, seed=mem_len):
        out = memory.step(embeds, start)
        for b in range(batch):
            if start[b]:
                episodes[b] = []
            episodes[b].append(embeds[b])
            x = torch.cat(episodes[b])[None]
            want = model.full_forward(x, mem_len)[0, -1]
            assert torch.allclose(out[b], want, atol=ATOL, rtol=0)


def test_episode_start_forgets_everything_before(model):
    """Two histories, the same episode from its start on: identical outputs (mask mode)."""
    gen = torch.Generator().manual_seed(7)
    a, b = Fed(TransfoXLMemory(model, 5), 2), Fed(TransfoXLMemory(model, 5), 2)
    for _ in range(11):
        a.step(torch.randn(2, 32, generator=gen), torch.zeros(2, dtype=torch.bool))
    for _ in range(3):
        b.step(torch.randn(2, 2, 32, generator=gen), torch.zeros(2, dtype=torch.bool))
    for n in range(9):
        x = torch.randn(2, 1 + n % 2, 32, generator=gen)
        start = torch.tensor([n == 0, n == 0])
        assert torch.allclose(a.step(x, start), b.step(x, start), atol=1e-6, rtol=0)


def test_zero_mode_reset_equals_zeroed_history(model):
    """Zero mode: after an episode start a row's memory is what it was at the very start (zero keys/values)."""
    gen = torch.Generator().manual_seed(3)
    a, b = Fed(TransfoXLMemory(model, 5, reset="zero"), 1), Fed(TransfoXLMemory(model, 5, reset="zero"), 1)
    for _ in range(7):
        a.step(torch.randn(1, 32, generator=gen), torch.tensor([False]))
    # b never saw anything: its memory is the initial zeros, which is what a's reset leaves.
    for n in range(8):
        x = torch.randn(1, 32, generator=gen)
        assert torch.allclose(a.step(x, torch.tensor([n == 0])), b.step(x, torch.tensor([False])), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------
# (d) peek has no effect; (e) .to() keeps the state
# ----------------------------------------------------------------------------------------------


def snapshot(memory: Fed):
    state = memory.state
    return [t.clone() for t in (*state.keys, *state.values, state.start)], state.t


@pytest.mark.parametrize("reset", ["mask", "zero"])
def test_peek_has_no_side_effect(model, reset):
    with_peek, without = Fed(TransfoXLMemory(model, 4, reset=reset), 3), Fed(TransfoXLMemory(model, 4, reset=reset), 3)
    gen = torch.Generator().manual_seed(11)
    for n, (embeds, start) in enumerate(random_schedule(25, 3, seed=5, reset_p=0.2)):
        if n % 3 == 1:
            before = snapshot(with_peek)
            k = 1 + n % 4  # also more tokens than the memory holds
            peek_start = torch.tensor([True, False, n % 2 == 0])
            peek_x = torch.randn(3, k, 32, generator=gen)
            peeked = with_peek.peek(peek_x, peek_start)
            after = snapshot(with_peek)
            assert after[1] == before[1] and all(torch.equal(x, y) for x, y in zip(before[0], after[0]))
            # the peek is what the step would have returned
            probe = Fed(TransfoXLMemory(model, 4, reset=reset), 3)
            state = with_peek.state
            probe.state = TrXLState([t.clone() for t in state.keys], [t.clone() for t in state.values],
                                    state.start.clone(), state.t)
            assert torch.equal(peeked, probe.step(peek_x, peek_start))
        assert torch.equal(with_peek.step(embeds, start), without.step(embeds, start))


def test_to_keeps_the_state(recorded):
    moved, still = fresh_model(recorded), fresh_model(recorded)
    a, b = Fed(TransfoXLMemory(moved, 6, reset="zero"), 3), Fed(TransfoXLMemory(still, 6, reset="zero"), 3)
    steps = recorded["zero_steps"]
    for s in steps[:12]:
        a.step(s["embeds"], s["reset"])
        b.step(s["embeds"], s["reset"])
    table = moved.word_emb.cached_table()
    # the state is the caller's: it moves (and here changes dtype) with it, not with the module
    a.memory.to("cpu")
    a.state = a.state.to("cpu")
    assert torch.equal(a.step(steps[12]["embeds"], steps[12]["reset"]), b.step(steps[12]["embeds"], steps[12]["reset"]))

    def cast_state(dtype):
        a.state.keys = [k.to(dtype) for k in a.state.keys]
        a.state.values = [v.to(dtype) for v in a.state.values]

    a.memory.to(torch.float64)
    cast_state(torch.float64)
    assert a.state.keys[0].dtype == torch.float64 and a.state.start.dtype == torch.long
    assert moved.word_emb.cached_table().dtype == torch.float64 and moved.word_emb.cached_table() is not table
    for s in steps[13:20]:
        out = a.step(s["embeds"], s["reset"])
        assert out.dtype == torch.float64
        assert torch.allclose(out.float(), b.step(s["embeds"], s["reset"]), atol=ATOL, rtol=0)
        assert torch.allclose(out.float(), s["output"][:, -1], atol=ATOL, rtol=0)
    a.memory.float()
    cast_state(torch.float32)
    for s in steps[20:24]:
        assert torch.allclose(a.step(s["embeds"], s["reset"]), b.step(s["embeds"], s["reset"]), atol=ATOL, rtol=0)


def test_model_is_not_part_of_the_agent_state(model):
    memory = TransfoXLMemory(model, 4)
    agent = torch.nn.Sequential(memory, torch.nn.Linear(2, 2))
    assert list(memory.parameters()) == [] and memory.state_dict() == {}
    assert set(agent.state_dict()) == {"1.weight", "1.bias"}
    agent.train()
    assert not model.training


def test_bad_shapes(model):
    # (there is no "step before reset" any more: step and peek take the state as an argument)
    memory = TransfoXLMemory(model, 4)
    state = memory.initial_state(2)
    with pytest.raises(ValueError):
        memory.step(torch.zeros(3, 32), state, torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError):
        memory.step(torch.zeros(2, 0, 32), state, torch.zeros(2, dtype=torch.bool))
    with pytest.raises(UserError):
        TransfoXLMemory(model, 0)
    with pytest.raises(UserError, match="mem_reset"):
        TransfoXLMemory(model, 4, reset="forget")


# ----------------------------------------------------------------------------------------------
# (f) vocabulary and the restricted unpickler
# ----------------------------------------------------------------------------------------------


class Custom:
    pass


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("protocol", [None, 0, 2])
def test_vocab_pickle_loads(model_dir, tmp_path, protocol):
    """A plain-data pickle, also in the older protocols (Python 2 module names such as __builtin__.set)."""
    path = model_dir / "vocab.pkl"
    if protocol is not None:
        path = tmp_path / "vocab.pkl"
        path.write_bytes(pickle.dumps(pickle.loads((model_dir / "vocab.pkl").read_bytes()), protocol=protocol))
    vocab = load_vocab(str(path))
    assert len(vocab) == 200
    assert vocab.get_vocab()["door"] == 3
    assert vocab.decode([2, 3]) == "the door" and vocab.decode([4]) == "key"
    assert vocab.convert_ids_to_tokens(3) == "door" and vocab.convert_ids_to_tokens([3, 4]) == ["door", "key"]
    assert vocab.all_special_tokens == ["<eos>", "<unk>"] and vocab.added_tokens_decoder == {}


@pytest.mark.parametrize("payload", [Exploit(), {"idx2sym": ["a"], "x": Custom()}, {"idx2sym": [eval]}])
def test_vocab_unpickler_refuses_code(tmp_path, payload):
    path = tmp_path / "vocab.pkl"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(UserError, match=r"refusing to unpickle .*/vocab\.pkl: a vocabulary may hold only plain data"):
        load_vocab(str(path))


def test_tokenizer_from_model_dir(model_dir, tmp_path):
    from models.frozen_lm import load_frozen_memory

    memory, vocabulary = load_frozen_memory(str(model_dir), 4)
    assert isinstance(memory, TransfoXLMemory)
    assert vocabulary.tokenizer().decode([3]) == "door"
    # no vocabulary: ids are shown instead, not an error
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "pytorch_model.bin"):
        (bare / name).write_bytes((model_dir / name).read_bytes())
    assert load_frozen_memory(str(bare), 4)[1].tokenizer() is None


def test_vocab_bin_loads(tmp_path):
    """Some saves hold the vocabulary as a torch-saved dict (vocab.bin)."""
    words = trxl_words(20)
    state = {"idx2sym": words, "sym2idx": collections.OrderedDict((w, i) for i, w in enumerate(words)),
             "counter": collections.Counter(words), "special": ["<eos>"]}
    torch.save(state, tmp_path / "vocab.bin")
    vocab = load_vocab(str(tmp_path / "vocab.bin"))
    assert len(vocab) == 20 and vocab.decode([3, 4]) == "door key"


# ----------------------------------------------------------------------------------------------
# (g) loading errors; (h) lm_layers
# ----------------------------------------------------------------------------------------------


def copy_dir(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in skip:
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_load_from_dir_matches_fixture(model_dir, recorded):
    model = load_transfo_xl(str(model_dir))
    assert all(not p.requires_grad for p in model.parameters()) and not model.training
    memory = Fed(TransfoXLMemory(model, recorded["mem_len"], reset="zero"), 3)
    for s in recorded["zero_steps"][:8]:
        assert torch.allclose(memory.step(s["embeds"], s["reset"]), s["output"][:, -1], atol=ATOL, rtol=0)


def test_load_safetensors_dir(model_dir, recorded, tmp_path):
    from safetensors.torch import save_file

    path = copy_dir(model_dir, tmp_path / "st", skip=("pytorch_model.bin",))
    save_file({k: v.clone().contiguous() for k, v in recorded["state_dict"].items()}, str(path / "model.safetensors"))
    memory = Fed(TransfoXLMemory(load_transfo_xl(str(path)), recorded["mem_len"], reset="zero"), 3)
    s = recorded["zero_steps"][0]
    assert torch.allclose(memory.step(s["embeds"], s["reset"]), s["output"][:, -1], atol=ATOL, rtol=0)


def test_load_frozen_memory_picks_transfo_xl(model_dir):
    from models.frozen_lm import is_transfo_xl, load_frozen_memory

    assert is_transfo_xl(str(model_dir)) and is_transfo_xl(SHORT_NAME) and is_transfo_xl(HUB_ID)
    memory, _ = load_frozen_memory(str(model_dir), 5, mem_reset="zero", lm_layers=2)
    assert isinstance(memory, TransfoXLMemory) and memory.reset_mode == "zero" and len(memory.model.layers) == 2


def test_loading_errors(model_dir, recorded, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_transfo_xl(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="no weights"):
        load_transfo_xl(str(copy_dir(model_dir, tmp_path / "noweights", skip=("pytorch_model.bin",))))
    with pytest.raises(UserError, match="config.json"):
        load_transfo_xl(str(copy_dir(model_dir, tmp_path / "noconfig", skip=("config.json",))))

    bad = copy_dir(model_dir, tmp_path / "badshape")
    state = dict(recorded["state_dict"])
    state["transformer.layers.1.pos_ff.CoreNet.3.weight"] = torch.zeros(32, 65)
    torch.save(state, bad / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"'transformer\.layers\.1\.pos_ff\.CoreNet\.3\.weight' has shape \[32, 65\]"):
        load_transfo_xl(str(bad))

    missing = copy_dir(model_dir, tmp_path / "missing")
    state = dict(recorded["state_dict"])
    del state["transformer.word_emb.emb_projs.2"]
    torch.save(state, missing / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"missing key 'transformer\.word_emb\.emb_projs\.2'"):
        load_transfo_xl(str(missing))

    garbage = copy_dir(model_dir, tmp_path / "garbage")
    (garbage / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read weights"):
        load_transfo_xl(str(garbage))

    for change, match in ((dict(attn_type=1), "attn_type"), (dict(pre_lnorm=True), "pre_lnorm"), (dict(model_type="gpt2"), "gpt2")):
        other = copy_dir(model_dir, tmp_path / f"cfg_{next(iter(change))}")
        (other / "config.json").write_text(json.dumps({**recorded["config"], **change}))
        with pytest.raises(UserError, match=match):
            load_transfo_xl(str(other))


def test_hub_id_offline_not_cached(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    began = time.monotonic()
    for lm in (SHORT_NAME, HUB_ID):
        with pytest.raises(UserError, match=rf"LM '{lm}' is not in the local cache and the hub is offline .*huggingface-cli download transfo-xl/transfo-xl-wt103` \(1.1 GB\).*lm=minilm"):
            load_transfo_xl(lm)
    assert time.monotonic() - began < 10


def test_lm_layers_keeps_the_first_layers(model_dir, model):
    two = load_transfo_xl(str(model_dir), lm_layers=2)
    assert len(two.layers) == 2 and two.config.n_layer == 2
    for ours, full in zip(two.state_dict().items(), model.state_dict().items()):
        assert ours[0] == full[0] and torch.equal(ours[1], full[1])
    memory = Fed(TransfoXLMemory(two, 5), 2)
    history = []
    for embeds, start in random_schedule(8, 2, seed=2, reset_p=0.0):
        history.append(embeds)
        out = memory.step(embeds, start)
    assert torch.allclose(out, two.full_forward(torch.cat(history, dim=1), 5)[:, -1], atol=ATOL, rtol=0)
    for n in (0, 4, True, "2"):
        with pytest.raises(UserError, match="lm_layers"):
            load_transfo_xl(str(model_dir), lm_layers=n)


# ----------------------------------------------------------------------------------------------
# (i) a long episode: nothing is ever re-encoded
# ----------------------------------------------------------------------------------------------


def test_long_episode(model):
    mem_len, n_steps = 8, 2000
    memory = Fed(TransfoXLMemory(model, mem_len), 2)
    gen = torch.Generator().manual_seed(5)
    inputs = torch.randn(2, n_steps, 32, generator=gen)
    start = torch.tensor([True, True])
    for n in range(n_steps):
        out = memory.step(inputs[:, n], start if n == 0 else ~start)
    assert memory.state.tokens_encoded == n_steps  # every token's keys/values computed exactly once
    assert torch.isfinite(out).all()
    # With n_layer layers, the newest output depends only on the last n_layer*(mem_len-1)+1
    # inputs, so a plain forward over them is an exact reference.
    span = len(model.layers) * (mem_len - 1) + 1
    want = model.full_forward(inputs[:, -span:], mem_len)[:, -1]
    assert torch.allclose(out, want, atol=ATOL, rtol=0)
    # and the reference really needs that span: one token fewer changes the answer
    shorter = model.full_forward(inputs[:, -span + 1 :], mem_len)[:, -1]
    assert not torch.allclose(out, shorter, atol=ATOL, rtol=0)
