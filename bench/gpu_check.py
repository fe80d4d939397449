"""GPU check: the CUDA training path of every agent, its speed, and what bf16 autocast would buy.

Meant for one short run on a lent GPU machine (no downloads there, so every pretrained model is
replaced by a random-weight model of the same size; speed does not depend on the weights):

* train: the real ``PPOTrainer`` on ``device=cuda`` for CNN-PPO, Impala-PPO, HELM, HELMv2 and SHELM
  on MiniGrid-KeyCorridorS3R1-v0, 16 envs x 128 steps, 3 epochs x 8 minibatches. The memory LM is
  the papers' Transformer-XL (wt103-sized, our implementation) for one HELM run and otherwise
  Pythia-410m-sized (GPT-NeoX: 24 layers, 1024 wide, 16 heads, 50k vocabulary) with mem_len 511, CLIP is ViT-B/16-sized (HELMv2, SHELM; feature cache on and, for HELMv2,
  off), SHELM's database holds 20k random unit vectors with random LM token ids. One untimed
  update, then ``--updates`` timed ones; steps/s of the fastest (mean in brackets), time split and
  peak GPU memory.
* precision: one memory step of the Pythia-410m-sized LM (batch 16, 511 cached tokens) and a
  ViT-B/16 forward of 16 frames, in fp32, with TF32 matmuls, and under bf16 autocast: ms per call
  and the largest deviation from fp32 relative to the output's scale.

* scale (``--scale``): CNN-PPO and HELM (Pythia-410m-sized, mem 511) at 16, 64 and 256 envs,
  HELM in fp32 and ``precision=bf16``: where a bigger batch and bf16 pay; then the same with
  ``cuda_graph=true`` (CNN-PPO at 16 envs, HELM at 16 and 256 envs in fp32 and bf16).
* concurrent (``--concurrent``): 1, 2, 4 and 8 HELM trials of 16 envs at once on the one GPU
  (separate processes, as ``sweep.py --gpus-per-trial 0.125`` runs them): the aggregate steps/s.
* attention (``--attention``): one LM memory step at 256 envs with a full window, fp32 and bf16,
  eager and static step, under each attention kernel: where bf16 loses.

    python bench/gpu_check.py --out bench/results/gpu_check.json
    python bench/gpu_check.py --scale --concurrent --out bench/results/gpu_scale.json   # under 8 minutes
    python bench/gpu_check.py --attention --out bench/results/gpu_attention.json   # where bf16 loses
    python bench/gpu_check.py --smoke [--scale --concurrent --attention]   # seconds, any machine: tiny models, CPU

``--smoke`` runs every row and the precision check with tiny models (a 2-layer GPT-NeoX, the tests'
tiny Transformer-XL and CLIP), 2 envs x 8 steps and one timed update, on the CPU; it exits 1 if any
row failed, so that it catches a script that no longer fits the code.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

ENV_ID = "MiniGrid-KeyCorridorS3R1-v0"
DEVICE = "cuda"
TINY = False  # --smoke: small models on any device, to check this script itself


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def save_pythia_410m_sized(directory: Path) -> str:
    from transformers import GPTNeoXConfig, GPTNeoXModel

    torch.manual_seed(0)
    width, layers = (64, 2) if TINY else (1024, 24)
    config = GPTNeoXConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=16,
                           rotary_pct=0.25, vocab_size=50304, max_position_embeddings=2048)
    GPTNeoXModel(config).save_pretrained(str(directory))
    return str(directory)


def save_transfo_xl(directory: Path) -> str:
    """The papers' Transformer-XL: wt103-sized with random weights (the tiny test model with --smoke)."""
    if TINY:
        from tests.tiny_lms import tiny_transfo_xl

        return tiny_transfo_xl(str(directory))
    from bench.helm_lm_speed import save_wt103_sized_transfo_xl

    return save_wt103_sized_transfo_xl(directory)


