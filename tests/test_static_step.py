"""The static-shape rollout step that a CUDA graph captures (config `cuda_graph`).

On the CPU: the static memories equal today's eager step (<= 1e-5) over episodes with resets,
the eager memory's slice moves and many times the ring's capacity; no static step reads a device
value on the host; the capture wrapper's buffers and copies give the eager agent's outputs; a
run trains through it. With CUDA (skipped here): the replayed graph equals eager.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import run_main
from models import build_agent
from models.base import sample_without_syncs
from models.lm_memory import LMMemory, load_frozen_lm
from models.static_lm_memory import StaticLMMemory
from models.transfo_xl import TransfoXLMemory, TrXLConfig, build_from_state_dict
from tests.tiny_lms import TRXL_FIXTURE, tiny_gpt2, tiny_llama, tiny_neox
from trainers.captured_step import CapturedStep
from utils.config import defaults

ATOL = 1e-5
N = 4

pytestmark = pytest.mark.usefixtures("one_thread")

# ops that make the host wait for a device value (item(), bool(tensor), data-dependent shapes)
SYNC_OPS = {"aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.nonzero.default",
            "aten.equal.default", "aten.masked_select.default", "aten.unique_consecutive.default"}


class HostReads(TorchDispatchMode):
    """Records the ops that would read a device value on the host (a device-host sync)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in SYNC_OPS:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    root = tmp_path_factory.mktemp("static_lms")
    return {
        "gpt2": load_frozen_lm(tiny_gpt2(str(root / "gpt2"), n_positions=64)),
        "neox": load_frozen_lm(tiny_neox(str(root / "neox"))),
        "llama": load_frozen_lm(tiny_llama(str(root / "llama"))),
    }


@pytest.fixture(scope="module")
def trxl():
    recorded = torch.load(TRXL_FIXTURE, weights_only=True)
    return build_from_state_dict(TrXLConfig.from_dict(recorded["config"]), recorded["state_dict"])


