"""Training throughput on MiniGrid-KeyCorridorS3R1-v0: our PPOTrainer vs Stable-Baselines3.

Everything runs in one process with the same torch thread count:

* env only: our ``envs.make_env`` sync vector env (gymnasium ``SyncVectorEnv``) stepping random
  actions, and for reference the SB3 env stack the SB3 runs below use (``DummyVecEnv`` of the same
  wrapped env + ``Monitor``, ``VecNormalize``, ``VecTransposeImage``);
* ours: ``PPOTrainer.train()`` with CNN-PPO and Impala-PPO (built by ``models.build_agent``), and
  the other trained memories, GRU-PPO and TrXL-PPO (``--only zoo``, with Impala-PPO);
* SB3 ``PPO`` with the CNN-PPO network: a features extractor that is our ``SmallImpalaCNN(
  channel_scale=4, hidden=1024)`` and heads identical to our ``ActorCritic`` (actor Linear(128)-
  LayerNorm-ReLU-Linear, critic Linear(512)-LayerNorm-ReLU-Linear, CNN shared by both);
* ours, HELM with the offline pretrained MiniLM (run causally, mem_len 511) and with a
  GPT-2-small-sized causal LM (random weights; timing only), with the forward split into
  FrozenHopfield, LM and CNN+heads (``--only helm``);
* ours with ``precision=bf16`` (``--only bf16``): CNN-PPO and HELM with MiniLM, the CNN under
  bfloat16 autocast and the LM in bfloat16 (opt-in; not part of the SB3 comparison);
* sb3-contrib ``RecurrentPPO`` with the Impala-PPO network: ``SmallImpalaCNN(channel_scale=1,
  hidden=256)`` + one LSTM 256 (``shared_lstm=True, enable_critic_lstm=False``) + the same heads.

All use the papers' PPO settings: 16 envs, 128 steps per env per rollout, 3 epochs, 8 minibatches
(SB3 ``batch_size=256``; for RecurrentPPO 256 samples = 2 env sequences of 128 steps, like our
recurrent minibatches), lr 1e-4, ent 0.05, gamma = lambda = 0.99, clip 0.2, vf 0.5, max_grad_norm
0.5, AdamW eps 1e-8, reward normalisation with clip 1, advantage normalisation per minibatch.

Each run does one untimed warm-up update, then ``--updates`` timed updates (2048 env steps each).
The runs are interleaved update by update (round robin, order rotated each round), so that a
machine whose load changes during the benchmark slows all of them alike. Ours: every update is the
trainer's ``collect_rollout()`` + ``update()``, so episodes and agent memory carry over. SB3: every
update is one ``learn(2048, reset_num_timesteps=False)``. "train steps/s" is that of the fastest
timed update (the least disturbed by other processes on the machine, as ``timeit`` takes the
minimum), with the mean over all timed updates in brackets; the split is that of the fastest update.

The time split: env = the raw vector env's ``step`` (ours: ``SyncVectorEnv.step``; SB3:
``DummyVecEnv.step_wait``); forward = the policy's forward passes in the rollout (ours:
``trainer.timers['act']``, which also holds the tensor conversions around ``agent.act`` and the
bootstrap values of truncated episodes; SB3: ``policy.forward`` and ``policy.predict_values``);
update = the PPO epochs (ours: ``trainer.timers['update']``; SB3: ``algo.train()``). The rest
(rollout storage, reward normalisation, GAE, SB3's wrappers and buffer) is ``other_pct`` in the JSON.

    python bench/throughput.py                       # everything: 4 timed updates per run
    python bench/throughput.py --only lstm --updates 2 --json /tmp/lstm.json
    python bench/throughput.py --smoke               # seconds: every row on tiny sizes, writes nothing

``--smoke`` runs every row with 2 envs x 8 steps, 1 epoch x 2 minibatches, one timed update, and a
tiny GPT-2 as the LM of the HELM rows; the SB3 rows are skipped with a note when stable-baselines3
or sb3-contrib is not installed (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench import smoke  # noqa: E402

ENV_ID = "MiniGrid-KeyCorridorS3R1-v0"
N_ENVS = 16
N_ROLLOUT = 128
N_EPOCHS = 3
N_BATCHES = 8
STEPS_PER_UPDATE = N_ENVS * N_ROLLOUT
PPO_KWARGS = dict(  # the papers' settings, in SB3's names
    learning_rate=1e-4, ent_coef=0.05, gamma=0.99, gae_lambda=0.99, clip_range=0.2, vf_coef=0.5,
    max_grad_norm=0.5, n_steps=N_ROLLOUT, n_epochs=N_EPOCHS, batch_size=STEPS_PER_UPDATE // N_BATCHES,
    normalize_advantage=True,
)
GROUPS = ("env", "cnn", "lstm", "ours", "sb3", "helm", "bf16", "zoo")
SMOKE_LM: str | None = None  # --smoke: the tiny LM that replaces MiniLM and the GPT-2-small-sized LM


def set_sizes(n_envs: int, n_rollout: int, n_epochs: int, n_batches: int) -> None:
    """Change the run sizes (for --smoke); every runner reads these module globals when it is built."""
    global N_ENVS, N_ROLLOUT, N_EPOCHS, N_BATCHES, STEPS_PER_UPDATE
    N_ENVS, N_ROLLOUT, N_EPOCHS, N_BATCHES = n_envs, n_rollout, n_epochs, n_batches
    STEPS_PER_UPDATE = n_envs * n_rollout
    PPO_KWARGS.update(n_steps=n_rollout, n_epochs=n_epochs, batch_size=STEPS_PER_UPDATE // n_batches)


def helm_lm(lm: str) -> dict:
    """The LM overrides of a HELM row: ``lm`` with mem_len 511, or with --smoke the tiny LM."""
    if SMOKE_LM is not None:
        return {"lm": SMOKE_LM, "lm_mode": "causal", "mem_len": smoke.MEM_LEN}
    return {"lm": lm, "lm_mode": "causal", "mem_len": 511}


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Runner:
    """One benchmark row: ``warm_up()`` once, then ``run()`` one timed unit at a time.

    ``run`` appends to ``units`` one dict per timed unit: steps, wall seconds and the env / forward /
    update seconds within it. The row reports the fastest unit (the least disturbed by other load
    on the machine, as ``timeit`` does) and, in the JSON, the mean over all units.
    """

    implementation = model = ""
    training = True

    def __init__(self) -> None:
        self.units: list[dict[str, float]] = []

    def warm_up(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def result(self) -> dict:
        best = min(self.units, key=lambda u: u["seconds"] / u["steps"])
        seconds = best["seconds"]
        out = {"implementation": self.implementation, "model": self.model,
               "steps_per_s": best["steps"] / seconds, "env_pct": 100.0 * best["env"] / seconds,
               "forward_pct": None, "update_pct": None, "other_pct": None}
        if self.training:
            out.update({k + "_pct": 100.0 * best[k] / seconds for k in ("forward", "update")})
            out["other_pct"] = 100.0 * (seconds - best["env"] - best["forward"] - best["update"]) / seconds
        out["mean_steps_per_s"] = sum(u["steps"] for u in self.units) / sum(u["seconds"] for u in self.units)
        out["units"] = self.units
        return out


# -- env only ----------------------------------------------------------------------------------
class EnvRunner(Runner):
    """Random actions on a vector env; ``run()`` = ``vector_steps`` steps of all envs."""

    training = False

    def __init__(self, vector_steps: int, sb3: bool):
        super().__init__()
        self.vector_steps, self.sb3 = vector_steps, sb3
        self.rng = np.random.default_rng(0)
        self.env_time = {"env": 0.0}
        if sb3:
            from stable_baselines3.common.vec_env import VecTransposeImage

            self.implementation = "env only"
            self.model = "SB3 DummyVecEnv+Monitor+VecNormalize+VecTransposeImage, random actions"
            self.envs = VecTransposeImage(make_sb3_env(self.env_time))  # as SB3 wraps image envs
            self.n_actions = int(self.envs.action_space.n)
        else:
            from envs import make_env

            self.implementation = "env only"
            self.model = "make_env sync (gymnasium SyncVectorEnv), random actions"
            self.envs = make_env(ENV_ID, N_ENVS, "sync")
            self.n_actions = int(self.envs.single_action_space.n)

    def _steps(self, n: int) -> None:
        for _ in range(n):
            self.envs.step(self.rng.integers(0, self.n_actions, N_ENVS))

    def warm_up(self) -> None:
        if self.sb3:
            self.envs.seed(0)
            self.envs.reset()
        else:
            self.envs.reset(seed=0)
        self._steps(8)

    def run(self) -> None:
        self.env_time["env"] = 0.0
        tick = time.perf_counter()
        self._steps(self.vector_steps)
        seconds = time.perf_counter() - tick
        # SB3: the DummyVecEnv alone (the wrappers are the rest); ours: all of it
        env = self.env_time["env"] if self.sb3 else seconds
        self.units.append({"steps": self.vector_steps * N_ENVS, "seconds": seconds, "env": env,
                           "forward": 0.0, "update": 0.0})

    def close(self) -> None:
        self.envs.close()


def make_sb3_env(timed: dict | None = None):
    """DummyVecEnv of our wrapped MiniGrid env (+ Monitor) under VecNormalize, as SB3 users run it.

    With ``timed``, the DummyVecEnv's ``step_wait`` adds its time to ``timed['env']``.
    """
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from envs.minigrid import make_single

    venv = DummyVecEnv([lambda: Monitor(make_single(ENV_ID))] * N_ENVS)
    if timed is not None:
        step_wait = venv.step_wait

        def timed_step_wait():
            tick = time.perf_counter()
            out = step_wait()
            timed["env"] += time.perf_counter() - tick
            return out

        venv.step_wait = timed_step_wait
    return VecNormalize(venv, norm_obs=False, norm_reward=True, clip_reward=1.0, gamma=PPO_KWARGS["gamma"])


# -- ours ----------------------------------------------------------------------------------------
class OursRunner(Runner):
    """Our trainer, driven one rollout + update at a time (memory and episodes carry over).

    For the HELM family the agent's forward is split further by timing wrappers: ``hopfield`` =
    the observation -> memory-input map (FrozenHopfield), ``lm`` = the frozen LM's steps (and
    peeks for bootstrap values); the rest of the forward is the CNN and the heads.
    """

    implementation = "ours (PPOTrainer)"

    def __init__(self, model: str, seed: int, label: str | None = None, **overrides):
        super().__init__()
        from trainers.run import build_trainer
        from utils.config import defaults, validate

        self.model = label or model
        cfg = defaults()
        cfg.update(
            env=ENV_ID, model=model, seed=seed, device="cpu", save_ckpt=False, n_envs=N_ENVS, vec_env="sync",
            n_rollout_steps=N_ROLLOUT, n_epochs=N_EPOCHS, n_batches=N_BATCHES, learning_rate=1e-4,
            lr_decay="none", ent_coef=0.05, ent_decay="none", clip_range=0.2, clip_decay="none",
            clip_range_vf=None, gamma=0.99, gae_lambda=0.99, vf_coef=0.5, max_grad_norm=0.5, adv_norm=True,
            optimizer="AdamW", epsilon=1e-8, norm_reward=True, clip_reward=1.0, n_steps=10**9,
        )
        cfg.update(overrides)
        validate(cfg)
        self.cfg = cfg
        self.trainer = build_trainer(cfg, run_dir=None)
        self.envs, agent = self.trainer.envs, self.trainer.agent
        self.trainer.begin()
        self.sub = {"hopfield": 0.0, "lm": 0.0}
        if hasattr(agent, "vocabulary"):  # the frozen-LM agents: time their encoder and their LM apart
            agent.encode = self._timed(agent.encode, "hopfield")
            agent.memory.step = self._timed(agent.memory.step, "lm")
            agent.memory.peek = self._timed(agent.memory.peek, "lm")

    def _timed(self, fn, key):
        def wrapper(*args, **kwargs):
            tick = time.perf_counter()
            out = fn(*args, **kwargs)
            self.sub[key] += time.perf_counter() - tick
            return out

        return wrapper

    def _update(self) -> None:
        trainer = self.trainer
        trainer.collect_rollout()
        tick = time.perf_counter()
        trainer.update()
        trainer.timers["update"] += time.perf_counter() - tick

    def warm_up(self) -> None:
        self._update()

    def run(self) -> None:
        trainer = self.trainer
        timers, sub, step = dict(trainer.timers), dict(self.sub), trainer.step
        tick = time.perf_counter()
        self._update()
        unit = {"steps": trainer.step - step, "seconds": time.perf_counter() - tick}
        for ours, key in (("env", "env"), ("act", "forward"), ("update", "update")):
            unit[key] = trainer.timers[ours] - timers[ours]
        for key in self.sub:
            unit[key] = self.sub[key] - sub[key]
        self.units.append(unit)

    def result(self) -> dict:
        out = super().result()
        best = min(self.units, key=lambda u: u["seconds"] / u["steps"])
        if best["lm"] > 0:
            out["hopfield_pct"] = 100.0 * best["hopfield"] / best["seconds"]
            out["lm_pct"] = 100.0 * best["lm"] / best["seconds"]
            out["cnn_heads_pct"] = out["forward_pct"] - out["hopfield_pct"] - out["lm_pct"]
        return out

    def close(self) -> None:
        self.envs.close()


def gpt2_small_dir() -> str:
    """A GPT-2-small-sized causal LM (124M parameters, 12 x 768) with random weights, saved once."""
    from transformers import GPT2Config, GPT2Model

    path = Path(tempfile.gettempdir()) / "helm-bench-gpt2-small"
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        GPT2Model(GPT2Config()).save_pretrained(path)
    return str(path)


# -- SB3 -----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def sb3_classes():
    """The SB3 policy pieces (defined lazily so that the file imports without SB3)."""
    from gymnasium import spaces
    from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    from models.networks import SmallImpalaCNN

    class ImpalaExtractor(BaseFeaturesExtractor):
        """Our SmallImpalaCNN on SB3's channel-first observations (SB3 already divides by 255)."""

        def __init__(self, observation_space: spaces.Box, channel_scale: int = 1, hidden: int = 256):
            super().__init__(observation_space, hidden)
            channels, height, width = observation_space.shape
            cnn = SmallImpalaCNN((height, width, channels), channel_scale=channel_scale, hidden=hidden)
            self.convs, self.fc = cnn.convs, cnn.fc

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.fc(self.convs(obs))

    def hidden_layer(in_dim: int, width: int) -> nn.Sequential:
        # SB3 appends the output Linear (action_net / value_net): Linear-LayerNorm-ReLU-Linear in all
        return nn.Sequential(nn.Linear(in_dim, width), nn.LayerNorm(width, elementwise_affine=False), nn.ReLU())

    class Heads(nn.Module):
        """In place of SB3's MlpExtractor: the hidden layers of our ActorCritic heads."""

        def __init__(self, in_dim: int):
            super().__init__()
            self.policy_net, self.value_net = hidden_layer(in_dim, 128), hidden_layer(in_dim, 512)
            self.latent_dim_pi, self.latent_dim_vf = 128, 512

        def forward(self, features: torch.Tensor):
            return self.forward_actor(features), self.forward_critic(features)

        def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
            return self.policy_net(features)

        def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
            return self.value_net(features)

    class HeadsPolicy(ActorCriticPolicy):
        def _build_mlp_extractor(self) -> None:
            self.mlp_extractor = Heads(self.features_dim)

    class RecurrentHeadsPolicy(RecurrentActorCriticPolicy):
        def _build_mlp_extractor(self) -> None:
            self.mlp_extractor = Heads(self.lstm_output_dim)

    return ImpalaExtractor, HeadsPolicy, RecurrentHeadsPolicy


