"""CLIP feature cache on MiniGrid-MemoryS7-v0 (16 envs): hit rate, CLIP forwards per env step, training speed.

Part 1, "cache": how well the exact LRU feature cache of ``models.clip_encoder.CLIPImageEncoder``
works. Its hits and misses depend only on which frames arrive (keys are hashes of the raw frames),
not on what CLIP computes, so this part wraps a TINY random CLIP (the one of ``tests/tiny_clip.py``)
in the real ``CLIPImageEncoder`` (cache size = the config default ``clip_cache_size``) and feeds it
the real observations of the 16-env vector env (``envs.make_env``) stepped by a uniformly random
policy. The encoder is called exactly where ``PPOTrainer`` calls it: once per vector step on the
16 observations (``agent.act``), once more on the 16 "final" observations of a vector step in
which some env was truncated (``agent.peek_values`` for bootstrapping), and once per 128-step
rollout on the last observations (``peek_values`` for GAE). Every one of those image lookups is a
hit or a miss; "images encoded" are the misses, i.e. the images that really went through CLIP.
The same is then done, for fewer steps, with a privileged shortest-path policy (BFS on the true
grid to the matching object) as a stand-in for a trained policy, which revisits even more.

Part 2, "train": training steps/s of HELMv2 and SHELM with a ViT-B/16-sized CLIP (random weights,
``CLIPConfig(vision_config=CLIPVisionConfig(patch_size=16))``: 768 wide, 12 layers, 224 px,
projection 512; default-sized text tower) saved with ``save_pretrained`` to a temporary directory
and passed as ``clip_model``, and the offline MiniLM memory of config.json (``lm=minilm``,
``lm_mode=causal``, ``mem_len=511``), all other keys from config.json. SHELM's semantic database is
written directly (no CLIP text forwards): every lower-cased alphabetic whole-word token of the
MiniLM tokenizer (``models.semantic_db._whole_words``) with a random unit 512-d embedding, saved
with ``save_database`` under the meta data ``load_database`` checks. The agents are built by
``models.build_agent`` and trained by the real ``PPOTrainer`` (run_dir=None, writer=None).

* Cache on (``clip_cache_size=100000``), untimed warm-up first: HELMv2's one-off statistics
  estimate (``estimate_statistics``: 256 random-policy frames, as at its first ``act``), then the
  agent's own encoder is fed the frames of ``--prefill-steps`` env steps of a uniformly random
  policy (``models.helmv2.random_policy_frames``, 16 envs; the untrained agent's policy is close to
  uniform), in chunks of 128 frames so that the misses go through CLIP in large batches, then
  ``--warmup-rollouts`` untimed ``train()`` rollouts+updates (default 0: on the contended CPU a
  warm-up rollout costs minutes, mostly ViT forwards of 1-3 new frames at a time). Then
  ``--timed-rollouts`` timed ``train()`` rollouts+updates (128 steps x 16 envs each); their hit
  rate shows how warm the cache was. SHELM starts with a copy of HELMv2's warmed cache instead:
  both load the same saved CLIP, so the entries are exactly what SHELM's own CLIP would compute.
* Cache off (``clip_cache_size=0``): a ViT-B/16 forward of 16 frames takes seconds on this CPU, so
  only ``collect_rollout`` of ``--nocache-steps`` vector steps is timed (a trainer built with
  ``n_rollout_steps=--nocache-steps``). HELMv2's fixed statistics are copied from the cache-on agent
  (so the timed part does not include a 256-frame estimate). The PPO update never runs CLIP or the
  LM, so a whole-training rate for cache off is estimated from its rollout rate plus the cache-on
  update time.

Time split from ``trainer.timers``: act = ``agent.act`` (CLIP + map/retrieval + LM step + policy)
plus tensor conversions and bootstrap ``peek_values``; env = the vector env's ``step``; update = the
PPO epochs; other = the rest of the wall time (rollout storage, GAE and its final ``peek_values``,
``train()``'s env reset). After the timed cache-on rollouts, ``agent.act`` (cache warm) is also timed
with 1 torch thread and with ``--threads``, alternating: on a CPU shared with other processes, 2
threads can be much slower than 1 for the small ops of a cached step. Part 1 runs with
``--cache-threads`` (1) for that reason; its counts do not depend on threads.

    python bench/clip_cache.py                               # both parts: ~3 min on 2 idle cores, ~6-7 min under load
    python bench/clip_cache.py --only cache --steps 20000    # part 1 only
    python bench/clip_cache.py --smoke                       # seconds: tiny CLIP and LM, writes nothing

``--smoke`` runs both parts end to end with the tests' tiny CLIP, a tiny GPT-2 memory, 4 envs and
8-step rollouts: it checks that the script still fits the code, not the numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (str(ROOT), str(ROOT / "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import smoke  # noqa: E402

ENV_ID = "MiniGrid-MemoryS7-v0"
ROLLOUT = 128  # the trainer's n_rollout_steps (config.json): one GAE peek per this many vector steps
SMOKE_DEFAULTS = {  # --smoke: every loop runs, on tiny sizes (explicit options still win)
    "envs": 4, "steps": 64, "warmup_steps": 32, "oracle_steps": 32, "prefill_steps": 32,
    "thread_check_steps": 4, "nocache_steps": 2, "threads": 1, "mem_len": smoke.MEM_LEN,
}
SMOKE_ROLLOUT = 8
VIT_B16_DIM = 512  # ViT-B/16's projection dim, for the memory estimate


def load_avg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def git_commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -- part 1: hit rate -----------------------------------------------------------------------------


class ShortestPathPolicy:
    """Privileged stand-in for a trained agent: BFS over (x, y, dir) on the true grid to the
    success cell next to the matching object (actions: 0 left, 1 right, 2 forward)."""

    def __init__(self, envs) -> None:
        from minigrid.core.constants import DIR_TO_VEC

        self.envs = envs
        self.dir_to_vec = [tuple(int(c) for c in v) for v in DIR_TO_VEC]

    def _first_action(self, env) -> int:
        grid, goal = env.grid, tuple(env.success_pos)
        start = (int(env.agent_pos[0]), int(env.agent_pos[1]), int(env.agent_dir))
        if start[:2] == goal:
            return 2
        first = {start: None}
        queue = deque([start])
        while queue:
            x, y, d = queue.popleft()
            dx, dy = self.dir_to_vec[d]
            moves = [(0, (x, y, (d - 1) % 4)), (1, (x, y, (d + 1) % 4))]
            nx, ny = x + dx, y + dy
            if 0 <= nx < grid.width and 0 <= ny < grid.height:
                cell = grid.get(nx, ny)
                if cell is None or cell.can_overlap():
                    moves.append((2, (nx, ny, d)))
            for action, state in moves:
                if state in first:
                    continue
                first[state] = action if first[(x, y, d)] is None else first[(x, y, d)]
                if state[:2] == goal:
                    return first[state]
                queue.append(state)
        return 2  # unreachable goal: cannot happen in MemoryEnv

    def __call__(self, rng) -> np.ndarray:
        # the sub-envs of the SyncVectorEnv under make_env's wrappers (the atlas renderer's RenderViews)
        return np.array([self._first_action(e.unwrapped) for e in self.envs.unwrapped.envs])


def cache_run(policy_name: str, steps: int, checkpoints: list[int], n_envs: int, cache_size: int, seed: int) -> dict:
    """Step the vector env for ``steps`` env steps, feeding every frame to a cached CLIPImageEncoder
    where the trainer would; return counters at each checkpoint (env steps, multiples of n_envs)."""
    from tiny_clip import make_tiny_clip

    from envs import make_env
    from models.clip_encoder import CLIPImageEncoder

    enc = CLIPImageEncoder(make_tiny_clip(seed=0), cache_size)
    envs = make_env(ENV_ID, n_envs, "sync")
    rng = np.random.default_rng(seed)
    policy = ShortestPathPolicy(envs) if policy_name == "shortest-path" else None
    n_actions = int(envs.single_action_space.n)
    obs, _ = envs.reset(seed=seed)
    done_steps, vector_steps, episodes, successes = 0, 0, 0, 0
    marks, pending = [], sorted(set(c for c in checkpoints if c <= steps) | {steps})
    tick = time.perf_counter()
    try:
        while done_steps < steps:
            enc(obs)  # agent.act
            actions = policy(rng) if policy is not None else rng.integers(n_actions, size=n_envs)
            next_obs, rewards, terminated, truncated, info = envs.step(actions)
            boot = truncated & ~terminated
            if boot.any():  # the trainer's peek_values on the final observations
                final = next_obs.copy()
                for i in np.flatnonzero(boot):
                    final[i] = info["final_obs"][i]
                enc(final)
            episodes += int((terminated | truncated).sum())
            successes += int((rewards > 0).sum())
            obs = next_obs
            vector_steps += 1
            done_steps += n_envs
            if vector_steps % ROLLOUT == 0:
                enc(obs)  # peek_values for GAE at the end of each rollout
            while pending and done_steps >= pending[0]:
                marks.append({"env_steps": done_steps, "hits": enc.hits, "misses": enc.misses,
                              "images_encoded": enc.images_encoded, "forward_calls": enc.forward_calls,
                              "vector_steps": vector_steps, "entries": enc.cache_len(),
                              "episodes": episodes, "successes": successes,
                              "seconds": time.perf_counter() - tick})
                pending.pop(0)
    finally:
        envs.close()
    return {"policy": policy_name, "marks": marks}


def window(begin: dict | None, end: dict) -> dict:
    """Hit rate and CLIP work per env step between two checkpoint marks (begin=None: from the start)."""
    lo = None if begin is None else begin["env_steps"]
    hi = end["env_steps"]
    begin = {k: 0 for k in end} if begin is None else begin
    d = {k: end[k] - begin[k] for k in ("env_steps", "hits", "misses", "images_encoded", "forward_calls", "vector_steps")}
    lookups = d["hits"] + d["misses"]
    return {
        "from": 0 if lo is None else lo, "to": hi,
        "hit_rate": d["hits"] / lookups if lookups else float("nan"),
        "lookups_per_env_step": lookups / d["env_steps"],
        "images_encoded": d["images_encoded"],
        "images_encoded_per_env_step": d["images_encoded"] / d["env_steps"],
        "clip_forward_calls_per_vector_step": d["forward_calls"] / d["vector_steps"],
        "entries_at_end": end["entries"],
    }


def run_cache_part(args) -> dict:
    from utils.config import defaults

    cache_size = args.cache_size if args.cache_size is not None else defaults()["clip_cache_size"]
    out = {"cache_size": cache_size, "n_envs": args.envs, "torch_threads": args.cache_threads,
           "load_before": load_avg(), "policies": []}
    torch.set_num_threads(args.cache_threads)
    for name, steps in (("uniform-random", args.steps), ("shortest-path", args.oracle_steps)):
        if steps <= 0:
            continue
        warm = min(args.warmup_steps, steps)
        print(f"[cache] {name}: {steps} env steps ...", file=sys.stderr, flush=True)
        res = cache_run(name, steps, [warm], args.envs, cache_size, args.seed)
        marks = res["marks"]
        last = marks[-1]
        res["windows"] = [window(None, marks[0])]
        if len(marks) > 1:
            res["windows"].append(window(marks[0], last))
            res["windows"].append(window(None, last))
        res["entries"] = last["entries"]
        res["entries_mem_mb_vitb16"] = last["entries"] * VIT_B16_DIM * 4 / 2**20
        res["episodes"], res["successes"] = last["episodes"], last["successes"]
        res["seconds"] = last["seconds"]
        out["policies"].append(res)
        print(f"[cache] {name}: {json.dumps(res['windows'])} entries={res['entries']} ({res['seconds']:.0f} s)",
              file=sys.stderr, flush=True)
    out["load_after"] = load_avg()
    torch.set_num_threads(args.threads)
    return out


# -- part 2: training speed ---------------------------------------------------------------------------


def save_vit_b16_clip(directory: Path, vision_layers: int = 12) -> Path:
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    torch.manual_seed(0)
    vision = CLIPVisionConfig(patch_size=16)
    vision.num_hidden_layers = vision_layers  # 12 = ViT-B/16; fewer only for smoke tests of this script
    config = CLIPConfig(vision_config=vision.to_dict())
    CLIPModel(config).eval().save_pretrained(str(directory))
    return directory


def write_random_database(clip_dir: Path, lm: str, path: Path, dim: int, seed: int) -> int:
    """A semantic database for (clip_dir, lm, "none") with random unit embeddings of the LM's whole words."""
    from transformers import AutoTokenizer

    from models.lm_memory import resolve_lm_path
    from models.semantic_db import FORMAT_VERSION, _whole_words, model_identity, save_database

    lm_tokenizer = AutoTokenizer.from_pretrained(resolve_lm_path(lm), local_files_only=True)
    _, whole = _whole_words(lm_tokenizer)
    words = sorted(whole, key=lambda w: whole[w])
    generator = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(len(words), dim, generator=generator), dim=-1)
    save_database({
        "words": words,
        "clip_ids": torch.arange(len(words), dtype=torch.long),  # placeholder: no CLIP tokenizer offline
        "lm_ids": torch.tensor([whole[w] for w in words], dtype=torch.long),
        "embeddings": emb.contiguous(),
        "meta": {"clip_model": model_identity(str(clip_dir)), "lm": model_identity(lm), "templates": "none",
                 "template_strings": ["{}"], "n_words": len(words), "embed_dim": dim,
                 "format_version": FORMAT_VERSION},
    }, path)
    return len(words)