def schedule(steps: int, seed: int, longest: int) -> torch.Tensor:
    """Random episode starts [steps, N]; no episode lasts more than `longest` steps."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.rand(steps, N, generator=g) < 0.06
    age = torch.zeros(N, dtype=torch.long)
    for t in range(steps):
        starts[t] |= age >= longest - 1
        age = torch.where(starts[t], 0, age + 1)
    return starts


@pytest.mark.parametrize("name", ["gpt2", "neox", "llama"])
@pytest.mark.parametrize("k", [1, 3])
def test_static_lm_step_equals_the_eager_step(lms, name, k):
    eager, static = LMMemory(lms[name], mem_len=20, mode="causal"), StaticLMMemory(lms[name], mem_len=20, tokens_per_step=k)
    e_state, s_state = eager.initial_state(N), static.initial_state(N)
    steps = 160
    starts = schedule(steps, seed=k, longest=64 // k - 1)  # GPT-2's 64 positions hold every episode
    g = torch.Generator().manual_seed(7)
    for t in range(steps):
        x = torch.randn(N, k, eager.in_dim, generator=g)
        peeked = static.peek(x, s_state, starts[t])
        torch.testing.assert_close(peeked, eager.peek(x, e_state, starts[t]), atol=ATOL, rtol=0)
        before = (s_state.t.clone(), s_state.slot_token.clone(), s_state.start.clone())
        assert all(torch.equal(a, b) for a, b in zip(before, (s_state.t, s_state.slot_token, s_state.start)))
        a, e_state = eager.step(x, e_state, starts[t])
        b, s_state = static.step(x, s_state, starts[t])
        torch.testing.assert_close(b, a, atol=ATOL, rtol=0)
        torch.testing.assert_close(peeked, b, atol=ATOL, rtol=0)
    assert e_state.base > 0 and e_state.rebuilds == 0  # the eager cache moved its live tokens (often)
    assert int(s_state.t) == steps * k > 4 * s_state.capacity  # the ring wrapped many times
    assert s_state.capacity % 16 == 0 and s_state.capacity >= 20 - 1 + k


def test_static_peek_before_any_step_equals_the_first_step(lms):
    memory = StaticLMMemory(lms["neox"], mem_len=8)
    state = memory.initial_state(N)
    x = torch.randn(N, 1, memory.in_dim)
    starts = torch.ones(N, dtype=torch.bool)
    torch.testing.assert_close(memory.peek(x, state, starts), memory.step(x, state, starts)[0], atol=ATOL, rtol=0)


def test_static_step_refuses_a_different_token_count(lms):
    memory = StaticLMMemory(lms["neox"], mem_len=8, tokens_per_step=2)
    with pytest.raises(ValueError, match=r"embeds must be \[4, 2, 32\]"):
        memory.step(torch.zeros(N, 1, memory.in_dim), memory.initial_state(N), torch.zeros(N, dtype=torch.bool))


def test_absolute_positions_must_hold_the_longest_episode(lms):
    gpt2 = StaticLMMemory(lms["gpt2"], mem_len=20)
    assert gpt2.unsupported_reason(64) is None
    assert "65 tokens" in gpt2.unsupported_reason(65) and "rotary" in gpt2.unsupported_reason(65)
    assert "unknown length" in gpt2.unsupported_reason(None)
    assert "96 tokens" in StaticLMMemory(lms["gpt2"], mem_len=20, tokens_per_step=3).unsupported_reason(32)
    assert StaticLMMemory(lms["neox"], mem_len=20).unsupported_reason(None) is None  # rotary: any length


@pytest.mark.parametrize("reset", ["mask", "zero"])
def test_static_transfo_xl_equals_the_eager_step(trxl, reset):
    eager, static = TransfoXLMemory(trxl, 6, reset=reset), TransfoXLMemory(trxl, 6, reset=reset, static=True)
    e_state, s_state = eager.initial_state(N), static.initial_state(N)
    starts = schedule(60, seed=3, longest=1000)
    g = torch.Generator().manual_seed(1)
    for t in range(60):
        x = torch.randn(N, 1, eager.in_dim, generator=g)
        torch.testing.assert_close(static.peek(x, s_state, starts[t]), eager.peek(x, e_state, starts[t]), atol=ATOL, rtol=0)
        a, e_state = eager.step(x, e_state, starts[t])
        b, s_state = static.step(x, s_state, starts[t])
        torch.testing.assert_close(b, a, atol=ATOL, rtol=0)
    assert isinstance(s_state.t, torch.Tensor) and int(s_state.t) == e_state.t == 60


def _static_memories(lms, trxl):
    from models.gtrxl import GatedTransformerXL
    from models.recurrent import GRUMemory, LSTMMemory

    return {"StaticLMMemory": StaticLMMemory(lms["neox"], mem_len=8),
            "StaticLMMemory-gpt2": StaticLMMemory(lms["gpt2"], mem_len=8),
            "TransfoXLMemory-zero": TransfoXLMemory(trxl, 6, reset="zero", static=True),
            "TransfoXLMemory-mask": TransfoXLMemory(trxl, 6, reset="mask", static=True),
            "LSTM": LSTMMemory(32), "GRU": GRUMemory(32), "GTrXL": GatedTransformerXL(32, dim=32, mem_len=4)}


def test_no_static_step_reads_a_device_value_on_the_host(lms, trxl):
    for name, memory in _static_memories(lms, trxl).items():
        state = memory.initial_state(N)
        x = torch.randn(N, memory.in_dim)
        with torch.no_grad():
            for t in range(12):
                starts = torch.tensor([t % 5 == 0, False, t == 3, False])
                with HostReads() as reads:
                    _, state = memory.step(x, state, starts)
                if t:  # the first step may allocate the buffers
                    assert reads.seen == [], f"{name} reads {reads.seen} at step {t}"
    # the detector works: the eager memory asks for the oldest episode's start every step
    eager = LMMemory(lms["neox"], mem_len=8, mode="causal")
    state = eager.initial_state(N)
    with HostReads() as reads:
        eager.step(torch.randn(N, eager.in_dim), state, torch.ones(N, dtype=torch.bool))
    assert reads.seen


def test_sampling_without_syncs_draws_from_the_policy():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).repeat(40_000, 1)
    values = torch.zeros(40_000)
    torch.manual_seed(0)
    with HostReads() as reads:
        out = sample_without_syncs(logits, values, deterministic=False)
    assert reads.seen == []
    frequencies = torch.bincount(out.actions, minlength=4).float() / len(out.actions)
    torch.testing.assert_close(frequencies, logits[0].softmax(-1), atol=0.01, rtol=0)
    expected = torch.distributions.Categorical(logits=logits).log_prob(out.actions)
    torch.testing.assert_close(out.log_probs, expected, atol=1e-6, rtol=0)
    greedy = sample_without_syncs(logits[:2], values[:2], deterministic=True)
    assert greedy.actions.tolist() == [2, 2]
    broken = sample_without_syncs(torch.tensor([[0.0, float("nan")], [0.0, 1.0]]), values[:2], deterministic=False)
    assert broken.actions[0] == -1 and broken.actions[1] >= 0


def _agents(tmp_path_factory) -> dict:
    lm = tiny_neox(str(tmp_path_factory.mktemp("agent_lm") / "neox"))
    base = defaults() | {"seed": 1, "mem_len": 8, "lm": lm}
    return {
        "CNN-PPO": base | {"model": "CNN-PPO"},
        "Impala-PPO": base | {"model": "Impala-PPO"},
        "TrXL-PPO": base | {"model": "TrXL-PPO", "trxl_dim": 32, "trxl_mem_len": 4},
        "HELM": base | {"model": "HELM", "hopfield_cache_size": 0, "cuda_graph": True},
        "HELM-cached": base | {"model": "HELM", "hopfield_cache_size": 100, "cuda_graph": True},
    }


@pytest.fixture(scope="module")
def agent_cfgs(tmp_path_factory):
    return _agents(tmp_path_factory)


@pytest.mark.parametrize("name", ["CNN-PPO", "Impala-PPO", "TrXL-PPO", "HELM", "HELM-cached"])
def test_the_capture_wrapper_gives_the_eager_agents_outputs(agent_cfgs, name):
    cfg = agent_cfgs[name]
    obs_shape = (56, 56, 3)
    captured_agent = build_agent(cfg["model"], obs_shape, 3, cfg)
    eager_agent = build_agent(cfg["model"], obs_shape, 3, cfg | {"cuda_graph": False})
    eager_agent.load_state_dict(captured_agent.state_dict(), strict=False)
    step = CapturedStep(captured_agent, N, obs_shape, torch.uint8, torch.device("cpu"))
    assert step.encoder_inside == (name != "HELM-cached")
    state = eager_agent.initial_state(N)
    starts = schedule(30, seed=5, longest=12)
    g = torch.Generator().manual_seed(2)
    for t in range(30):
        obs = torch.randint(0, 4, (N, *obs_shape), dtype=torch.uint8, generator=g) * 60
        out = step(obs, starts[t])
        with torch.no_grad():
            inputs, extra = eager_agent.encode(obs)
            memory_out, state = eager_agent.memory.step(inputs, state, starts[t])
            logits, values = eager_agent.policy(memory_out, obs)
        torch.testing.assert_close(out.values, values, atol=ATOL, rtol=0)
        torch.testing.assert_close(out.memory_out, memory_out, atol=ATOL, rtol=0)
        torch.testing.assert_close(out.log_probs, logits.log_softmax(-1).gather(-1, out.actions[:, None])[:, 0],
                                   atol=ATOL, rtol=0)
    if name.startswith("HELM"):  # what the memory was fed is still recorded for traces and TensorBoard
        assert len(captured_agent._recent) == 30 and captured_agent.step_text()["memory/words"]


def test_a_run_trains_through_the_capture_wrapper(experiments, agent_cfgs, monkeypatch):
    """On the CPU the wrapper runs without a graph: the trainer's side of cuda_graph, end to end."""
    import trainers.run

    monkeypatch.setattr(trainers.run, "_check_cuda_graph", lambda *args: None)
    for model in ("HELM", "Impala-PPO"):
        run_main("--var", f"model={model}", "--var", "cuda_graph=true", "--var", f"lm={agent_cfgs['HELM']['lm']}",
                 "--var", "mem_len=8", "--var", "vec_env=sync", "--run-id", model, experiments=experiments)
        (run_dir,) = [path.parent for path in experiments.rglob("config.json") if path.parent.name == model]
        assert (run_dir / "ckpt_last.pt").exists()
        assert json.loads((run_dir / "config.json").read_text())["cuda_graph"] is True