def save_vit_b16_clip(directory: Path) -> str:
    """ViT-B/16-sized CLIP with random weights (the tests' tiny CLIP with --smoke)."""
    if TINY:
        from bench import smoke

        return smoke.tiny_clip(directory)
    from bench.clip_cache import save_vit_b16_clip as save

    return str(save(directory))


def clip_projection_dim(clip_dir: str) -> int:
    return int(json.loads((Path(clip_dir) / "config.json").read_text())["projection_dim"])


def write_random_database(clip_dir: str, lm_dir: str, path: Path, n_words: int = 20_000, dim: int = 512) -> str:
    from models.semantic_db import FORMAT_VERSION, model_identity, save_database

    gen = torch.Generator().manual_seed(0)
    save_database({
        "words": [f"w{i}" for i in range(n_words)],
        "clip_ids": torch.arange(n_words, dtype=torch.long),
        "lm_ids": torch.randint(0, 50304, (n_words,), generator=gen),
        "embeddings": torch.nn.functional.normalize(torch.randn(n_words, dim, generator=gen), dim=-1),
        "meta": {"clip_model": model_identity(clip_dir), "lm": model_identity(lm_dir), "templates": "none",
                 "template_strings": ["{}"], "n_words": n_words, "embed_dim": dim, "format_version": FORMAT_VERSION},
    }, path)
    return str(path)


def train_speed(model: str, overrides: dict, updates: int, rollout: int = 128) -> dict:
    from trainers.run import build_trainer
    from utils.config import defaults, validate

    cfg = defaults()
    cfg.update(env=ENV_ID, model=model, seed=1, device=DEVICE, save_ckpt=False, n_envs=16, n_rollout_steps=rollout,
               n_epochs=3, n_batches=8, n_steps=10**9)
    if TINY:
        from bench import smoke

        cfg.update(smoke.TINY_TRAINER)
    cfg.update(overrides)
    validate(cfg)
    trainer = build_trainer(cfg, run_dir=None)
    envs = trainer.envs
    trainer.begin()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    units = []
    for i in range(updates + 1):
        timers, step = dict(trainer.timers), trainer.step
        sync()
        tick = time.perf_counter()
        trainer.collect_rollout()
        u_tick = time.perf_counter()
        trainer.update()
        sync()
        end = time.perf_counter()
        if i == 0:
            continue  # warm-up: CUDA kernels, cuDNN autotuning, caches
        unit = {"steps": trainer.step - step, "seconds": end - tick, "update_s": end - u_tick}
        unit.update({f"{k}_s": trainer.timers[k] - timers[k] for k in ("env", "act")})
        units.append(unit)
    envs.close()
    best = min(units, key=lambda u: u["seconds"])
    return {
        # model folders by name only: the results hold no machine's paths
        "model": model, "overrides": {k: Path(v).name if isinstance(v, str) and "/" in v else v
                                      for k, v in overrides.items() if k not in ("semantic_db",)},
        "train_steps_per_s": best["steps"] / best["seconds"],
        "mean_train_steps_per_s": sum(u["steps"] for u in units) / sum(u["seconds"] for u in units),
        "split_pct": {k[:-2]: 100 * best[k] / best["seconds"] for k in ("env_s", "act_s", "update_s")},
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if DEVICE == "cuda" else None,
        "updates_timed": len(units),
    }


def time_call(fn, repeats: int = 20) -> float:
    if TINY:
        repeats = 2
    for _ in range(3):
        fn()
    sync()
    tick = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return 1000 * (time.perf_counter() - tick) / repeats


