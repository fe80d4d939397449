"""sweep.py --address on a real two-node Ray cluster on this machine.

A head and a worker node, started as the README says (`ray start --head`, `ray start --address`),
each with its own ports and temp dir so that they never meet another Ray running on the machine,
run a sweep of two trials: one trial on each node. Killing the worker node mid-trial fails that
trial alone; after a worker node rejoins, `sweep.py --resume` continues it from its ckpt_last.pt.

Each node (and each sweep driver) runs in a session of its own, which Ray's processes, workers
included, keep: a node is killed, and the cluster torn down, by killing exactly those sessions.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
RAY = Path(sys.executable).with_name("ray")  # the CLI of the Ray that sweep.py imports
if not Path("/proc/self/stat").exists() or not RAY.exists():
    pytest.skip("needs the `ray` command next to python and /proc (Linux)", allow_module_level=True)

from utils.checkpoint import load_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_STEPS = 1024  # 32 updates of 32 steps
CONFIG = {"model": "CNN-PPO", "env": "CueRecall-D1-v0", "n_envs": 2, "n_rollout_steps": 16, "n_batches": 2, "n_epochs": 1,
          "n_steps": N_STEPS}


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def state_and_session(pid: int) -> tuple[str, int] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the name: state ppid pgrp session ...
    return fields[0], int(fields[3])


def in_sessions(sessions: set[int]) -> list[int]:
    """The live processes of these sessions (a Ray worker leaves its process group, never its session)."""
    pids = (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    return [pid for pid in pids if (stat := state_and_session(pid)) and stat[0] != "Z" and stat[1] in sessions]


def kill_sessions(sessions: set[int], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while pids := in_sessions(sessions):
        assert time.monotonic() < deadline, f"processes {pids} outlived SIGKILL"
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


class Cluster:
    """Ray nodes on this machine, each a `ray start --block` in a session of its own, with its own ports and temp dir."""

    def __init__(self):
        # short: Ray's socket paths under it must fit in 107 characters
        self.root = Path(tempfile.mkdtemp(prefix="helm-ray-", dir="/tmp"))
        self.address = ""
        # the cluster's own token, the same for every node and driver (and never ~/.ray/auth_token)
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.nodes: dict[str, subprocess.Popen] = {}  # name -> its `ray start`, whose pid is its session's id
        self.started: list[subprocess.Popen] = []  # every process started here, drivers too

    def popen(self, command: list[str], log: Path, auth: bool = True, **kwargs) -> subprocess.Popen:
        env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH_")}
        env.update(self.auth if auth else {}, RAY_USAGE_STATS_ENABLED="0", RAY_DEDUP_LOGS="0", TRANSFORMERS_VERBOSITY="error")
        with open(log, "w") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, **kwargs)
        self.started.append(proc)
        return proc

    def start_node(self, name: str, head: bool = False) -> str:
        """Start a node; its node id once it has joined."""
        node_manager, object_manager, agent_http, agent_grpc, runtime_env, metrics, gcs, client, dashboard = free_ports(9)
        command = [str(RAY), "start", "--block", "--disable-usage-stats", "--num-cpus=1",
                   "--object-store-memory=100000000", f"--temp-dir={self.root / name}",
                   f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
                   f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
                   f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}"]
        if head:
            self.address = f"127.0.0.1:{gcs}"
            command += ["--head", f"--port={gcs}", f"--ray-client-server-port={client}",
                        "--include-dashboard=false", f"--dashboard-port={dashboard}"]
        else:
            command += [f"--address={self.address}"]
        log = self.root / f"{name}-{len(self.started)}.log"
        node = self.nodes[name] = self.popen(command, log)
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert node.poll() is None and time.monotonic() < deadline, f"{name} did not start:\n{log.read_text()}"
            time.sleep(0.5)
        for pid in in_sessions({node.pid}):
            for arg in cmdline(pid):
                if arg.startswith("--node_id="):  # the raylet's
                    return arg.removeprefix("--node_id=")
        raise AssertionError(f"no raylet found for {name}")

    def kill_node(self, name: str) -> None:
        """The node's machine goes away: SIGKILL to every process it started."""
        kill_sessions({self.nodes[name].pid})

    def sweep(self, *args: str, cwd: Path, log: Path, auth: bool = True) -> subprocess.Popen:
        return self.popen([sys.executable, str(ROOT / "sweep.py"), *args, "--address", self.address], log, auth, cwd=cwd)

    def shutdown(self) -> None:
        try:
            kill_sessions({proc.pid for proc in self.started})
        finally:
            for proc in self.started:
                try:
                    proc.wait(timeout=10)  # reap our own children
                except subprocess.TimeoutExpired:
                    pass
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster():
    cluster = Cluster()
    try:
        yield cluster
    finally:
        cluster.shutdown()