def test_cuda_graph_on_the_cpu_is_a_one_line_error(experiments, agent_cfgs, capsys):
    code = run_main("--var", "model=CNN-PPO", "--var", "cuda_graph=true", "--var", "device=cpu",
                    experiments=experiments)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "cuda_graph=true needs a CUDA device" in err[0]
    assert not experiments.exists() or not any(experiments.rglob("config.json"))


def test_cuda_graph_refuses_a_bidirectional_lm(agent_cfgs):
    from utils.errors import UserError

    with pytest.raises(UserError, match="needs a causal LM memory.*lm_mode=causal"):
        build_agent("HELM", (56, 56, 3), 3, agent_cfgs["HELM"] | {"lm": "minilm"})


# ----------------------------------------------------------------------------------------------
# CUDA only: the captured graph itself
# ----------------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("name", ["CNN-PPO", "Impala-PPO", "TrXL-PPO", "HELM", "HELM-cached"])
def test_the_replayed_graph_equals_eager(agent_cfgs, name):
    device = torch.device("cuda")
    cfg = agent_cfgs[name] | {"device": "cuda"}
    obs_shape = (56, 56, 3)
    graphed_agent = build_agent(cfg["model"], obs_shape, 3, cfg).to(device)
    eager_agent = build_agent(cfg["model"], obs_shape, 3, cfg | {"cuda_graph": False}).to(device)
    eager_agent.load_state_dict(graphed_agent.state_dict(), strict=False)
    step = CapturedStep(graphed_agent, N, obs_shape, torch.uint8, device)
    state = eager_agent.initial_state(N)
    starts = schedule(40, seed=6, longest=12).to(device)
    g = torch.Generator().manual_seed(3)
    for t in range(40):
        obs = (torch.randint(0, 4, (N, *obs_shape), dtype=torch.uint8, generator=g) * 60).to(device)
        out = step(obs, starts[t])
        with torch.no_grad():
            inputs, _ = eager_agent.encode(obs)
            memory_out, state = eager_agent.memory.step(inputs, state, starts[t])
            _, values = eager_agent.policy(memory_out, obs)
        torch.testing.assert_close(out.values, values, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.memory_out.float(), memory_out.float(), atol=1e-4, rtol=1e-4)
    assert step.graph is not None