def precision(lm_dir: str, clip_dir: str) -> dict:
    from models.clip_encoder import load_clip
    from models.frozen_lm import load_frozen_memory

    out = {}
    device = torch.device(DEVICE)
    memory, vocabulary = load_frozen_memory(lm_dir, 511, lm_mode="causal")
    memory.to(device)
    state = memory.initial_state(16)
    emb = vocabulary.embeddings()
    gen = torch.Generator(device="cpu").manual_seed(0)
    starts = torch.zeros(16, dtype=torch.bool, device=device)
    with torch.no_grad():
        for t in range(20 if TINY else 511):  # fill the window
            memory.step(emb[torch.randint(0, emb.shape[0], (16,), generator=gen).to(emb.device)], state, starts)
        x = emb[torch.randint(0, emb.shape[0], (16,), generator=gen).to(emb.device)]
        ref = memory.peek(x, state, starts)
        clip = load_clip(clip_dir).to(device)
        side = int(clip.config.vision_config.image_size)  # 224 for ViT-B/16
        frames = torch.rand(16, 3, side, side, device=device)
        clip_ref = clip(frames) if not hasattr(clip, "get_image_features") else clip.get_image_features(pixel_values=frames)
        clip_fn = (lambda: clip(frames)) if not hasattr(clip, "get_image_features") else \
            (lambda: clip.get_image_features(pixel_values=frames))
        for mode in ("fp32", "tf32", "bf16-autocast"):
            torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
            torch.backends.cudnn.allow_tf32 = mode == "tf32"
            ctx = torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=mode == "bf16-autocast")
            with ctx:
                lm_ms = time_call(lambda: memory.peek(x, state, starts))
                lm_out = memory.peek(x, state, starts).float()
                clip_ms = time_call(clip_fn)
                clip_out = clip_fn()
                clip_out = (clip_out if torch.is_tensor(clip_out) else clip_out.pooler_output).float()
            ref_c = clip_ref if torch.is_tensor(clip_ref) else clip_ref.pooler_output
            out[mode] = {
                "lm_step_ms": lm_ms,
                "lm_max_rel_dev": float((lm_out - ref).abs().max() / ref.abs().max()),
                "clip16_ms": clip_ms,
                "clip_max_rel_dev": float((clip_out - ref_c).abs().max() / ref_c.abs().max()),
            }
        torch.backends.cuda.matmul.allow_tf32 = False
    return out


