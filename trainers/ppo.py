"""PPO with clipped surrogate, GAE and the papers' schedules: one trainer for every agent.

The trainer knows nothing about any particular agent: it drives the ``models.base.Agent``
interface, stores whatever per-step ``features`` the agent returns, and hands them back in the
update. Recurrent agents get whole per-env sequences as minibatch units.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import deque
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from envs import success
from models.base import ActOutput, Agent
from models.memory import detached
from trainers.gae import compute_gae
from trainers.normalize import RewardNormalizer
from trainers.schedules import decayed
from utils.checkpoint import rng_state, save_checkpoint, set_rng_state

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
TEXT_EVERY_UPDATES = 10  # how often the agent's step_text() goes to TensorBoard


class NonFiniteLossError(RuntimeError):
    """The loss, the weights or the policy's logits stopped being finite (e.g. a too large learning rate)."""


def ppo_losses(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    clip_range: float,
    clip_range_vf: float | None,
) -> dict[str, torch.Tensor]:
    """The three PPO loss terms and the diagnostics that come with them."""
    log_ratio = log_probs - old_log_probs
    ratio = log_ratio.exp()
    surrogate = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    if clip_range_vf is not None:
        values = old_values + (values - old_values).clamp(-clip_range_vf, clip_range_vf)
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_fraction = ((ratio - 1).abs() > clip_range).float().mean()
    return {
        "policy_loss": surrogate.mean(),
        "value_loss": (returns - values).pow(2).mean(),
        "entropy_loss": -entropy.mean(),
        "approx_kl": approx_kl,
        "clip_fraction": clip_fraction,
    }


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - pred).var() / var)


class Rollout:
    """Fixed-size storage for one rollout of ``steps`` x ``n_envs`` transitions."""

    def __init__(self, steps: int, n_envs: int, obs_shape: tuple[int, ...], device: torch.device,
                 obs_dtype: torch.dtype = torch.uint8):
        def zeros(*shape, dtype=torch.float32):
            return torch.zeros(steps, n_envs, *shape, dtype=dtype, device=device)

        self.steps, self.n_envs, self.device = steps, n_envs, device
        self.obs = zeros(*obs_shape, dtype=obs_dtype)  # uint8 frames, or float32 vectors (POPGym)
        self.actions = zeros(dtype=torch.long)
        self.log_probs, self.values, self.rewards = zeros(), zeros(), zeros()
        self.dones = zeros(dtype=torch.bool)
        self.episode_starts = zeros(dtype=torch.bool)
        self.features: dict[str, torch.Tensor] = {}
        self.state: dict[str, torch.Tensor] = {}
        self.advantages = self.returns = None

    def add_outcome(self, t: int, rewards, dones) -> None:
        """What the envs answered to step ``t``."""
        self.rewards[t], self.dones[t] = rewards, dones

    def add_inputs(self, t: int, obs, episode_start, out) -> None:
        """What the agent saw and did at step ``t``: known before the envs answer."""
        self.obs[t], self.episode_starts[t] = obs, episode_start
        self.actions[t], self.log_probs[t], self.values[t] = out.actions, out.log_probs, out.values
        for name, value in out.features.items():
            if name not in self.features:
                self.features[name] = torch.zeros(
                    self.steps, *value.shape, dtype=value.dtype, device=self.device
                )
            self.features[name][t] = value

    def minibatches(self, n_batches: int, recurrent: bool, generator: torch.Generator):
        """Flat random minibatches, or for recurrent agents whole env sequences [T, b, ...]."""
        fields = {
            "obs": self.obs, "actions": self.actions, "log_probs": self.log_probs,
            "values": self.values, "advantages": self.advantages, "returns": self.returns,
            "episode_starts": self.episode_starts, **self.features,
        }
        if recurrent:
            order = torch.randperm(self.n_envs, generator=generator).to(self.device)
            for idx in order.chunk(min(n_batches, self.n_envs)):
                batch = {k: v[:, idx] for k, v in fields.items()}
                batch["state"] = {k: v[idx] for k, v in self.state.items()}
                yield batch
        else:
            total = self.steps * self.n_envs
            flat = {k: v.reshape(total, *v.shape[2:]) for k, v in fields.items()}
            order = torch.randperm(total, generator=generator).to(self.device)
            for idx in order.chunk(n_batches):
                yield {k: v[idx] for k, v in flat.items()}


