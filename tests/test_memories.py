"""The memory interface, for every memory: trained (LSTM, GRU, GTrXL) and frozen (HF LMs, Transformer-XL).

* `scan` equals a loop of `step` (what the PPO update re-runs equals what the rollout computed);
* a row's output after its episode start equals that of a fresh state (and other rows are spared);
* `peek` returns `step`'s output and leaves the state as it was;
* the agents: re-run log-probs equal the rollout's at the first epoch, for every trained memory;
* adding a memory is one file plus one registry line.
"""

from __future__ import annotations

import copy
import json
import sys
import textwrap

import pytest
import torch

from conftest import run_main
from models import build_agent
from models.frozen_lm import load_frozen_memory
from models.gtrxl import GatedTransformerXL
from models.memory import NoMemory
from models.recurrent import GRUMemory, LSTMMemory
from models.registry import MODELS
from tests.tiny_lms import tiny_gpt2, tiny_llama, tiny_transfo_xl
from utils.config import defaults

pytestmark = pytest.mark.usefixtures("one_thread")

B, T = 3, 14


@pytest.fixture(scope="module")
def memories(tmp_path_factory):
    """name -> (memory, input width): every kind of memory the project has, tiny."""
    root = tmp_path_factory.mktemp("memories")
    torch.manual_seed(0)
    built = {
        "lstm": LSTMMemory(8, 16),
        "gru": GRUMemory(8, 16),
        "gtrxl": GatedTransformerXL(8, dim=16, layers=2, heads=2, mem_len=4),
        "gtrxl-long-window": GatedTransformerXL(8, dim=16, layers=1, heads=4, mem_len=32),
        "none": NoMemory(8),
        "gpt2 (causal)": load_frozen_memory(tiny_gpt2(str(root / "gpt2")), mem_len=5)[0],
        "llama (causal)": load_frozen_memory(tiny_llama(str(root / "llama")), mem_len=5)[0],
        "gpt2 (bidirectional)": load_frozen_memory(str(root / "gpt2"), mem_len=5, lm_mode="bidirectional")[0],
        "transformer-xl (zero)": load_frozen_memory(tiny_transfo_xl(str(root / "trxl")), mem_len=5)[0],
        "transformer-xl (mask)": load_frozen_memory(str(root / "trxl"), mem_len=5, mem_reset="mask")[0],
    }
    return {name: (memory.eval(), memory.in_dim) for name, memory in built.items()}


def episode_starts(seed: int = 0) -> torch.Tensor:
    starts = torch.zeros(T, B, dtype=torch.bool)
    starts[0] = True
    starts[4, 1] = starts[9, 1] = True  # row 1: three episodes
    starts[7, 2] = True
    return starts