class SB3Runner(Runner):
    def __init__(self, recurrent: bool, seed: int):
        super().__init__()
        ImpalaExtractor, HeadsPolicy, RecurrentHeadsPolicy = sb3_classes()
        seed_everything(seed)
        self.timed = {"env": 0.0, "forward": 0.0, "update": 0.0}
        policy_kwargs = dict(
            features_extractor_class=ImpalaExtractor, share_features_extractor=True,
            optimizer_class=torch.optim.AdamW, optimizer_kwargs=dict(eps=1e-8),
        )
        if recurrent:
            from sb3_contrib import RecurrentPPO

            self.implementation = "sb3-contrib RecurrentPPO"
            self.model = "Impala-PPO net (SmallImpalaCNN x1/256 + LSTM 256 + our heads)"
            policy_kwargs.update(features_extractor_kwargs=dict(channel_scale=1, hidden=256), lstm_hidden_size=256,
                                 n_lstm_layers=1, shared_lstm=True, enable_critic_lstm=False)
            algo_cls, policy = RecurrentPPO, RecurrentHeadsPolicy
        else:
            from stable_baselines3 import PPO

            self.implementation = "SB3 PPO"
            self.model = "CNN-PPO net (SmallImpalaCNN x4/1024 + our heads)"
            policy_kwargs.update(features_extractor_kwargs=dict(channel_scale=4, hidden=1024))
            algo_cls, policy = PPO, HeadsPolicy
        self.algo = algo_cls(policy, make_sb3_env(self.timed), **PPO_KWARGS, seed=seed, device="cpu", verbose=0,
                             policy_kwargs=policy_kwargs)
        self._instrument()

    def _instrument(self) -> None:
        timed, policy = self.timed, self.algo.policy
        for name in ("forward", "predict_values"):  # rollout only: the update calls evaluate_actions
            original = getattr(policy, name)

            def wrapped(*args, _original=original, **kwargs):
                tick = time.perf_counter()
                out = _original(*args, **kwargs)
                timed["forward"] += time.perf_counter() - tick
                return out

            setattr(policy, name, wrapped)
        train = self.algo.train

        def timed_train():
            tick = time.perf_counter()
            train()
            timed["update"] += time.perf_counter() - tick

        self.algo.train = timed_train

    def warm_up(self) -> None:
        self.algo.learn(total_timesteps=STEPS_PER_UPDATE)

    def run(self) -> None:
        for key in self.timed:
            self.timed[key] = 0.0
        step = self.algo.num_timesteps
        tick = time.perf_counter()
        self.algo.learn(total_timesteps=STEPS_PER_UPDATE, reset_num_timesteps=False)
        self.units.append({"steps": self.algo.num_timesteps - step, "seconds": time.perf_counter() - tick,
                           **self.timed})

    def close(self) -> None:
        self.algo.get_env().close()