@cuda
def test_a_cuda_graph_run_trains(experiments, agent_cfgs):
    for model in ("HELM", "CNN-PPO"):
        code = run_main("--var", f"model={model}", "--var", "cuda_graph=true", "--var", "device=cuda",
                        "--var", f"lm={agent_cfgs['HELM']['lm']}", "--var", "mem_len=8", "--var", "hopfield_cache_size=0",
                        "--run-id", f"graph-{model}", experiments=experiments)
        assert code in (0, None)


def test_dataclass_state_moves_with_to(lms):
    memory = StaticLMMemory(lms["neox"], mem_len=8)
    state = memory.initial_state(N)
    memory.step(torch.randn(N, memory.in_dim), state, torch.ones(N, dtype=torch.bool))
    moved = state.to("cpu")
    assert moved is state and dataclasses.is_dataclass(moved)


def test_a_captured_rollout_reads_no_device_value_on_the_host(agent_cfgs, monkeypatch):
    """With cuda_graph the only sync per step is fetching the actions (not an op: invisible here)."""
    import trainers.run
    from trainers.run import build_trainer

    monkeypatch.setattr(trainers.run, "_check_cuda_graph", lambda *args: None)
    for name in ("HELM", "Impala-PPO"):
        cfg = agent_cfgs[name] | {"n_envs": 2, "n_rollout_steps": 16, "n_batches": 2, "vec_env": "sync",
                                  "torch_threads": 1, "cuda_graph": True, "save_ckpt": False}
        trainer = build_trainer(cfg, run_dir=None)
        try:
            trainer.begin()
            with HostReads() as reads:
                trainer.collect_rollout()
            assert reads.seen == [], f"{name}: {reads.seen}"
        finally:
            trainer.envs.close()