def attention_backends(lm_dir: str) -> list[dict]:
    """Where bf16 loses: one LM memory step (Pythia-410m-sized, mem 511, full window) at 256 envs,
    eager and static step, fp32 and bf16 weights, under each of PyTorch's attention kernels."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from models.frozen_lm import load_frozen_memory

    n_envs, mem_len = (4, 20) if TINY else (256, 511)
    backends = {"default": None, "math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION}
    rows = []
    device = torch.device(DEVICE)
    for precision in ("fp32", "bf16"):
        for static in (False, True):
            memory, vocabulary = load_frozen_memory(lm_dir, mem_len, lm_mode="causal", precision=precision, static=static)
            memory.to(device)
            state = memory.initial_state(n_envs)
            emb = vocabulary.embeddings()
            gen = torch.Generator(device="cpu").manual_seed(0)
            starts = torch.zeros(n_envs, dtype=torch.bool, device=device)

            def token():
                return emb[torch.randint(0, emb.shape[0], (n_envs,), generator=gen).to(emb.device)]

            with torch.no_grad():
                for _ in range(mem_len):  # fill the window
                    memory.step(token(), state, starts)
                x = token()
                for name, backend in backends.items():
                    row = {"precision": precision, "step": "static" if static else "eager", "kernel": name}
                    try:
                        with sdpa_kernel(backend) if backend is not None else _nothing():
                            row["ms"] = time_call(lambda: memory.peek(x, state, starts), repeats=10)
                    except RuntimeError as err:  # a kernel that does not take these inputs
                        row["error"] = str(err).splitlines()[0][:120]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            del memory, state
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
    return rows


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks this script only")
    parser.add_argument("--scale", action="store_true", help="only the n_envs x precision table")
    parser.add_argument("--concurrent", action="store_true", help="only the concurrent-trials table")
    parser.add_argument("--attention", action="store_true",
                        help="only the LM step at 256 envs per attention kernel, fp32 and bf16, eager and static")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one trial of --concurrent: its settings as JSON
    args = parser.parse_args(argv)
    if args.worker:
        return concurrent_worker(args)
    global DEVICE, TINY
    if args.smoke:
        DEVICE, TINY = "cpu", True
        parser.set_defaults(updates=1)
        args = parser.parse_args(argv)
    elif not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    result = {"device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (smoke)", "torch": torch.__version__, "train": [], "errors": []}
    with tempfile.TemporaryDirectory(prefix="helm-gpu-") as tmp:
        if args.scale or args.concurrent or args.attention:
            lm_dir = save_pythia_410m_sized(Path(tmp) / "pythia410m")
            if args.attention:
                try:
                    result["attention"] = attention_backends(lm_dir)
                except Exception:
                    result["errors"].append("attention: " + traceback.format_exc(limit=4))
            if args.scale:
                run_scale(args, result, lm_dir)
            if args.concurrent:
                run_concurrent(args, result, lm_dir)
        else:
            run_all(args, result, Path(tmp))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))
    return 1 if args.smoke and result["errors"] else 0


def run_all(args, result: dict, tmp: Path) -> None:
    """Every training row, then the precision check; a failure is recorded and the rest still run."""
    lm_dir = save_pythia_410m_sized(tmp / "pythia410m")
    clip_dir = save_vit_b16_clip(tmp / "clip")
    db = write_random_database(clip_dir, lm_dir, tmp / "db.pt", dim=clip_projection_dim(clip_dir))
    lm = {"lm": lm_dir, "lm_mode": "causal", "mem_len": 511}
    runs = [
        ("CNN-PPO", {}), ("Impala-PPO", {"n_batches": 2}),
        ("HELM", {"lm": save_transfo_xl(tmp / "trxl"), "mem_len": 511, "beta": 100.0}),  # the papers' LM
        ("HELM", {**lm, "beta": 100.0}),
        ("HELMv2", {**lm, "clip_model": clip_dir}),
        ("HELMv2", {**lm, "clip_model": clip_dir, "clip_cache_size": 0}),
        ("SHELM", {**lm, "clip_model": clip_dir, "semantic_db": db, "topk": 1}),
        ("SHELM", {**lm, "clip_model": clip_dir, "semantic_db": db, "topk": 4, "mem_len": 1021}),
    ]
    if not args.skip_train:
        for model, overrides in runs:
            try:
                row = train_speed(model, overrides, args.updates, rollout=8 if TINY else 128)
                result["train"].append(row)
                print(json.dumps(row), flush=True)
            except Exception as err:  # one failure must not cost the others on a short GPU lease
                result["errors"].append(f"{model} {overrides}: {traceback.format_exc(limit=4)}")
                print(f"FAILED {model}: {err!r}", flush=True)
    try:
        result["precision"] = precision(lm_dir, clip_dir)
        print(json.dumps(result["precision"]), flush=True)
    except Exception:
        result["errors"].append("precision: " + traceback.format_exc(limit=4))
        print(result["errors"][-1], flush=True)


SCALE_ENVS = (16, 64, 256)
CONCURRENT = (1, 2, 4, 8)


def run_scale(args, result: dict, lm_dir: str) -> None:
    """CNN-PPO and HELM at 16/64/256 envs, HELM in fp32 and bf16 (n_batches 8: minibatches grow with n_envs)."""
    helm = {"lm": lm_dir, "lm_mode": "causal", "mem_len": 511, "beta": 100.0}
    envs = (2, 4) if TINY else SCALE_ENVS
    rows = [("CNN-PPO", {"n_envs": n}) for n in envs]
    rows += [("HELM", {**helm, "n_envs": n, "precision": p}) for n in envs for p in ("fp32", "bf16")]
    # the rollout step captured in a CUDA graph (the FrozenHopfield inside it: no frame cache)
    graph = {"cuda_graph": True, "hopfield_cache_size": 0}
    rows += [("CNN-PPO", {"n_envs": envs[0], "cuda_graph": True})]
    rows += [("HELM", {**helm, **graph, "n_envs": n, "precision": p}) for n in (envs[0], envs[-1]) for p in ("fp32", "bf16")]
    if TINY:  # on the CPU the capture wrapper runs without a graph: its buffers and copies, not the capture
        import trainers.run

        trainers.run._check_cuda_graph = lambda *args: None
    for model, overrides in rows:
        try:
            row = train_speed(model, overrides, args.updates, rollout=8 if TINY else 128)
            result["train"].append(row)
            print(json.dumps(row), flush=True)
        except Exception as err:
            result["errors"].append(f"{model} {overrides}: {traceback.format_exc(limit=4)}")
            print(f"FAILED {model}: {err!r}", flush=True)


def run_concurrent(args, result: dict, lm_dir: str) -> None:
    """N HELM trials of 16 envs at once, each its own process on the same GPU: aggregate steps/s."""
    import subprocess

    result["concurrent"] = []
    overrides = {"lm": lm_dir, "lm_mode": "causal", "mem_len": 511, "beta": 100.0}
    for n in ((1, 2) if TINY else CONCURRENT):
        worker = json.dumps({"overrides": overrides, "updates": args.updates, "smoke": TINY})
        cmd = [sys.executable, __file__, "--worker", worker]
        tick = time.perf_counter()
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
        outs = [p.communicate()[0] for p in procs]
        wall = time.perf_counter() - tick
        rows = [json.loads(out.strip().splitlines()[-1]) for out, p in zip(outs, procs) if p.returncode == 0 and out.strip()]
        if len(rows) < n:
            result["errors"].append(f"concurrent {n}: {n - len(rows)} of the trials failed")
            continue
        row = {"trials": n, "aggregate_steps_per_s": sum(r["mean_train_steps_per_s"] for r in rows),
               "per_trial_steps_per_s": [r["mean_train_steps_per_s"] for r in rows],
               "peak_gpu_mib_per_trial": max((r["peak_gpu_mib"] or 0) for r in rows), "wall_s": wall}
        result["concurrent"].append(row)
        print(json.dumps(row), flush=True)


def concurrent_worker(args) -> int:
    """One trial of --concurrent (a separate process): its timed updates, as one JSON line."""
    global DEVICE, TINY
    spec = json.loads(args.worker)
    TINY = spec["smoke"]
    DEVICE = "cpu" if TINY else "cuda"
    row = train_speed("HELM", spec["overrides"], spec["updates"], rollout=8 if TINY else 128)
    print(json.dumps(row), flush=True)
    return 0


def summary(result: dict) -> str:
    """The rows as a table, then the precision check's timings, then how many rows failed."""
    lines = [f"device: {result['device']}", "",
             "| model | overrides | train steps/s (mean) | env % | act % | update % | peak GPU MiB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in result["train"]:
        split = row["split_pct"]
        overrides = ", ".join(f"{k}={Path(str(v)).name}" for k, v in row["overrides"].items())
        peak = "-" if row["peak_gpu_mib"] is None else f"{row['peak_gpu_mib']:.0f}"
        lines.append(f"| {row['model']} | {overrides} | {row['train_steps_per_s']:.1f} ({row['mean_train_steps_per_s']:.1f}) "
                     f"| {split['env']:.0f} | {split['act']:.0f} | {split['update']:.0f} | {peak} |")
    for mode, numbers in result.get("precision", {}).items():
        lines.append(f"precision {mode}: LM step {numbers['lm_step_ms']:.2f} ms (max rel. dev. {numbers['lm_max_rel_dev']:.1e}), "
                     f"CLIP x16 {numbers['clip16_ms']:.1f} ms (max rel. dev. {numbers['clip_max_rel_dev']:.1e})")
    for row in result.get("attention", []):
        timing = f"{row['ms']:.2f} ms" if "ms" in row else f"not available ({row['error']})"
        lines.append(f"LM step, {row['precision']}, {row['step']} step, {row['kernel']} attention: {timing}")
    for row in result.get("concurrent", []):
        lines.append(f"concurrent HELM trials: {row['trials']}: aggregate {row['aggregate_steps_per_s']:.0f} steps/s, "
                     f"peak {row['peak_gpu_mib_per_trial']:.0f} MiB per trial")
    lines.append(f"{len(result['errors'])} failed")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