# -- main ----------------------------------------------------------------------------------------
def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def helm_table(rows: list[dict]) -> str:
    lines = ["| model | train steps/s | env % | FrozenHopfield % | LM % | CNN+heads % | update % |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "lm_pct" in r:
            lines.append(f"| {r['model']} | {r['steps_per_s']:.0f} | {fmt(r['env_pct'])} | {fmt(r['hopfield_pct'])} | "
                         f"{fmt(r['lm_pct'])} | {fmt(r['cnn_heads_pct'])} | {fmt(r['update_pct'])} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = ["| implementation | model | train steps/s | env % | forward % | update % |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['implementation']} | {r['model']} | {r['steps_per_s']:.0f} ({r['mean_steps_per_s']:.0f}) | "
                     f"{fmt(r['env_pct'])} | "
                     f"{fmt(r['forward_pct'])} | {fmt(r['update_pct'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=4, help="timed PPO updates per training run "
                        f"({STEPS_PER_UPDATE} env steps each), after one untimed warm-up update (default 4)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(GROUPS)} (cnn: our "
                        "CNN-PPO and SB3 PPO; lstm: our Impala-PPO and RecurrentPPO; zoo: the trained memories "
                        "LSTM, GRU, TrXL; ours; sb3: the SB3 rows)")
    parser.add_argument("--env-steps", type=int, default=64,
                        help="vector steps (x16 env steps) per round for the env-only rows (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows and the setup to this JSON file")
    parser.add_argument("--smoke", action="store_true",
                        help="every row on tiny sizes with a tiny LM, seconds: checks that this script still runs")
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(updates=1, env_steps=4, threads=1)
        args = parser.parse_args(argv)
    if args.updates < 1:
        parser.error("--updates must be >= 1")
    only = {g.strip() for g in args.only.split(",") if g.strip()}
    if only - set(GROUPS):
        parser.error(f"--only: unknown {', '.join(sorted(only - set(GROUPS)))}; choose from {', '.join(GROUPS)}")

    torch.set_num_threads(args.threads)
    sb3_installed = smoke.installed("stable_baselines3") and smoke.installed("sb3_contrib")
    tmp = None
    if args.smoke:
        global SMOKE_LM
        tmp = tempfile.TemporaryDirectory(prefix="throughput-smoke-")
        SMOKE_LM = smoke.tiny_lm(Path(tmp.name) / "lm")
        tiny = smoke.TINY_TRAINER
        set_sizes(tiny["n_envs"], tiny["n_rollout_steps"], tiny["n_epochs"], tiny["n_batches"])
        smoke.note("tiny sizes and a tiny LM under the usual row names: the numbers mean nothing")
    skip_sb3 = args.smoke and not sb3_installed
    benches = [  # (groups, factory); the table keeps this order
        ({"env"}, lambda: EnvRunner(args.env_steps, sb3=False)),
        ({"env", "sb3"}, lambda: EnvRunner(args.env_steps, sb3=True)),
        ({"cnn", "ours"}, lambda: OursRunner("CNN-PPO", args.seed)),
        ({"lstm", "ours", "zoo"}, lambda: OursRunner("Impala-PPO", args.seed)),
        ({"ours", "zoo"}, lambda: OursRunner("GRU-PPO", args.seed)),
        ({"ours", "zoo"}, lambda: OursRunner("TrXL-PPO", args.seed, "TrXL-PPO (GTrXL 2 x 128, mem 64)")),
        ({"helm", "ours"}, lambda: OursRunner("HELM", args.seed, "HELM, MiniLM (causal, mem 511)",
                                              **helm_lm("minilm"))),
        ({"helm", "ours"}, lambda: OursRunner("HELM", args.seed, "HELM, GPT-2-small-sized (random, mem 511)",
                                              **helm_lm(SMOKE_LM or gpt2_small_dir()))),
        ({"bf16"}, lambda: OursRunner("CNN-PPO", args.seed, "CNN-PPO, precision=bf16", precision="bf16")),
        ({"bf16"}, lambda: OursRunner("HELM", args.seed, "HELM, MiniLM (causal, mem 511), precision=bf16",
                                      **helm_lm("minilm"), precision="bf16")),
        ({"cnn", "sb3"}, lambda: SB3Runner(recurrent=False, seed=args.seed)),
        ({"lstm", "sb3"}, lambda: SB3Runner(recurrent=True, seed=args.seed)),
    ]
    start = time.perf_counter()
    load_before = os.getloadavg()
    selected = [(groups, factory) for groups, factory in benches if not only or groups & only]
    if skip_sb3 and any("sb3" in groups for groups, _ in selected):
        smoke.note("skipped the SB3 and sb3-contrib rows (not installed: pip install -e .[bench])")
        selected = [(groups, factory) for groups, factory in selected if "sb3" not in groups]
    runners = [factory() for _, factory in selected]

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    for runner in runners:
        tick = time.perf_counter()
        runner.warm_up()
        log(f"warm-up {runner.implementation} / {runner.model}: {time.perf_counter() - tick:.1f} s")
    for round_ in range(args.updates):
        shift = round_ % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            tick = time.perf_counter()
            runner.run()
            log(f"round {round_ + 1}/{args.updates} {runner.implementation} / {runner.model}: "
                f"{time.perf_counter() - tick:.1f} s (load {os.getloadavg()[0]:.1f})")
    rows = [runner.result() for runner in runners]
    for runner in runners:
        runner.close()
    total = time.perf_counter() - start
    load_after = os.getloadavg()

    print(table(rows))
    if any("lm_pct" in r for r in rows):
        print("\n" + helm_table(rows))
    print(f"\n{ENV_ID}, {N_ENVS} envs x {N_ROLLOUT} steps, {N_EPOCHS} epochs x {N_BATCHES} minibatches; "
          f"{args.updates} timed updates per run after 1 warm-up, interleaved; steps/s of the fastest (mean); torch {torch.__version__}, "
          f"{args.threads} threads, {os.cpu_count()} CPUs; load average {load_before[0]:.1f} -> "
          f"{load_after[0]:.1f}; {total:.0f} s in all")
    if tmp is not None:
        tmp.cleanup()
    if args.json:
        versions = {}
        for package in ("stable_baselines3", "sb3_contrib"):
            if smoke.installed(package):
                versions[package] = __import__(package).__version__
        setup = {
            "env": ENV_ID, "n_envs": N_ENVS, "n_rollout_steps": N_ROLLOUT, "n_epochs": N_EPOCHS,
            "n_batches": N_BATCHES, "ppo": PPO_KWARGS, "optimizer": "AdamW(eps=1e-8)", "updates_timed": args.updates,
            "warmup_updates": 1, "env_vector_steps_per_round": args.env_steps, "threads": args.threads,
            "torch": torch.__version__, **versions, "smoke": args.smoke, "cpu_count": os.cpu_count(), "machine": platform.platform(),
            "load_average_before": load_before, "load_average_after": load_after,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "total_s": total,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"setup": setup, "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