def make_cfg(model: str, clip_dir: Path, db_path: Path, cache_size: int, n_envs: int, rollout: int, seed: int,
             lm: str = "minilm", mem_len: int = 511) -> dict:
    from utils import config as config_lib

    cfg = config_lib.defaults()
    # config.json's values for the keys this checkout knows (other engineers may be adding keys).
    raw = json.loads((ROOT / "config.json").read_text())
    cfg.update({k: config_lib.coerce(k, v) for k, v in raw.items() if k in config_lib.SCHEMA})
    cfg.update(lm=lm, lm_mode="causal", mem_len=mem_len, lm_layers=None, torch_threads=None)
    cfg = {k: v for k, v in cfg.items() if k in config_lib.SCHEMA}
    cfg.update(env=ENV_ID, model=model, seed=seed, device="cpu", save_ckpt=False, n_envs=n_envs,
               n_rollout_steps=rollout, clip_model=str(clip_dir), clip_cache_size=cache_size,
               semantic_db=str(db_path))
    config_lib.validate(cfg)
    return cfg


def build(cfg: dict):
    from trainers.run import build_trainer

    tick = time.perf_counter()
    trainer = build_trainer(cfg, run_dir=None)
    return trainer, time.perf_counter() - tick


def enc_counts(enc) -> dict:
    return {"hits": enc.hits, "misses": enc.misses, "images_encoded": enc.images_encoded,
            "forward_calls": enc.forward_calls}


def delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] for k in after}


def split(timers: dict, wall: float) -> dict:
    out = {f"{k}_s": v for k, v in timers.items()}
    out["other_s"] = wall - sum(timers.values())
    out.update({f"{k}_pct": 100.0 * v / wall for k, v in timers.items()})
    out["other_pct"] = 100.0 * out["other_s"] / wall
    return out


def train_cache_on(model: str, clip_dir: Path, db_path: Path, args, warm_cache=None) -> tuple[dict, object]:
    """Train with the feature cache on; ``warm_cache`` (a ``FrameCache``) is copied in first."""
    cfg = make_cfg(model, clip_dir, db_path, args.train_cache_size, args.envs, ROLLOUT, args.seed,
                   args.lm, args.mem_len)
    trainer, build_s = build(cfg)
    enc = trainer.agent.encoder.image_encoder
    if warm_cache is not None:
        enc.cache = copy.deepcopy(warm_cache)
        enc.cache.reset_stats()  # count this model's own hits and misses only
    copied = enc.cache_len()
    per_rollout = args.envs * ROLLOUT
    res = {"model": model, "cache": "on", "clip_cache_size": args.train_cache_size, "build_s": build_s,
           "entries_copied_from_helmv2": copied if warm_cache is not None else 0, "load_before": load_avg()}

    warmup = args.warmup_rollouts if warm_cache is None else args.warmup_rollouts_copied
    prefill = args.prefill_steps if warm_cache is None else 0
    print(f"[train] {model} cache on: warm-up (prefill {prefill} env steps, {warmup} rollout(s)) ...",
          file=sys.stderr, flush=True)
    tick = time.perf_counter()
    with torch.no_grad():
        if hasattr(trainer.agent.encoder, "estimate_statistics"):
            trainer.agent.encoder.estimate_statistics()
        if prefill > 0:
            from models.helmv2 import random_policy_frames

            frames = random_policy_frames(ENV_ID, prefill, args.seed + 1, n_envs=args.envs)
            for chunk in torch.as_tensor(frames).split(128):
                enc(chunk)
    res["prefill_s"] = time.perf_counter() - tick
    res["prefill_env_steps"] = prefill
    res["prefill"] = {**enc_counts(enc), "entries": enc.cache_len()}
    trainer.cfg["n_steps"] = warmup * per_rollout
    trainer.train()
    res["warmup_s"] = time.perf_counter() - tick
    res["warmup"] = {**enc_counts(enc), "env_steps": trainer.step, "entries": enc.cache_len()}

    timers0, counts0, step0 = dict(trainer.timers), enc_counts(enc), trainer.step
    trainer.cfg["n_steps"] = trainer.step + args.timed_rollouts * per_rollout
    print(f"[train] {model} cache on: {args.timed_rollouts} timed rollout(s) ...", file=sys.stderr, flush=True)
    tick = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - tick
    steps = trainer.step - step0
    timers = {k: trainer.timers[k] - timers0[k] for k in timers0}
    counts = delta(enc_counts(enc), counts0)
    lookups = counts["hits"] + counts["misses"]
    res.update({
        "timed_env_steps": steps, "wall_s": wall, "train_steps_per_s": steps / wall,
        "rollout_steps_per_s": steps / (timers["act"] + timers["env"]),
        "act_s_per_vector_step": timers["act"] / (steps / args.envs),
        "update_s_per_rollout": timers["update"] / args.timed_rollouts,
        "timed_hit_rate": counts["hits"] / lookups if lookups else float("nan"),
        "timed_images_encoded": counts["images_encoded"],
        "timed_images_encoded_per_env_step": counts["images_encoded"] / steps,
        "entries_at_end": enc.cache_len(), **split(timers, wall), "load_after": load_avg(),
    })
    if args.thread_check_steps > 0:
        res["act_s_by_threads"] = act_thread_check(trainer, args.thread_check_steps, args.threads)
    print(f"[train] {model} cache on: {json.dumps(res)}", file=sys.stderr, flush=True)
    return res, trainer