def sequence(dim: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(T, B, dim, generator=torch.Generator().manual_seed(seed))


def loop(memory, xs, state, starts):
    outs = []
    for x, start in zip(xs, starts):
        y, state = memory.step(x, state, start)
        outs.append(y)
    return torch.stack(outs), state


@pytest.mark.parametrize("name", ["lstm", "gru", "gtrxl", "gtrxl-long-window", "none", "gpt2 (causal)",
                                  "llama (causal)", "gpt2 (bidirectional)", "transformer-xl (zero)",
                                  "transformer-xl (mask)"])
def test_scan_equals_a_loop_of_step(memories, name):
    memory, dim = memories[name]
    xs, starts = sequence(dim), episode_starts()
    with torch.no_grad():
        # a history before the sequence, as a rollout that starts mid-episode has
        _, state = loop(memory, sequence(dim, seed=1)[:5], memory.initial_state(B), episode_starts()[:5])
        state_for_loop = copy.deepcopy(state)  # frozen LMs update their state in place
        scanned, after_scan = memory.scan(xs, state, starts)
        looped, after_loop = loop(memory, xs, state_for_loop, starts)
    torch.testing.assert_close(scanned, looped, atol=1e-5, rtol=0)
    if isinstance(after_scan, dict):  # trained memories: the state after the sequence too
        for key in after_scan:
            torch.testing.assert_close(after_scan[key].float(), after_loop[key].float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["lstm", "gru", "gtrxl", "gpt2 (causal)", "llama (causal)", "gpt2 (bidirectional)",
                                  "transformer-xl (mask)"])
def test_an_episode_start_forgets_like_a_fresh_state(memories, name):
    memory, dim = memories[name]
    xs = sequence(dim)
    no_starts = torch.zeros(T, B, dtype=torch.bool)
    starts = no_starts.clone()
    starts[6, 1] = True
    with torch.no_grad():
        with_start, _ = loop(memory, xs, memory.initial_state(B), starts)
        without, _ = loop(memory, xs, memory.initial_state(B), no_starts)
        fresh, _ = loop(memory, xs[6:], memory.initial_state(B), no_starts[6:])
    torch.testing.assert_close(with_start[6:, 1], fresh[:, 1], atol=1e-5, rtol=0)  # row 1 forgot steps 0-5
    torch.testing.assert_close(with_start[:, [0, 2]], without[:, [0, 2]], atol=1e-6, rtol=0)  # the others did not
    assert not torch.allclose(with_start[6:, 1], without[6:, 1], atol=1e-4)  # and forgetting mattered


@pytest.mark.parametrize("name", ["lstm", "gru", "gtrxl", "gpt2 (causal)", "gpt2 (bidirectional)",
                                  "transformer-xl (zero)", "transformer-xl (mask)"])
def test_peek_is_step_without_side_effects(memories, name):
    memory, dim = memories[name]
    xs, starts = sequence(dim), episode_starts()
    with torch.no_grad():
        _, state = loop(memory, xs[:8], memory.initial_state(B), starts[:8])
        before = copy.deepcopy(state)
        probe_start = torch.tensor([True, False, False])
        peeked = memory.peek(xs[8], state, probe_start)
        assert _same_state(state, before)
        stepped, _ = memory.step(xs[8], copy.deepcopy(state), probe_start)
    torch.testing.assert_close(peeked, stepped, atol=1e-6, rtol=0)


def _same_state(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    if hasattr(a, "__dict__"):
        return _same_state(vars(a), vars(b))
    return a == b


def test_gtrxl_attends_within_its_window_only():
    """A position sees itself and mem_len earlier ones: an input further back changes nothing."""
    torch.manual_seed(0)
    memory = GatedTransformerXL(4, dim=8, layers=1, heads=2, mem_len=3).eval()
    xs = torch.randn(8, 1, 4)
    starts = torch.zeros(8, 1, dtype=torch.bool)
    changed = xs.clone()
    changed[0] += 5.0
    with torch.no_grad():
        a, _ = memory.scan(xs, memory.initial_state(1), starts)
        b, _ = memory.scan(changed, memory.initial_state(1), starts)
    assert not torch.allclose(a[3], b[3], atol=1e-4)  # step 3 still sees step 0 (3 back)
    torch.testing.assert_close(a[4:], b[4:], atol=1e-6, rtol=0)  # one layer: step 4 on does not


def test_gtrxl_chunked_scan_is_one_pass_over_the_segment():
    """`scan` runs mem_len steps at a time; outputs, state and gradients equal one pass over all T."""
    torch.manual_seed(0)
    memory = GatedTransformerXL(8, dim=16, layers=2, heads=2, mem_len=4)
    xs, starts = sequence(8), episode_starts()
    _, state = loop(memory, sequence(8, seed=1)[:5], memory.initial_state(B), episode_starts()[:5])
    state = {key: value.detach() for key, value in state.items()}
    results = []
    for scan in (memory.scan, memory._scan_chunk):  # chunks of 4 vs one pass over T = 14
        memory.zero_grad()
        ys, after = scan(xs, state, starts)
        (ys.square().mean() + after["mems"].sum()).backward()
        results.append((ys.detach(), after, [p.grad.clone() for p in memory.parameters()]))
    (chunked, after_chunked, grads_chunked), (whole, after_whole, grads_whole) = results
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(after_chunked["mems"], after_whole["mems"], atol=1e-5, rtol=0)
    assert torch.equal(after_chunked["valid"], after_whole["valid"])
    for a, b in zip(grads_chunked, grads_whole):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_gtrxl_gates_start_close_to_the_identity():
    torch.manual_seed(0)
    memory = GatedTransformerXL(8, dim=8, layers=3, heads=2, mem_len=4)
    x = torch.randn(5, 2, 8)
    h = memory.inp(x.transpose(0, 1))
    with torch.no_grad():
        out = h
        for block in memory.blocks:
            out = block(out, torch.zeros(2, 4, 8), torch.ones(2, 5, 9, dtype=torch.bool),
                        torch.zeros(5, 9, dtype=torch.long))
    # sigmoid(-2) ~ 0.12 of each block's update gets through: three blocks move the stream little
    assert ((out - h).norm() / h.norm()).item() < 0.6


# -- the agents ----------------------------------------------------------------------------------


TINY_RUN = {"env": "CueRecall-D1-v0", "n_envs": 4, "n_rollout_steps": 12, "n_batches": 2, "n_epochs": 1,
            "seed": 1, "torch_threads": 1, "trxl_dim": 16, "trxl_heads": 2, "trxl_mem_len": 4}


@pytest.mark.parametrize("model", ["Impala-PPO", "LSTM-PPO", "GRU-PPO", "TrXL-PPO"])
def test_re_run_log_probs_equal_the_rollouts_at_the_first_epoch(model):
    from trainers.run import build_trainer

    cfg = defaults() | TINY_RUN | {"model": model, "n_steps": 48}
    trainer = build_trainer(cfg, None)
    trainer.begin()
    trainer.collect_rollout()  # continues episodes across the rollout boundary next time
    trainer.collect_rollout()
    assert trainer.agent.recurrent and trainer.rollout.state
    rollout = trainer.rollout
    for batch in rollout.minibatches(cfg["n_batches"], recurrent=True, generator=torch.Generator().manual_seed(0)):
        with torch.no_grad():
            log_probs, _, values = trainer.agent.evaluate(batch)
        torch.testing.assert_close(log_probs, batch["log_probs"].reshape(-1), atol=1e-5, rtol=0)
        torch.testing.assert_close(values, batch["values"].reshape(-1), atol=1e-5, rtol=0)
    trainer.envs.close()


def test_lstm_ppo_is_impala_ppo():
    assert MODELS["LSTM-PPO"].alias_of == "Impala-PPO" and MODELS["LSTM-PPO"].memory == MODELS["Impala-PPO"].memory
    cfg = defaults() | TINY_RUN
    a = build_agent("LSTM-PPO", (56, 56, 3), 2, cfg)
    b = build_agent("Impala-PPO", (56, 56, 3), 2, cfg)
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]


TOY_MEMORY = '''
"""A toy memory: a running sum of the episode's inputs (one file)."""
import torch
from models.memory import Memory


class RunningSum(Memory):
    trainable = True

    def __init__(self, in_dim):
        super().__init__()
        self.in_dim = self.out_dim = in_dim
        self.scale = torch.nn.Parameter(torch.ones(in_dim))

    @classmethod
    def from_config(cls, in_dim, cfg):
        return cls(in_dim)

    def initial_state(self, n):
        return {"sum": self.scale.new_zeros(n, self.in_dim)}

    def step(self, x, state, starts):
        total = state["sum"] * (~starts).to(x.dtype)[:, None] + x
        return total * self.scale, {"sum": total}
'''


def test_a_memory_is_added_with_one_file_and_one_registry_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "toy_memory.py").write_text(textwrap.dedent(TOY_MEMORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    from models.registry import ModelSpec, register

    monkeypatch.setitem(MODELS, "Toy-PPO", MODELS["GRU-PPO"])  # undone after the test
    register(ModelSpec("Toy-PPO", "trained", memory="toy_memory:RunningSum"))  # the one line
    experiments = tmp_path / "experiments"
    assert run_main("--var", "model=Toy-PPO", "--var", "env=CueRecall-D1-v0", "--run-id", "toy",
                    experiments=experiments) == 0
    run = experiments / "Toy-PPO" / "CueRecall-D1-v0" / "toy"
    assert json.loads((run / "config.json").read_text())["model"] == "Toy-PPO"
    import eval as evaluate
    import main

    assert main.main(["--resume", str(run), "--var", "n_steps=96", "--no-progress"]) == 0

    assert evaluate.main(["--ckpt-path", str(run), "--n-episodes", "2", "--no-progress",
                          "--out", str(tmp_path / "eval")]) == 0
    assert "toy_memory" in sys.modules


def test_no_import_circles_in_models():
    """Every models/ module's imports of other models/ modules (lazy ones included) form no cycle."""
    import ast
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "models"
    graph = {}
    for file in folder.glob("*.py"):
        name = "models" if file.stem == "__init__" else f"models.{file.stem}"
        imports = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("models"):
                imports.add(node.module)
            elif isinstance(node, ast.Import):
                imports |= {alias.name for alias in node.names if alias.name.startswith("models")}
        graph[name] = imports - {name}

    def visit(node, path):
        assert node not in path, f"import circle: {' -> '.join([*path, node])}"
        for nxt in graph.get(node, ()):
            visit(nxt, [*path, node])

    for module in graph:
        visit(module, [])