def finish(proc: subprocess.Popen, log: Path, timeout_s: float) -> tuple[int, str]:
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"sweep still running after {timeout_s}s:\n{log.read_text()[-5000:]}")
    return proc.returncode, log.read_text()


def step(run: Path) -> int:
    return load_checkpoint(run / "ckpt_last.pt")["step"]


def segments(run: Path) -> list[dict]:
    return json.loads((run / "runtime.json").read_text())["segments"]


@pytest.mark.slow
def test_sweep_on_a_two_node_cluster_survives_a_lost_node(tmp_path, cluster):
    started = time.monotonic()
    config = tmp_path / "cnn.json"
    config.write_text(json.dumps(CONFIG))
    head = cluster.start_node("head", head=True)
    # a driver without the cluster's token fails in one line that says what is missing (while a worker joins)
    log = tmp_path / "no-token.log"
    no_token = cluster.sweep("--config", str(config), "--seeds", "1", "--experiments-dir", str(tmp_path / "elsewhere"),
                             cwd=tmp_path, log=log, auth=False)
    worker = cluster.start_node("worker")
    code, out = finish(no_token, log, timeout_s=120)
    assert code == 2 and "RAY_AUTH_MODE=token" in out.splitlines()[-1], out[-3000:]
    print(f"cluster up after {time.monotonic() - started:.0f}s")

    exp = tmp_path / "exp"  # the experiments directory that every node shares
    runs = [exp / "CNN-PPO" / "CueRecall-D1-v0" / f"c-seed{seed}" for seed in (1, 2)]
    log = tmp_path / "sweep.log"
    proc = cluster.sweep("--config", str(config), "--seeds", "2", "--name", "c", "--experiments-dir", str(exp),
                         cwd=tmp_path, log=log)
    # two trials of one CPU on two nodes of one CPU: one trial per node. The worker's is killed with its
    # node after its first update, long before its last.
    deadline = time.monotonic() + 180
    lost = None
    while lost is None or not (lost / "ckpt_last.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-5000:]
        lost = next((run for run in runs if (run / "runtime.json").exists() and segments(run)[0]["ray_node"] == worker),
                    None)
        time.sleep(0.2)
    cluster.kill_node("worker")
    print(f"worker node killed after {time.monotonic() - started:.0f}s")
    code, out = finish(proc, log, timeout_s=240)
    print(f"first sweep over after {time.monotonic() - started:.0f}s")
    failed = [line for line in out.splitlines() if line.startswith("failed: ")]
    assert code == 1 and len(failed) == 1 and failed[0].startswith(f"failed: {lost}: "), out[-5000:]
    kept = next(run for run in runs if run != lost)
    assert segments(kept)[0]["ray_node"] == head
    assert step(kept) == N_STEPS and any(kept.glob("events.out.tfevents.*"))
    lost_at = step(lost)
    assert 0 < lost_at < N_STEPS

    # a worker node rejoins; --resume continues the failed trial from its ckpt_last.pt
    rejoined = cluster.start_node("worker")
    log = tmp_path / "resume.log"
    code, out = finish(cluster.sweep("--name", "c", "--resume", "--experiments-dir", str(exp), cwd=tmp_path, log=log),
                       log, timeout_s=240)
    print(f"resumed sweep over after {time.monotonic() - started:.0f}s")
    assert code == 0 and "1 finished before, 1 to run" in out, out[-5000:]
    assert step(lost) == N_STEPS
    first, second = segments(lost)
    assert (first["from_step"], first["ray_node"]) == (0, worker)
    assert second["from_step"] == lost_at and second["ray_node"] in (head, rejoined)
    assert len(segments(kept)) == 1