def act_thread_check(trainer, steps: int, threads: int) -> dict:
    """Median ``agent.act`` seconds per vector step (cache warm) with 1 thread and with ``threads``,
    in alternating blocks of 4 steps so that a change of the machine's load hits both alike."""
    agent, envs = trainer.agent, trainer.envs
    obs, starts, state = trainer.obs, trainer.episode_start, trainer.memory_state
    times: dict[int, list[float]] = {1: [], threads: []}
    block = 4
    for i in range(2 * -(-steps // block)):
        n = (1, threads)[i % 2]
        torch.set_num_threads(n)
        for _ in range(block):
            tick = time.perf_counter()
            with torch.no_grad():
                out, state = agent.act(torch.as_tensor(obs), state, torch.as_tensor(starts))
            times[n].append(time.perf_counter() - tick)
            obs, _, terminated, truncated, _ = envs.step(out.actions.numpy())
            starts = terminated | truncated
    torch.set_num_threads(threads)
    return {str(n): float(np.median(t)) for n, t in times.items()}


def rollout_cache_off(model: str, clip_dir: Path, db_path: Path, args, to_tokens_state=None) -> dict:
    k = args.nocache_steps
    cfg = make_cfg(model, clip_dir, db_path, 0, args.envs, k, args.seed, args.lm, args.mem_len)
    trainer, build_s = build(cfg)
    agent = trainer.agent
    if to_tokens_state is not None:  # HELMv2: reuse the fixed statistics instead of re-estimating them uncached
        agent.encoder.to_tokens.load_state_dict(to_tokens_state)
    act_times: list[float] = []
    act = agent.act

    def timed_act(*a, **kw):
        tick = time.perf_counter()
        out = act(*a, **kw)
        act_times.append(time.perf_counter() - tick)
        return out

    agent.act = timed_act
    trainer.begin()  # what train() does before its first rollout
    enc = agent.encoder.image_encoder
    res = {"model": model, "cache": "off", "clip_cache_size": 0, "build_s": build_s, "load_before": load_avg()}
    print(f"[train] {model} cache off: {k} vector steps of collect_rollout ...", file=sys.stderr, flush=True)
    tick = time.perf_counter()
    trainer.collect_rollout()
    wall = time.perf_counter() - tick
    steps = trainer.step
    timers = dict(trainer.timers)
    res.update({
        "timed_env_steps": steps, "wall_s": wall,
        "rollout_steps_per_s": steps / (timers["act"] + timers["env"]),
        "act_s_per_vector_step": timers["act"] / k,
        "act_s_each": act_times, "images_encoded": enc.images_encoded, "forward_calls": enc.forward_calls,
        **split(timers, wall), "load_after": load_avg(),
    })
    print(f"[train] {model} cache off: {json.dumps(res)}", file=sys.stderr, flush=True)
    trainer.envs.close()
    return res


def run_train_part(args) -> dict:
    models = [m for m in args.models.split(",") if m]
    out = {"rows": [], "load_before": load_avg()}
    with tempfile.TemporaryDirectory(prefix="clip_cache_bench_") as tmp:
        tmp = Path(tmp)
        tick = time.perf_counter()
        if args.smoke:
            clip_dir = Path(smoke.tiny_clip(tmp / "clip-tiny"))
            args.lm = smoke.tiny_lm(tmp / "lm-tiny")
        else:
            clip_dir = save_vit_b16_clip(tmp / "clip-vit-b16-random", args.clip_layers)
        out["clip_save_s"] = time.perf_counter() - tick
        db_path = tmp / "semantic_db.pt"
        dim = int(json.loads((clip_dir / "config.json").read_text())["projection_dim"])
        out["db_words"] = write_random_database(clip_dir, args.lm, db_path, dim, args.seed)
        print(f"[train] CLIP saved in {out['clip_save_s']:.0f} s; database of {out['db_words']} words",
              file=sys.stderr, flush=True)
        warm_cache, to_tokens_state = None, None
        on_rows = {}
        for model in models:
            res, trainer = train_cache_on(model, clip_dir, db_path, args,
                                          warm_cache if model != "HELMv2" else None)
            on_rows[model] = res
            out["rows"].append(res)
            if model == "HELMv2":
                warm_cache = trainer.agent.encoder.image_encoder.cache
                to_tokens_state = {k: v.clone() for k, v in trainer.agent.encoder.to_tokens.state_dict().items()}
            elif warm_cache is None:
                warm_cache = trainer.agent.encoder.image_encoder.cache
            trainer.envs.close()
            del trainer
        if args.nocache_steps > 0:
            for model in models:
                res = rollout_cache_off(model, clip_dir, db_path, args, to_tokens_state if model == "HELMv2" else None)
                on = on_rows[model]
                # Whole-training estimate: the cache-off rollout rate + the (CLIP-free) PPO update of cache on.
                per_rollout = args.envs * ROLLOUT
                est = per_rollout / (per_rollout / res["rollout_steps_per_s"] + on["update_s_per_rollout"])
                res["train_steps_per_s_estimated"] = est
                out["rows"].append(res)
    out["load_after"] = load_avg()
    return out


# -- report -----------------------------------------------------------------------------------------


def fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) < 1e4 else f"{x:.0f}"
    return str(x)


def args_thread_steps(result: dict) -> int:
    steps = result["args"]["thread_check_steps"]
    return 4 * -(-steps // 4)


def markdown(result: dict, command: str) -> str:
    lines = [
        "# CLIP feature cache: hit rate and HELMv2/SHELM training speed",
        "",
        *(["**Smoke run: tiny CLIP and LM, tiny sizes; the numbers mean nothing.**", ""]
          if result["args"].get("smoke") else []),
        f"- date: {result['date']}",
        f"- machine: {result['machine']['cpu']}, {result['machine']['cpus']} CPUs, torch {result['machine']['torch']} "
        f"with {result['machine']['torch_threads']} threads; **shared** with other processes that come and go (a background learning benchmark on ~2 cores, other engineers' jobs), so timings depend on the load: load averages are given per row. "
        f"Load average (1/5/15 min) at start {result['load_start']}, at end {result['load_end']}.",
        f"- env: {ENV_ID}, {result['n_envs']} sync envs (56x56x3 partial-view frames); code at commit {result['git_commit']} "
        "(+ this script)",
        f"- command: `{command}`",
        f"- total wall time: {result['total_s']:.0f} s",
        "",
    ]
    cache = result.get("cache")
    if cache:
        lines += [
            "## 1. Hit rate of the exact LRU cache (tiny CLIP, real frames)",
            "",
            f"`CLIPImageEncoder(tiny CLIP, cache_size={cache['cache_size']})` (the config default) fed every frame the "
            "trainer would encode: the 16 observations of each vector step (`act`), the final observations of "
            "vector steps with a truncation (`peek_values`), and the last observations of each 128-step rollout. "
            "Lookups/env step is therefore slightly above 1. \"Images encoded\" = misses = images that went "
            "through CLIP; \"forward calls\" = batched CLIP forwards (at most one per encoder call). "
            f"torch threads: {cache['torch_threads']} (the tiny CLIP's tiny ops are ~100x slower with 2 threads on "
            "the contended CPU; the counts do not depend on it). "
            f"Load average (1/5/15 min) before -> after: {cache['load_before']} -> {cache['load_after']}.",
            "",
            "| policy | env steps | hit rate | images encoded | images encoded / env step | CLIP forward calls / vector step | cache entries at end |",
            "|---|---|---|---|---|---|---|",
        ]
        for pol in cache["policies"]:
            for w in pol["windows"]:
                span = f"[{w['from'] / 1000:g}k, {w['to'] / 1000:g}k]"
                lines.append(
                    f"| {pol['policy']} | {span} | {100 * w['hit_rate']:.3f} % | {w['images_encoded']} | "
                    f"{w['images_encoded_per_env_step']:.5f} | {w['clip_forward_calls_per_vector_step']:.4f} | {w['entries_at_end']} |"
                )
        lines += [""]
        for pol in cache["policies"]:
            lines.append(
                f"- {pol['policy']}: {pol['entries']} cache entries after {pol['windows'][-1]['to']} env steps "
                f"(ViT-B/16, 512-d float32: {pol['entries']} x 512 x 4 B = {pol['entries_mem_mb_vitb16']:.2f} MiB of "
                f"embeddings, plus ~0.6 KiB Python/tensor overhead per entry (measured: 100k 512-d entries take ~2.6 KiB each in RSS)); {pol['episodes']} episodes, "
                f"{pol['successes']} successes; {pol['seconds']:.0f} s."
            )
        lines.append("")
    train = result.get("train")
    if train:
        lines += [
            "## 2. Training speed, ViT-B/16-sized CLIP (random weights) + MiniLM memory (causal, mem_len 511)",
            "",
            f"CLIP: `CLIPConfig(vision_config=CLIPVisionConfig(patch_size=16))` (ViT 768 x 12 layers, 224 px, "
            f"projection 512; default text tower, not run), saved with `save_pretrained` in {train['clip_save_s']:.0f} s. "
            f"SHELM database: written directly, {train['db_words']} MiniLM whole words with random unit 512-d embeddings "
            "(no CLIP text forwards). Real `PPOTrainer` (16 envs, 128-step rollouts, 3 epochs x 8 minibatches). "
            f"Load average (1/5/15 min) before -> after: {train['load_before']} -> {train['load_after']}.",
            "",
            "| model | cache | timed env steps | train env-steps/s | rollout env-steps/s | act s / vector step | "
            "hit rate (timed) | images encoded / env step (timed) | act % | env % | update % | other % | load (1 min) before/after |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in train["rows"]:
            if r["cache"] == "on":
                train_rate = f"{r['train_steps_per_s']:.1f}"
                hit = f"{100 * r['timed_hit_rate']:.2f} %"
                per = f"{r['timed_images_encoded_per_env_step']:.4f}"
            else:
                train_rate = f"~{r['train_steps_per_s_estimated']:.2f} (est.)"
                hit = "- (no cache)"
                per = f"{r['images_encoded'] / r['timed_env_steps']:.3f}"
            lines.append(
                f"| {r['model']} | {r['cache']} | {r['timed_env_steps']} | {train_rate} | {r['rollout_steps_per_s']:.2f} | "
                f"{r['act_s_per_vector_step']:.3f} | {hit} | {per} | {r['act_pct']:.0f} | {r['env_pct']:.0f} | "
                f"{r.get('update_pct', 0.0):.0f} | {r['other_pct']:.0f} | "
                f"{r['load_before'].split(' / ')[0]} / {r['load_after'].split(' / ')[0]} |"
            )
        on = {r["model"]: r for r in train["rows"] if r["cache"] == "on"}
        off = {r["model"]: r for r in train["rows"] if r["cache"] == "off"}
        lines += [""]
        for model in on:
            r = on[model]
            parts = []
            if r["entries_copied_from_helmv2"]:
                parts.append(f"started from a copy of HELMv2's {r['entries_copied_from_helmv2']} cached entries")
            if model == "HELMv2":
                parts.append("256-frame statistics estimate")
            if r["prefill_env_steps"]:
                parts.append(f"encoder prefilled with the frames of {r['prefill_env_steps']} random-policy env steps")
            if r["warmup"]["env_steps"]:
                parts.append(f"{r['warmup']['env_steps']} env steps of train()")
            text = (f"- {model}, cache on: warm-up = {' + '.join(parts)}: {r['warmup_s']:.0f} s, "
                    f"{r['warmup']['images_encoded']} images through CLIP in {r['warmup']['forward_calls']} forward calls"
                    f" ({r['prefill_s']:.0f} s for estimate + prefill); timed wall {r['wall_s']:.1f} s, split act {r['act_s']:.1f} s / env {r['env_s']:.1f} s / "
                    f"update {r['update_s']:.1f} s / other {r['other_s']:.1f} s; {r['entries_at_end']} entries at the end.")
            if "act_s_by_threads" in r:
                by = r["act_s_by_threads"]
                text += (f" Cached `agent.act` (median of {args_thread_steps(result)} vector steps each, alternating): "
                         + ", ".join(f"{n} thread{'s' if n != '1' else ''} {t:.3f} s" for n, t in by.items()) + ".")
            if model in off:
                o = off[model]
                text += (f" Cache off: act {o['act_s_per_vector_step']:.2f} s per vector step "
                         f"(each: {', '.join(f'{t:.1f}' for t in o['act_s_each'])} s), "
                         f"rollout {r['rollout_steps_per_s'] / o['rollout_steps_per_s']:.0f}x slower than with the cache; "
                         f"whole-training estimate = 2048 / (2048 / rollout rate + cache-on update "
                         f"{r['update_s_per_rollout']:.1f} s) = {o['train_steps_per_s_estimated']:.2f} env-steps/s.")
            lines.append(text)
        lines += [
            "",
            "Cache off rows: only `collect_rollout` of a few vector steps is timed (their `update %` is 0 by "
            "construction); HELMv2 reuses the cache-on agent's fixed statistics. `other` includes the final "
            "`peek_values` of `collect_rollout` (one more uncached 16-frame CLIP forward for cache off) and, for "
            "cache on, `train()`'s env reset.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("cache", "train"), help="run one part only")
    parser.add_argument("--envs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=100_000, help="part 1: env steps of the random policy")
    parser.add_argument("--warmup-steps", type=int, default=10_000, help="part 1: end of the warm-up window")
    parser.add_argument("--oracle-steps", type=int, default=20_000, help="part 1: env steps of the shortest-path policy (0: skip)")
    parser.add_argument("--cache-size", type=int, default=None, help="part 1 cache size (default: config default)")
    parser.add_argument("--models", default="HELMv2,SHELM")
    parser.add_argument("--train-cache-size", type=int, default=100_000, help="part 2 clip_cache_size with the cache on")
    parser.add_argument("--prefill-steps", type=int, default=2048,
                        help="part 2, cache on: env steps of random-policy frames fed to the encoder first (untimed)")
    parser.add_argument("--warmup-rollouts", type=int, default=0, help="part 2, cache on: untimed rollouts+updates after the prefill")
    parser.add_argument("--warmup-rollouts-copied", type=int, default=0,
                        help="the same for models that start from HELMv2's warmed cache (SHELM)")
    parser.add_argument("--thread-check-steps", type=int, default=16,
                        help="part 2, cache on: vector steps of agent.act timed at 1 thread and at --threads (0: skip)")
    parser.add_argument("--timed-rollouts", type=int, default=1)
    parser.add_argument("--nocache-steps", type=int, default=4, help="part 2: vector steps timed with the cache off (0: skip)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of part 2")
    parser.add_argument("--cache-threads", type=int, default=1,
                        help="torch threads of part 1 (tiny CLIP: 2 threads on the contended CPU are ~100x slower)")
    parser.add_argument("--clip-layers", type=int, default=12, help="ViT layers of part 2's CLIP (12; fewer only for smoke tests)")
    parser.add_argument("--lm", default="minilm", help="part 2's memory LM (minilm: the offline MiniLM)")
    parser.add_argument("--mem-len", type=int, default=511, help="part 2's memory length")
    parser.add_argument("--out", default=None,
                        help="writes OUT.md and OUT.json (default: bench/results/clip_cache; nothing with --smoke)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny CLIP and LM, tiny sizes, seconds: checks that this script still runs")
    args = parser.parse_args(argv)
    if args.smoke:
        global ROLLOUT
        ROLLOUT = SMOKE_ROLLOUT
        parser.set_defaults(**SMOKE_DEFAULTS)
        args = parser.parse_args(argv)
    elif args.out is None:
        args.out = str(ROOT / "bench" / "results" / "clip_cache")

    torch.set_num_threads(args.threads)
    from models import _quiet_transformers

    import transformers  # noqa: F401

    _quiet_transformers()
    command = "python bench/clip_cache.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start = time.perf_counter()
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "python": platform.python_version()},
        "load_start": load_avg(), "n_envs": args.envs, "env": ENV_ID,
        # paths relative to the project, so the results hold no machine's folders
        "args": {k: os.path.relpath(v, ROOT) if k == "out" and v else v for k, v in vars(args).items()},
        "git_commit": git_commit(),
    }
    if args.only in (None, "cache"):
        result["cache"] = run_cache_part(args)
    if args.only in (None, "train"):
        result["train"] = run_train_part(args)
    result["load_end"] = load_avg()
    result["total_s"] = time.perf_counter() - start
    report = markdown(result, command.strip())
    if args.out is not None:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