class EpisodeStats:
    """Raw (unnormalised) returns, lengths and successes of the last 100 finished episodes."""

    def __init__(self, n_envs: int):
        self.returns, self.lengths = np.zeros(n_envs), np.zeros(n_envs, dtype=int)
        self.recent_returns: deque[float] = deque(maxlen=100)
        self.recent_lengths: deque[int] = deque(maxlen=100)
        self.recent_successes: deque[bool] = deque(maxlen=100)
        self.episodes = 0

    def update(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        self.returns += rewards
        self.lengths += 1
        for i in np.flatnonzero(dones):
            self.recent_returns.append(float(self.returns[i]))
            self.recent_lengths.append(int(self.lengths[i]))
            self.recent_successes.append(success(float(rewards[i])))
            self.episodes += 1
        self.returns[dones], self.lengths[dones] = 0.0, 0

    def summary(self) -> dict[str, float]:
        if not self.recent_returns:
            return {}
        returns = np.array(self.recent_returns)
        return {
            "rollout/ep_rew_mean": float(returns.mean()),
            "rollout/ep_len_mean": float(np.mean(self.recent_lengths)),
            "rollout/success_rate": float(np.mean(self.recent_successes)),
            "rollout/episodes_in_mean": float(len(returns)),  # < 100 early on: the means are noisier
        }

    def state_dict(self) -> dict:
        return {"recent_returns": list(self.recent_returns), "recent_lengths": list(self.recent_lengths),
                "recent_successes": list(self.recent_successes), "episodes": self.episodes}

    def load_state_dict(self, state: dict) -> None:
        self.recent_returns.extend(state["recent_returns"])
        self.recent_lengths.extend(state["recent_lengths"])
        # checkpoints from before successes were stored: MiniGrid's return > 0 is the same thing
        self.recent_successes.extend(state.get("recent_successes", [r > 0 for r in state["recent_returns"]]))
        self.episodes = state["episodes"]


class PPOTrainer:
    def __init__(
        self,
        cfg: dict[str, Any],
        agent: Agent,
        envs,
        device: torch.device,
        run_dir: Path | None = None,
        writer=None,
        progress: bool = True,
    ):
        self.cfg, self.agent, self.envs, self.device = cfg, agent, envs, device
        self.run_dir, self.writer, self.progress = run_dir, writer, progress
        self.n_envs = envs.num_envs
        self.obs_shape = envs.single_observation_space.shape
        self.params = params = [p for p in agent.parameters() if p.requires_grad]
        optim_cls = torch.optim.AdamW if cfg["optimizer"] == "AdamW" else torch.optim.Adam
        try:  # the fused kernel is several times faster per step, on CPU as on GPU
            self.optimizer = optim_cls(params, lr=cfg["learning_rate"], eps=cfg["epsilon"], fused=True)
        except (RuntimeError, TypeError):
            self.optimizer = optim_cls(params, lr=cfg["learning_rate"], eps=cfg["epsilon"])
        self.normalizer = RewardNormalizer(self.n_envs, cfg["gamma"], cfg["clip_reward"], cfg["norm_reward"])
        self.stats = EpisodeStats(self.n_envs)
        obs_dtype = torch.uint8 if envs.single_observation_space.dtype == np.uint8 else torch.float32
        self.rollout = Rollout(cfg["n_rollout_steps"], self.n_envs, self.obs_shape, device, obs_dtype)
        self.generator = torch.Generator().manual_seed(cfg["seed"])
        self.step = 0
        self.n_updates = 0
        self.best_mean_return = -float("inf")
        self.timers = {"env": 0.0, "act": 0.0, "update": 0.0}
        self.last_losses: dict[str, float] = {}
        self.stop_requested = False
        self.stop_signal: int | None = None  # the first signal that asked to stop
        self._last_ckpt_time = time.monotonic()
        # ckpt_last.pt is refreshed so that a hard kill (SIGKILL, power loss) loses at most this many
        # seconds or one update, whichever is more; also written at the end and on Ctrl-C / SIGTERM
        self.last_ckpt_every_s: float = cfg["ckpt_last_every_s"]
        self.captured = None  # the CUDA-graph step (cuda_graph=true), made by `begin`
        self._pinned: dict[tuple, torch.Tensor] = {}  # page-locked staging buffers for host -> GPU copies

    # -- schedules ---------------------------------------------------------------------------
    def progress_fraction(self) -> float:
        return self.step / self.cfg["n_steps"]

    def current(self, name: str) -> float:
        cfg, p = self.cfg, self.progress_fraction()
        if name == "learning_rate":
            return decayed(cfg["learning_rate"], cfg["min_lr"], cfg["lr_decay"], p)
        if name == "ent_coef":
            return decayed(cfg["ent_coef"], cfg["min_ent_coef"], cfg["ent_decay"], p)
        return decayed(cfg["clip_range"], cfg["min_clip_range"], cfg["clip_decay"], p)

    # -- rollout -----------------------------------------------------------------------------
    def _to_tensor(self, array: np.ndarray) -> torch.Tensor:
        if self.device.type != "cuda":
            return torch.as_tensor(array, device=self.device)
        # via page-locked memory, so the copy neither stages through a bounce buffer nor blocks
        # the host; every step fetches its actions before the next write, so one buffer per kind is enough
        key = (array.shape, array.dtype.str)
        host = self._pinned.get(key)
        if host is None:
            host = self._pinned[key] = torch.from_numpy(np.empty_like(array)).pin_memory()
        np.copyto(host.numpy(), array)
        return host.to(self.device, non_blocking=True)

    def _act(self, obs: torch.Tensor, starts: torch.Tensor) -> tuple[ActOutput, np.ndarray]:
        """The rollout's forward for one step (a replayed CUDA graph with cuda_graph=true); the actions on the host."""
        if self.captured is not None:
            out = self.captured(obs, starts)
            actions = out.actions.cpu().numpy()  # the step's one device-host sync
            if (actions < 0).any():  # sample_without_syncs marks rows whose logits were not finite
                raise NonFiniteLossError(f"non-finite policy logits at step {self.step}")
            return out, actions
        with torch.no_grad(), self._non_finite_guard("policy logits"):
            out, self.memory_state = self.agent.act(obs, self.memory_state, starts)
        return out, out.actions.cpu().numpy()

    def _step_envs(self, actions: np.ndarray, meanwhile: Callable[[], None]):
        """Step the envs, running `meanwhile` (work that needs nothing from them) while they step.

        Envs that step off this thread (EnvPool's, gymnasium's AsyncVectorEnv) overlap with it;
        the others run it first. Either way the same operations run in the same order on the same
        data, so a run is identical with and without the overlap.
        """
        if not hasattr(self.envs, "step_async"):
            meanwhile()
            return self.envs.step(actions)
        self.envs.step_async(actions)
        meanwhile()
        return self.envs.step_wait()

    def collect_rollout(self) -> None:
        agent, rollout, gamma = self.agent, self.rollout, self.cfg["gamma"]
        # a trained memory is re-run in the update from the state the rollout starts from
        rollout.state = detached(self.memory_state) if agent.recurrent else {}
        # what an interrupted rollout must give back: its steps are not trained on, so not counted
        self._rollout_start = (self.step, self.stats.state_dict(), self.normalizer.state_dict())
        for t in range(rollout.steps):
            tick = time.perf_counter()
            obs = self._to_tensor(self.obs)
            starts = self._to_tensor(self.episode_start)
            out, actions = self._act(obs, starts)
            self.timers["act"] += time.perf_counter() - tick

            tick = time.perf_counter()
            next_obs, rewards, terminated, truncated, info = self._step_envs(
                actions, lambda: rollout.add_inputs(t, obs, starts, out))
            self.timers["env"] += time.perf_counter() - tick

            dones = terminated | truncated
            self.stats.update(rewards, dones)
            scaled = self.normalizer(rewards, dones)
            bootstrap = truncated & ~terminated
            if bootstrap.any():  # a time limit is not a termination: bootstrap from V(final obs)
                tick = time.perf_counter()
                final = next_obs.copy()
                for i in np.flatnonzero(bootstrap):
                    final[i] = info["final_obs"][i]
                with torch.no_grad():
                    final_values = agent.peek_values(
                        self._to_tensor(final), self.memory_state,
                        torch.zeros(self.n_envs, dtype=torch.bool, device=self.device),
                    ).cpu().numpy()
                scaled[bootstrap] += gamma * final_values[bootstrap]
                self.timers["act"] += time.perf_counter() - tick
            rollout.add_outcome(t, self._to_tensor(scaled), self._to_tensor(dones))
            self.obs, self.episode_start = next_obs, dones
            self.step += self.n_envs
            if self.stop_requested:
                return self._discard_partial_rollout()
        with torch.no_grad():
            last_values = agent.peek_values(self._to_tensor(self.obs), self.memory_state,
                                            self._to_tensor(self.episode_start))
        rollout.advantages, rollout.returns = compute_gae(
            rollout.rewards, rollout.values, rollout.dones, last_values, gamma, self.cfg["gae_lambda"]
        )

    @contextlib.contextmanager
    def _non_finite_guard(self, what: str):
        """torch.distributions refuses NaN logits with a long ValueError: make it our one-line error."""
        try:
            yield
        except ValueError as err:
            if "invalid values" not in str(err):
                raise
            raise NonFiniteLossError(f"non-finite {what} at step {self.step}") from None

    def _discard_partial_rollout(self) -> None:
        """Forget an interrupted rollout: a resumed run then redoes it from a fresh env reset."""
        self.step, stats, normalizer = self._rollout_start
        self.stats = EpisodeStats(self.n_envs)
        self.stats.load_state_dict(stats)
        self.normalizer.load_state_dict(normalizer)

    # -- update ------------------------------------------------------------------------------
    def update(self) -> dict[str, float]:
        cfg, agent = self.cfg, self.agent
        lr, ent_coef, clip_range = (self.current(k) for k in ("learning_rate", "ent_coef", "clip_range"))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sums: dict[str, list[float]] = {}
        agent.train()
        for _ in range(cfg["n_epochs"]):
            for batch in self.rollout.minibatches(cfg["n_batches"], agent.recurrent, self.generator):
                with self._non_finite_guard("weights during the update"):
                    log_probs, entropy, values = agent.evaluate(batch)
                flat = {k: batch[k].reshape(-1) for k in ("log_probs", "values", "returns", "advantages")}
                advantages = flat["advantages"]
                if cfg["adv_norm"] and advantages.numel() > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                losses = ppo_losses(
                    log_probs, flat["log_probs"], advantages, values, flat["values"], flat["returns"],
                    entropy, clip_range, cfg["clip_range_vf"],
                )
                loss = losses["policy_loss"] + ent_coef * losses["entropy_loss"] + cfg["vf_coef"] * losses["value_loss"]
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(f"non-finite loss ({loss.item()}) at step {self.step}")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.params, cfg["max_grad_norm"])
                self.optimizer.step()
                for name, value in losses.items():
                    sums.setdefault(name, []).append(value.item())
                sums.setdefault("loss", []).append(loss.item())
        agent.eval()
        if not all(bool(torch.isfinite(p).all()) for p in self.params):
            raise NonFiniteLossError(f"non-finite weights after the update at step {self.step}")
        self.n_updates += 1
        logs = {f"train/{k}": float(np.mean(v)) for k, v in sums.items()}
        logs["train/entropy"] = -logs.pop("train/entropy_loss")
        logs["train/explained_variance"] = explained_variance(self.rollout.values.flatten(), self.rollout.returns.flatten())
        logs.update({"train/learning_rate": lr, "train/ent_coef": ent_coef, "train/clip_range": clip_range,
                     "train/n_updates": self.n_updates})
        return logs

    # -- main loop ---------------------------------------------------------------------------
    def begin(self) -> None:
        """Reset the envs (seeded by seed + step) and the agent's memory: what `train` does first.

        Code that drives `collect_rollout()` / `update()` itself (the benchmarks) calls it too.
        """
        self.obs, _ = self.envs.reset(seed=self.cfg["seed"] + self.step)
        self.episode_start = np.ones(self.n_envs, dtype=bool)
        self.memory_state = self.agent.initial_state(self.n_envs)  # the trainer owns the memory's state
        self.captured = None
        if self.cfg.get("cuda_graph"):
            from trainers.captured_step import CapturedStep

            self.captured = CapturedStep(self.agent, self.n_envs, self.obs_shape, self.rollout.obs.dtype, self.device)
            self.memory_state = self.captured.state  # updated in place by every replay
        self.agent.eval()

    def train(self, on_update: Callable[[dict[str, float], int], None] | None = None) -> str:
        """Train until ``n_steps``; returns 'done' or 'interrupted' (Ctrl-C / SIGTERM, checkpoint saved).

        ``on_update(logs, step)`` is called after every update (e.g. a sweep's metric report).
        """
        self.begin()
        # Ctrl-C and SIGTERM stop at once (the partial rollout is dropped) and save. The handlers stay
        # until the final save is written, so a second Ctrl-C cannot cut it short. Only the main
        # thread may set handlers (a Ray Tune trial runs in another thread and is stopped by Tune).
        in_main = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, self._request_stop) for sig in STOP_SIGNALS} if in_main else {}
        bar = self._progress_bar()
        start_time, start_step = time.perf_counter(), self.step
        status = "done"
        try:
            while self.step < self.cfg["n_steps"]:
                before, cycle_start = self.step, time.monotonic()
                self.collect_rollout()
                if self.stop_requested:
                    status = "interrupted"
                    break
                tick = time.perf_counter()
                logs = self.update()
                self.timers["update"] += time.perf_counter() - tick
                logs.update(self.stats.summary())
                logs.update(self.agent.step_log())
                elapsed = time.perf_counter() - start_time
                logs["time/fps"] = (self.step - start_step) / max(elapsed, 1e-9)
                logs.update({f"time/{k}_s": v for k, v in self.timers.items()})
                self.last_losses = logs
                self._log(logs)
                self._maybe_checkpoint(logs, time.monotonic() - cycle_start)
                if on_update is not None:
                    on_update(logs, self.step)
                if bar is not None:
                    bar.update(self.step - before)
                    bar.set_postfix_str(self.return_text(logs), refresh=False)
            if self.cfg["save_ckpt"] and self.run_dir is not None:
                self.save("ckpt_last.pt")
            if self.writer is not None:
                self.writer.flush()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if bar is not None:
                bar.close()
        return status

    @staticmethod
    def return_text(logs: dict[str, float]) -> str:
        """The progress bar's return: says how many episodes the mean is over until the window is full."""
        if "rollout/ep_rew_mean" not in logs:
            return "no episode finished yet"
        text = f"ret={logs['rollout/ep_rew_mean']:.3f}"
        count = int(logs["rollout/episodes_in_mean"])
        return text if count >= 100 else f"{text} ({count} ep)"

    def _request_stop(self, signum, frame) -> None:
        self.stop_requested = True
        self.stop_signal = self.stop_signal or signum

    def _progress_bar(self):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.cfg["n_steps"], initial=self.step, unit="step", unit_scale=True, dynamic_ncols=True)

    def _log(self, logs: dict[str, float]) -> None:
        if self.writer is None:
            return
        for name, value in logs.items():
            self.writer.add_scalar(name, value, self.step)
        if self.n_updates % TEXT_EVERY_UPDATES == 1:
            for name, text in self.agent.step_text().items():
                self.writer.add_text(name, text, self.step)

    def _maybe_checkpoint(self, logs: dict[str, float], cycle_s: float) -> None:
        """ckpt_best.pt from a mean over a full window only; ckpt_last.pt before 30 s of work is at risk.

        A mean over the first few episodes is inflated where only successes end early (KeyCorridor,
        Memory, Procgen maze), and would stay "best" for ever. ckpt_last.pt is written when the next
        chance (one rollout + update later, `cycle_s`) would leave more than `last_ckpt_every_s`
        unsaved, so a hard kill loses at most that or one update, whichever is more.
        """
        if not self.cfg["save_ckpt"] or self.run_dir is None:
            return
        mean_return = logs.get("rollout/ep_rew_mean")
        full = logs.get("rollout/episodes_in_mean", 0) >= self.cfg["best_min_episodes"]
        if full and mean_return > self.best_mean_return:
            self.best_mean_return = mean_return
            self.save("ckpt_best.pt")
        if time.monotonic() - self._last_ckpt_time + cycle_s >= self.last_ckpt_every_s:
            self.save("ckpt_last.pt")

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg,
            "agent": self.agent.checkpoint_state(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "n_updates": self.n_updates,
            "best_mean_return": self.best_mean_return,
            "reward_norm": self.normalizer.state_dict(),
            "episode_stats": self.stats.state_dict(),
            "rng": rng_state(),
            "generator": self.generator.get_state(),
        }

    def save(self, name: str) -> None:
        save_checkpoint(self.run_dir / name, self.state_dict())
        if name == "ckpt_last.pt":
            self._last_ckpt_time = time.monotonic()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_checkpoint_state(state["agent"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.n_updates = state["step"], state["n_updates"]
        self.best_mean_return = state["best_mean_return"]
        self.normalizer.load_state_dict(state["reward_norm"])
        self.stats.load_state_dict(state["episode_stats"])
        set_rng_state(state["rng"])
        self.generator.set_state(state["generator"])
