import errno

import pytest
import torch

from models import build_agent
from utils.checkpoint import load_checkpoint, resolve_checkpoint_path, save_checkpoint
from utils.config import defaults
from utils.errors import UserError


CONFIG = {"env": "MiniGrid-MemoryS7-v0", "model": "CNN-PPO", "seed": 3, "n_envs": 4}


def _agent_and_optimizer():
    agent = build_agent("CNN-PPO", (56, 56, 3), 7, defaults())
    opt = torch.optim.AdamW(agent.parameters(), lr=1e-3)
    loss = sum(p.sum() for p in agent.parameters())
    loss.backward()
    opt.step()
    return agent, opt


def test_round_trip_restores_parameters_and_optimizer(tmp_path):
    agent, opt = _agent_and_optimizer()
    save_checkpoint(tmp_path / "ckpt.pt", {"config": CONFIG, "agent": agent.checkpoint_state(),
                                           "optimizer": opt.state_dict(), "step": 7})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind
    payload = load_checkpoint(tmp_path / "ckpt.pt")
    other = build_agent("CNN-PPO", (56, 56, 3), 7, defaults())
    other.load_checkpoint_state(payload["agent"])
    for (name, a), b in zip(agent.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-3)
    opt2.load_state_dict(payload["optimizer"])
    for s1, s2 in zip(opt.state.values(), opt2.state.values()):
        assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"])
    assert payload["step"] == 7
    assert payload["config"] == {**defaults(), **CONFIG}  # keys it lacks take their defaults


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"config": CONFIG, "agent": {}, "optimizer": {}, "step": 1})

    def boom(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(UserError, match=r"cannot write checkpoint .*ckpt.pt: No space left on device; the previous"):
        save_checkpoint(path, {"config": CONFIG, "agent": {}, "optimizer": {}, "step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_bad_checkpoints_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        resolve_checkpoint_path(tmp_path / "missing.pt")
    with pytest.raises(UserError, match="no checkpoint"):
        resolve_checkpoint_path(tmp_path)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": 1}, foreign)
    with pytest.raises(UserError, match="not a checkpoint of this project"):
        load_checkpoint(foreign)


def test_mismatched_agent_state_is_refused():
    agent = build_agent("CNN-PPO", (56, 56, 3), 7, defaults())
    lstm = build_agent("Impala-PPO", (56, 56, 3), 7, defaults())
    with pytest.raises((ValueError, RuntimeError)):
        lstm.load_checkpoint_state(agent.checkpoint_state())


def test_loading_is_weights_only_but_reads_the_numpy_state_checkpoints_hold(tmp_path):
    """Checkpoints hold numpy's RNG state and the reward normaliser's returns (numeric arrays): they load.
    Anything that needs another global, even numpy's object arrays, is refused in one line."""
    import random

    import numpy as np

    path = tmp_path / "ckpt.pt"
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    save_checkpoint(path, {"config": CONFIG, "agent": {}, "optimizer": {}, "step": 1, "rng": rng,
                           "reward_norm": {"returns": np.arange(4.0), "mean": 0.0}})
    payload = load_checkpoint(path)
    assert np.array_equal(payload["rng"]["numpy"][1], rng["numpy"][1]) and payload["rng"]["python"] == rng["python"]
    assert np.array_equal(payload["reward_norm"]["returns"], np.arange(4.0))

    save_checkpoint(path, {"config": CONFIG, "agent": {}, "optimizer": {}, "step": 1,
                           "extra": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(UserError, match="refers to .*loading it could run code"):
        load_checkpoint(path)
