"""report.py on fake run directories: two models x three seeds on one env, written with SummaryWriter."""

import json
from pathlib import Path

import numpy as np
import pytest

import report

ENV = "MiniGrid-MemoryS7-v0"
BUDGET = 1000
LOG_EVERY = 100
REPS = ["--reps", "200", "--metric-steps", "21"]


def write_run(run_dir: Path, model: str, seed: int, final_return: float, final_success: float,
              last_step: int = BUDGET, budget: int = BUDGET, duplicate_last: bool = False, **settings) -> None:
    """A run like main.py writes one: config.json plus rising curves logged every LOG_EVERY steps."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir.mkdir(parents=True)
    config = {"env": ENV, "model": model, "seed": seed, "n_steps": budget, "n_envs": 2, **settings}
    (run_dir / "config.json").write_text(json.dumps(config))
    writer = SummaryWriter(str(run_dir))
    for step in range(LOG_EVERY, last_step + 1, LOG_EVERY):
        progress = step / BUDGET
        if duplicate_last and step == last_step:  # first write of a step that a resumed run logs again
            writer.add_scalar("rollout/ep_rew_mean", -5.0, step)
            writer.add_scalar("rollout/success_rate", 0.0, step)
        writer.add_scalar("rollout/ep_rew_mean", final_return * progress, step)
        writer.add_scalar("rollout/success_rate", final_success * progress, step)
        writer.add_scalar("train/loss", 1.0 - 0.5 * progress, step)
    writer.close()


@pytest.fixture(scope="module")
def fake_runs(tmp_path_factory) -> Path:
    """HELM clearly ahead of CNN-PPO; one CNN-PPO run stopped at 60% of the budget, one HELM run
    logged its last step twice (the second value is the real one)."""
    root = tmp_path_factory.mktemp("runs") / "experiments"
    for seed, (ret, succ) in enumerate([(0.80, 0.90), (0.85, 0.95), (0.90, 1.00)], start=1):
        write_run(root / "HELM" / ENV / f"seed{seed}", "HELM", seed, ret, succ, duplicate_last=seed == 2)
    for seed, (ret, succ) in enumerate([(0.20, 0.25), (0.30, 0.35), (0.25, 0.30)], start=1):
        write_run(root / "CNN-PPO" / ENV / f"seed{seed}", "CNN-PPO", seed, ret, succ,
                  last_step=600 if seed == 3 else BUDGET)
    return root


def within(est: dict) -> bool:
    return est["low"] <= est["point"] <= est["high"]


@pytest.fixture(scope="module")
def built(fake_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "nested" / "out"  # created by the report
    assert report.main([str(fake_runs), "--out", str(out), *REPS]) == 0
    return out, json.loads((out / "report.json").read_text())


def test_report_files_and_numbers(built):
    out, data = built
    assert (out / "report.md").is_file()
    for metric in ("rollout_ep_rew_mean", "rollout_success_rate"):
        png = out / f"curves__{ENV}__{metric}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data["runs"]) == 6
    env = data["envs"][ENV]
    assert list(env["models"]) == ["HELM", "CNN-PPO"]  # memory models before baselines
    helm, cnn = env["models"]["HELM"], env["models"]["CNN-PPO"]
    assert helm["runs"] == cnn["runs"] == 3 and helm["seeds"] == [1, 2, 3]
    for model in (helm, cnn):
        for metric in report.METRICS:
            assert within(model["final"][metric]["iqm"]) and within(model["final"][metric]["mean"])
    for metric in report.METRICS:
        assert helm["final"][metric]["iqm"]["point"] > cnn["final"][metric]["iqm"]["point"]
    assert helm["final"]["rollout/ep_rew_mean"]["mean"]["point"] == pytest.approx(0.85, abs=1e-6)
    rows = {(r["model"], r["baseline"], r["metric"]): r for r in env["improvement"]}
    assert set(rows) == {("HELM", "CNN-PPO", m) for m in report.METRICS}
    for row in rows.values():
        assert row["point"] > 0.5 and within(row)


def test_duplicated_step_keeps_last_write(built):
    _, data = built
    run = next(r for r in data["runs"] if r["model"] == "HELM" and r["seed"] == 2)
    assert run["final"]["rollout/ep_rew_mean"] == pytest.approx(0.85)
    assert run["final"]["rollout/success_rate"] == pytest.approx(0.95)


def test_run_that_stopped_early_is_reported(built):
    out, data = built
    cnn = data["envs"][ENV]["models"]["CNN-PPO"]
    assert cnn["steps_reached"] == [600, BUDGET]
    assert len(cnn["stopped_early"]) == 1 and cnn["stopped_early"][0].endswith("seed3")
    md = (out / "report.md").read_text()
    assert "600–1,000 (1 run stopped early)" in md
    assert f"](curves__{ENV}__rollout_ep_rew_mean.png)" in md
    assert "| HELM | CNN-PPO | return |" in md


def test_curve_is_not_extrapolated():
    grid = np.linspace(0, 1000, 11)
    curve = report.curve_on_grid((np.array([100, 600]), np.array([0.0, 1.0])), grid)
    assert np.isnan(curve[0]) and np.isnan(curve[7:]).all()
    assert curve[1] == 0.0 and curve[6] == 1.0 and curve[3] == pytest.approx(0.4)
    mean, low, high = report.bootstrap_band(np.stack([curve, curve + 1.0]), 100, np.random.default_rng(0))
    assert np.isnan(mean[0]) and mean[6] == pytest.approx(1.5)
    assert low[6] <= mean[6] <= high[6]


def test_library_call_is_reproducible(fake_runs, tmp_path, built):
    _, data = built
    again = report.build_report([fake_runs / "HELM", fake_runs / "CNN-PPO" / ENV], tmp_path / "again",
                                metric_steps=21, reps=200)
    out, _ = built

    def resolved(envs, folder):  # the paths in a report are relative to its folder
        for summary in envs.values():
            for stats in summary["models"].values():
                stats["stopped_early"] = [str((folder / p).resolve()) for p in stats["stopped_early"]]
        return envs

    assert resolved(again["envs"], tmp_path / "again") == resolved(data["envs"], out)
    assert not any(r["path"].startswith("/") for r in again["runs"])  # no machine's folders in report.json


def test_no_runs_is_a_user_error(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "config.json").write_text("{}")  # a config without events is no run
    assert report.main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no run directories (config.json + TensorBoard events) or probe results (probe.json) under ")
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_mixed_budgets_in_one_env_are_reported_per_budget(tmp_path, capsys):
    write_run(tmp_path / "HELM" / ENV / "a", "HELM", 1, 0.5, 0.5)
    write_run(tmp_path / "CNN-PPO" / ENV / "b", "CNN-PPO", 1, 0.5, 0.5, last_step=500, budget=500)
    assert report.main([str(tmp_path), "--out", str(tmp_path / "out"), *REPS]) == 0
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert sorted(data["envs"]) == [f"{ENV} (1,000 steps)", f"{ENV} (500 steps)"]
    assert list(data["envs"][f"{ENV} (500 steps)"]["models"]) == ["CNN-PPO"]


def test_runs_of_one_model_with_different_settings_are_reported_apart(tmp_path):
    """A declared variant (or a sweep's --grid) is its own line, named by the settings that differ;
    a key an older config lacks counts as its default, so it splits nothing."""
    for seed in (1, 2):
        write_run(tmp_path / "Impala-PPO" / ENV / f"paper-seed{seed}", "Impala-PPO", seed, 0.5, 0.5, ent_coef=0.001)
        write_run(tmp_path / "Impala-PPO" / ENV / f"ent-seed{seed}", "Impala-PPO", seed, 0.9, 0.95, ent_coef=0.01,
                  cuda_graph=False)  # the default: written by a newer version, the same behaviour
        write_run(tmp_path / "CNN-PPO" / ENV / f"seed{seed}", "CNN-PPO", seed, 0.5, 0.5, torch_threads=seed)
    assert report.main([str(tmp_path), "--out", str(tmp_path / "out"), *REPS]) == 0
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    summary = data["envs"][ENV]
    assert list(summary["models"]) == ["Impala-PPO (ent_coef=0.001)", "Impala-PPO (ent_coef=0.01)", "CNN-PPO"]
    assert summary["models"]["Impala-PPO (ent_coef=0.01)"]["final"]["rollout/ep_rew_mean"]["iqm"]["point"] == pytest.approx(0.9)
    assert {(r["model"], r["baseline"]) for r in summary["improvement"]} == {
        ("Impala-PPO (ent_coef=0.001)", "CNN-PPO"), ("Impala-PPO (ent_coef=0.01)", "CNN-PPO")}
    assert {r["name"] for r in data["runs"] if r["model"] == "CNN-PPO"} == {"CNN-PPO"}  # torch_threads is no setting
    assert "| Impala-PPO (ent_coef=0.01) | 2 |" in report.results_table(data, ENV)


def test_unwritable_out_is_a_user_error(fake_runs, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert report.main([str(fake_runs / "HELM"), "--out", str(tmp_path / "file" / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot create the output directory") and err.count("\n") == 1


def test_sample_efficiency(built, fake_runs, tmp_path):
    _, data = built
    eff = data["envs"][ENV]["efficiency"]
    # rising lines from final/10 at step 100 to final at 1000; the first value stands in before step 100
    helm = report.load_runs([fake_runs / "HELM"])
    for run in helm:
        expected = run.final("rollout/ep_rew_mean") * (0.1 * 0.1 + 0.9 * 0.55)
        assert abs(report.mean_return_over_training(run) - expected) < 0.005
    assert eff["models"]["CNN-PPO"]["n"] == 2  # the run that stopped early has no mean over the budget
    (row,) = eff["improvement"]
    assert (row["model"], row["baseline"], row["n_model"], row["n_baseline"], row["point"]) == ("HELM", "CNN-PPO", 3, 2, 1.0)
    assert np.allclose(eff["levels"], [0.425, 0.68, 0.765], atol=0.006)  # of HELM's mean final return 0.85
    out = tmp_path / "levels"
    assert report.main([str(fake_runs), "--out", str(out), *REPS, "--levels", "0.4"]) == 0
    steps = json.loads((out / "report.json").read_text())["envs"][ENV]["efficiency"]["steps_to_level"]
    assert [r["steps"] for r in steps["HELM"]] == [[500], [500], [500]]  # 0.8 * 500/1000 = 0.4, and so on
    assert all(r["steps"] == [None] for r in steps["CNN-PPO"])
    text = (out / "report.md").read_text()
    assert "### Sample efficiency" in text and "| HELM | 1 | 500 |" in text and "| CNN-PPO | 1 | – |" in text


def test_a_damaged_events_file_skips_its_run_with_one_line(fake_runs, tmp_path, capsys):
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(fake_runs, root)
    (events,) = (root / "HELM" / ENV / "seed1").glob("events.out.tfevents.*")
    data = events.read_bytes()
    events.write_bytes(data[:40] + b"garbage" + data[47:])  # the same length, one record damaged
    assert report.main([str(root), "--out", str(tmp_path / "out"), *REPS]) == 0
    err = capsys.readouterr().err
    assert f"warning: skipping run {root / 'HELM' / ENV / 'seed1'}: events file {events.name} is damaged" in err
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["envs"][ENV]["models"]["HELM"]["runs"] == 2

    for other in root.rglob("events.out.tfevents.*"):  # nothing intact left: an error, not an empty report
        other.write_bytes(b"\x00" * 64)
    assert report.main([str(root), "--out", str(tmp_path / "out2"), *REPS]) == 2
    assert "every run found has a damaged events file" in capsys.readouterr().err


def test_a_truncated_last_record_is_not_damage(fake_runs, tmp_path):
    (events,) = (fake_runs / "CNN-PPO" / ENV / "seed1").glob("events.out.tfevents.*")
    cut = tmp_path / events.name
    cut.write_bytes(events.read_bytes()[:-5])  # what a hard kill during a write leaves
    assert report.events_file_problem(cut) is None and report.events_file_problem(events) is None


def test_report_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        report.main(["somewhere"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err


def test_default_levels_are_distinct_and_readable():
    class R:
        def __init__(self, value):
            self.value = value

        def final(self, metric):
            return self.value

    assert report.default_levels({"a": [R(0.02)]}) == [0.01, 0.016, 0.018]  # not 0.01 | 0.02 | 0.02
    assert report.default_levels({"a": [R(0.001)]}) == [0.0005, 0.0008, 0.0009]  # not 0 | 0 | 0
    assert report.default_levels({"a": [R(0.944)], "b": [R(0.5)]}) == [0.47, 0.76, 0.85]
    assert report.default_levels({"a": [R(-1.0)]}) == []
