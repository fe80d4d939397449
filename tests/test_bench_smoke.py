"""Every benchmark script's ``--smoke`` run, so that a benchmark that no longer fits the code (a
renamed attribute, a changed signature) fails here rather than on the day someone needs its numbers.

Each script runs as its own process, as a user runs it: offline, one thread, tiny models. Most of a
smoke run's time is starting Python and importing torch and transformers, so the runs are started
together, a few at a time, when the first test needs them (one by one they take minutes on a loaded
2-core machine). The three that start further processes of their own are marked slow.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TIMEOUT_S = 300  # per script; a smoke run takes 5-60 s on a loaded 2-core machine
PARALLEL = 4
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def transformers_has_transfo_xl() -> bool:
    import transformers

    return hasattr(transformers, "TransfoXLModel")


# script -> lines its output must contain: its result table or line, and the notes of what it skipped.
# Longest first, so that the parallel runs finish together.
EXPECTED = {
    "learning": ["| CueRecall-D1-v0 | CNN-PPO | 1 | 32 |", "| CueRecall-D1-v0 | HELM | 1 | 32 |",
                 "smoke: plotted 1 figure(s)"],
    "eval_speed": ["| code | policy | --n-envs | seconds |", "| deterministic | default |",
                   "smoke: skipped the --before-tree comparison"],
    "threads": ["smoke: {'threads': '1'", "smoke: {'threads': 'per-core'", "smoke: {'threads': 'auto'"],
    "gpu_check": ["| HELMv2 | lm=pythia410m", "| SHELM | lm=pythia410m", "precision bf16-autocast: LM step",
                  "0 failed"],
    "gpu_check --scale --concurrent --attention": ["LM step, bf16, static step, default attention: ",
                                                   "| HELM | lm=pythia410m, lm_mode=causal, mem_len=511, beta=100.0, "
                                                   "n_envs=4, precision=bf16 |", "| CNN-PPO | n_envs=2, cuda_graph=True |",
                                                   "cuda_graph=True, hopfield_cache_size=0, n_envs=4, precision=bf16 |",
                                                   "concurrent HELM trials: 2: aggregate", "0 failed"],
    "clip_cache": ["| uniform-random | [0k, 0.064k] |", "| shortest-path |", "| HELMv2 | on |", "| SHELM | off |"],
    "throughput": ["| env only | make_env sync", "| ours (PPOTrainer) | CNN-PPO |", "| ours (PPOTrainer) | Impala-PPO |",
                   "| ours (PPOTrainer) | GRU-PPO |", "| ours (PPOTrainer) | TrXL-PPO",
                   "| HELM, MiniLM (causal, mem 511), precision=bf16 |",
                   *(["| SB3 PPO |", "| sb3-contrib RecurrentPPO |"]
                     if installed("stable_baselines3") and installed("sb3_contrib")
                     else ["smoke: skipped the SB3 and sb3-contrib rows"])],
    "long_episodes": ["| MiniGrid-MemoryS13-v0 | re-encode mem_len // 4 short |", "(before) |"],
    "helm_lm_speed": ["| Transformer-XL wt103 (ours) |", "| Pythia-410m (transformers) |"],
    "reset_modes": ['"step 8 of episode 2"', '"step 1 of episode 1"'],
    "trxl": ["ms per env step",
             *([] if transformers_has_transfo_xl() else ["smoke: skipped the HF TransfoXLModel side"])],
    "minigrid_speed": ["python + atlas", "atlas render only",
                       "envpool + atlas" if installed("envpool") else "skipped the EnvPool row"],
    "vec_env_speed": ["MiniGrid-KeyCorridorS3R1-v0      sync", "MiniGrid-KeyCorridorS3R1-v0      async"],
}
SLOW = {"learning", "eval_speed", "threads"}  # each starts 2-3 more Python processes


def run_smoke(script: str) -> subprocess.CompletedProcess:
    """``python bench/SCRIPT.py --smoke`` in its own process group, so a timeout ends its children too."""
    name, *options = script.split()  # "gpu_check --scale --concurrent": a script and its options
    cmd = [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--smoke", *options]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n(killed after {TIMEOUT_S} s)"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def results_digest() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(RESULTS.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def smoke_runs(request):
    """The selected scripts' smoke runs, started together in the background; and the results' digest before."""
    selected = {item.callspec.params["script"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}
    before = results_digest()
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        futures = {script: pool.submit(run_smoke, script) for script in EXPECTED if script in selected}
        yield futures, before


@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.slow) if s in SLOW else s for s in EXPECTED])
def test_smoke(script: str, smoke_runs: tuple[dict[str, Future], dict[str, str]]) -> None:
    futures, results_before = smoke_runs
    proc = futures[script].result()
    returncode, stdout, output = proc.returncode, proc.stdout, proc.stdout + proc.stderr
    assert returncode == 0, f"bench/{script}.py --smoke exited {returncode}:\n{output[-4000:]}"
    missing = [line for line in EXPECTED[script] if line not in stdout]
    assert not missing, f"bench/{script}.py --smoke did not print {missing}:\n{stdout[-4000:]}"
    assert results_digest() == results_before, "a smoke run changed the committed bench/results/"
