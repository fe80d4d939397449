"""Write configs/<Family>/<Env>/<Model>/config.json for every experiment of the three papers.

The tables below are the per-env settings of the authors' code (github.com/ml-jku/helm, HEAD
7f101e3) as collected in the project's paper notes; everything else is the PPO setup shared by all
their configs. Edit the tables here and re-run ``python configs/generate.py``: a test checks that
the files on disk are what this script writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.registry import MODELS  # noqa: E402  (what a model is: its kind)

ROOT = Path(__file__).resolve().parent
CODE = "the authors' code (github.com/ml-jku/helm, HEAD 7f101e3)"
FIRST_SEED = 4089113149  # the first of the 30 seeds in the code's seeds.pkl, used by most configs

# The papers' LM, run by our own Transformer-XL (models/transfo_xl.py; transformers 5 removed it).
LM = "transfo-xl-wt103"
LM_NOTE = (
    f"LM: the papers' Transformer-XL wt103 ({LM}, hub checkpoint transfo-xl/transfo-xl-wt103), run by this "
    "project's own implementation since transformers 5 removed TransfoXL; --var lm=EleutherAI/pythia-410m or "
    "lm=minilm swap in another LM"
)
CLIP_SHELM = "openai/clip-vit-base-patch16"  # SHELM's ViT-B/16, as in its prepare_embeddings.py
CLIP_HELMV2 = "openai/clip-vit-base-patch32"
CLIP_HELMV2_NOTE = (
    "HELMv2's CLIP RN50 is not in transformers, so the image encoder is the closest supported CLIP, "
    f"{CLIP_HELMV2} (its speed and zero-shot accuracy are nearest to RN50's)"
)

SHARED = {
    "n_envs": 16, "n_epochs": 3, "n_batches": 8, "gamma": 0.99, "gae_lambda": 0.99, "clip_range": 0.2,
    "clip_range_vf": None, "vf_coef": 0.5, "max_grad_norm": 0.5, "optimizer": "AdamW", "epsilon": 1e-8,
    "norm_reward": True,
}
SHARED_NOTE = (
    "shared PPO settings of all its configs (AdamW eps 1e-8, clip 0.2, no value clipping, vf 0.5, grad norm 0.5, "
    "gamma = GAE lambda = 0.99, 3 epochs x 8 minibatches, constant lr and entropy)"
)

# MiniGrid and MiniWorld: lr / rollout / ent_coef [/ mem_len [/ top-k]] per model (Impala-PPO's last
# number is sequences per minibatch, CNN-PPO has no memory).
MINIGRID = {  # dir name: (gym id, steps, seed, {model: settings})
    "DoorKey5x5": ("MiniGrid-DoorKey-5x5-v0", 500_000, FIRST_SEED, {
        "HELM": (1e-4, 32, 0.005, 255), "HELMv2": (3e-4, 32, 0.005, 255), "SHELM": (1e-4, 32, 0.005, 511, 2),
        "Impala-PPO": (3e-4, 32, 0.05, 8), "CNN-PPO": (5e-5, 64, 0.005)}),
    "DoorKey6x6": ("MiniGrid-DoorKey-6x6-v0", 500_000, FIRST_SEED, {
        "HELM": (3e-4, 128, 0.01, 255), "HELMv2": (3e-4, 128, 0.01, 255), "SHELM": (5e-4, 128, 0.01, 511, 2),
        "Impala-PPO": (5e-5, 64, 0.01, 16), "CNN-PPO": (1e-4, 64, 0.001)}),
    "DynamicObstacles": ("MiniGrid-Dynamic-Obstacles-Random-5x5-v0", 500_000, FIRST_SEED, {
        "HELM": (3e-4, 64, 0.005, 63), "HELMv2": (1e-4, 64, 0.005, 63), "SHELM": (1e-4, 64, 0.005, 253, 4),
        "Impala-PPO": (3e-4, 128, 0.05, 16), "CNN-PPO": (3e-4, 64, 0.001)}),
    "KeyCorridor": ("MiniGrid-KeyCorridorS3R1-v0", 500_000, FIRST_SEED, {
        "HELM": (3e-4, 32, 0.05, 255), "HELMv2": (5e-4, 32, 0.05, 255), "SHELM": (5e-5, 32, 0.05, 1021, 4),
        "Impala-PPO": (5e-5, 64, 0.05, 8), "CNN-PPO": (1e-5, 64, 0.005)}),
    "Memory": ("MiniGrid-MemoryS11-v0", 2_000_000, 0, {
        "HELM": (1e-4, 128, 0.005, 15), "HELMv2": (3e-4, 128, 0.005, 15), "SHELM": (5e-4, 128, 0.005, 15, 1),
        "Impala-PPO": (5e-5, 128, 0.001, 4), "CNN-PPO": (5e-5, 256, 0.01)}),
    "RedBlueDoors": ("MiniGrid-RedBlueDoors-6x6-v0", 500_000, FIRST_SEED, {
        "HELM": (3e-4, 128, 0.05, 511), "HELMv2": (3e-4, 128, 0.05, 511), "SHELM": (5e-4, 128, 0.05, 512, 1),
        "Impala-PPO": (5e-5, 64, 0.05, 8), "CNN-PPO": (5e-5, 256, 0.05)}),
    "Unlock": ("MiniGrid-Unlock-v0", 500_000, FIRST_SEED, {
        "HELM": (3e-4, 64, 0.01, 255), "HELMv2": (1e-4, 64, 0.01, 255), "SHELM": (5e-5, 64, 0.01, 511, 2),
        "Impala-PPO": (5e-5, 128, 0.01, 16), "CNN-PPO": (5e-5, 64, 0.01)}),
}
MINIWORLD = {
    "CollectHealth": ("MiniWorld-CollectHealth-v0", 500_000, FIRST_SEED, {
        "HELM": (5e-5, 128, 0.001, 63), "HELMv2": (1e-4, 128, 0.001, 63), "SHELM": (5e-5, 128, 0.001, 127, 2),
        "Impala-PPO": (1e-4, 64, 0.005, 8), "CNN-PPO": (5e-4, 128, 0.005)}),
    "FourRooms": ("MiniWorld-FourRooms-v0", 500_000, FIRST_SEED, {
        "HELM": (5e-5, 128, 0.005, 255), "HELMv2": (5e-5, 128, 0.005, 255), "SHELM": (1e-4, 128, 0.005, 1021, 4),
        "Impala-PPO": (5e-5, 128, 0.01, 4), "CNN-PPO": (5e-5, 128, 0.01)}),
    "MazeS3Fast": ("MiniWorld-MazeS3Fast-v0", 500_000, FIRST_SEED, {
        "HELM": (5e-5, 128, 0.05, 255), "HELMv2": (1e-4, 128, 0.05, 255), "SHELM": (5e-5, 64, 0.05, 255, 1),
        "Impala-PPO": (5e-5, 128, 0.01, 8), "CNN-PPO": (5e-5, 128, 0.05)}),
    "PickupObjs": ("MiniWorld-PickupObjs-v0", 500_000, FIRST_SEED, {
        "HELM": (5e-5, 64, 0.001, 511), "HELMv2": (5e-5, 64, 0.001, 511), "SHELM": (5e-5, 64, 0.001, 2045, 4),
        "Impala-PPO": (5e-5, 128, 0.005, 16), "CNN-PPO": (5e-5, 64, 0.01)}),
    "PutNext": ("MiniWorld-PutNext-v0", 500_000, FIRST_SEED, {
        "HELM": (5e-5, 32, 0.01, 255), "HELMv2": (5e-4, 32, 0.01, 255), "SHELM": (3e-4, 32, 0.01, 256, 1),
        "Impala-PPO": (3e-4, 64, 0.05, 4), "CNN-PPO": (5e-5, 128, 0.005)}),
    "Sign": ("MiniWorld-Sign-v0", 500_000, FIRST_SEED, {
        "HELM": (5e-4, 64, 0.01, 31), "HELMv2": (5e-4, 64, 0.01, 31), "SHELM": (1e-4, 64, 0.01, 63, 2),
        "Impala-PPO": (3e-4, 32, 0.01, 8), "CNN-PPO": (1e-4, 64, 0.01)}),
    "TMaze": ("MiniWorld-TMaze-v0", 500_000, FIRST_SEED, {
        "HELM": (1e-4, 64, 0.001, 255), "HELMv2": (1e-4, 64, 0.001, 255), "SHELM": (1e-4, 64, 0.001, 1021, 4),
        "Impala-PPO": (5e-5, 128, 0.01, 4), "CNN-PPO": (1e-4, 64, 0.01)}),
    "YMaze": ("MiniWorld-YMaze-v0", 500_000, FIRST_SEED, {
        "HELM": (5e-5, 64, 0.005, 255), "HELMv2": (1e-4, 64, 0.005, 255), "SHELM": (1e-4, 64, 0.005, 511, 2),
        "Impala-PPO": (5e-5, 64, 0.01, 4), "CNN-PPO": (1e-4, 64, 0.05)}),
}
# The code has no Procgen or RandomMaze configs: `--var env=maze` ran with its root config.json.
ROOT_SETTINGS = {"HELM": (1e-4, 128, 0.05, 511), "Impala-PPO": (1e-4, 128, 0.05, 8), "CNN-PPO": (1e-4, 128, 0.05)}
PROCGEN = {game.capitalize(): game for game in ("caveflyer", "dodgeball", "heist", "jumper", "maze", "miner")}


def model_keys(model: str, settings: tuple, n_envs: int) -> dict:
    lr, rollout, ent = settings[:3]
    keys = {"model": model, "learning_rate": lr, "n_rollout_steps": rollout, "ent_coef": ent}
    if model == "Impala-PPO":  # their batch_size counts sequences; ours are whole per-env rollouts
        keys["n_batches"] = max(1, n_envs // settings[3])
    elif MODELS[model].kind == "frozen_lm":
        keys.update(mem_len=settings[3], lm=LM, lm_mode="causal")
        if model == "HELM":
            keys["beta"] = 100.0
        if model == "HELMv2":
            keys["clip_model"] = CLIP_HELMV2
        if model == "SHELM":
            keys.update(clip_model=CLIP_SHELM, topk=settings[4], templates="none")
    return keys


def notes(model: str, settings: tuple, seed_note: str = "", from_file: bool = True) -> list[str]:
    out = []
    if model == "Impala-PPO":
        origin = "" if from_file else ", the most common value of their per-env LSTM configs"
        out.append(f"{settings[3]} sequences per minibatch in their LSTM{origin}, i.e. n_batches = 16 envs / {settings[3]}")
    if model == "HELM":
        out.append("beta 100 as in the code's root config.json (its per-env HELM configs have null, which crashes)")
    if MODELS[model].kind == "frozen_lm":
        out.append(LM_NOTE)
    if model == "HELMv2":
        out.append(CLIP_HELMV2_NOTE)
    if model == "SHELM":
        out.append(f"top-k {settings[4]} words per step, mem_len counts tokens; CLIP ViT-B/16 ({CLIP_SHELM}) as in the paper; "
                   "no prompt templates on this family")
    if seed_note:
        out.append(seed_note)
    return out


def grid_family(family: str, table: dict, paper: str) -> dict[Path, dict]:
    configs = {}
    for env_dir, (env_id, steps, seed, models) in table.items():
        for model, settings in models.items():
            values = {"env": env_id, **SHARED, "n_steps": steps, "seed": seed, **model_keys(model, settings, 16)}
            fields = "lr / rollout / ent_coef" + {"HELM": " / mem_len", "HELMv2": " / mem_len", "SHELM": " / mem_len / top-k",
                                                   "Impala-PPO": " / sequences per minibatch"}.get(model, "")
            seed_note = ""
            if family == "MiniGrid" and env_dir != "Memory" and (model == "CNN-PPO" or (model == "Impala-PPO" and env_dir == "KeyCorridor")):
                seed_note = f"seed: the original file has null (a random seed); we fix the first of seeds.pkl, {FIRST_SEED}"
            if env_dir == "Memory":
                seed_note = "seed 0 as in the code's MiniGrid Memory configs"
                if model == "SHELM":
                    seed_note += ("; the original SHELM file names its model 'Memory' (an internal name) and an internal "
                                  "version at commit 0990755 used seed 2995358383")
            if env_id == "MiniWorld-PickupObjs-v0":
                seed_note = "gym-miniworld's PickupObjs is MiniWorld-PickupObjects-v0 in miniworld 2.x (the id is mapped)"
            text = [f"{paper}; numbers from {CODE}, configs/{family}/{env_dir}/{model}/config.json: {fields}",
                    SHARED_NOTE, f"budget {steps:,} steps", "env id added (the original files lack it)",
                    *notes(model, settings, seed_note)]
            configs[ROOT / family / env_dir / model / "config.json"] = {**values, "source": "; ".join(text)}
    return configs


def root_family(family: str, envs: dict[str, str], paper: str, steps: int, norm_reward: bool, extra: str) -> dict[Path, dict]:
    configs = {}
    for env_dir, env_id in envs.items():
        for model, settings in ROOT_SETTINGS.items():
            values = {"env": env_id, **SHARED, "norm_reward": norm_reward, "n_steps": steps, "seed": FIRST_SEED,
                      **model_keys(model, settings, 16)}
            text = [f"{paper}; {CODE} has no {family} config, its runs used the root config.json (lr 1e-4, rollout 128, "
                    "ent_coef 0.05, mem_len 511, beta 100, seed = first of seeds.pkl), so do we: the paper's own "
                    "hyperparameters for this family are not known", SHARED_NOTE, f"budget {steps:,} steps", extra,
                    *notes(model, settings, from_file=False)]
            configs[ROOT / family / env_dir / model / "config.json"] = {**values, "source": "; ".join(text)}
    return configs


def psychlab() -> dict[Path, dict]:
    configs = {}
    for model in (name for name, spec in MODELS.items() if spec.kind == "frozen_lm"):
        values = {"env": "Psychlab-ContinuousRecognition-v0", **SHARED, "n_envs": 64, "n_steps": 10_000_000,
                  "seed": FIRST_SEED, **model_keys(model, (7e-4, 256, 0.01, 255, 1), 64)}
        if model == "SHELM":
            values["templates"] = "psychlab"
        text = [f"SHELM (NeurIPS 2023), continuous recognition; numbers from {CODE}, configs/Psychlab/{model}/config.json: "
                "lr 7e-4, 64 envs, rollout 256, ent_coef 0.01, mem_len 255, top-k 1, the same for the three models",
                SHARED_NOTE, "budget 10,000,000 steps", "env id added (the original files lack it)",
                *notes(model, (7e-4, 256, 0.01, 255, 1))]
        if model == "SHELM":
            text[-1] = text[-1].replace("no prompt templates on this family", "the six Psychlab prompt templates")
            text.append("their beta 100 is unused by SHELM and left out")
        configs[ROOT / "Psychlab" / "ContinuousRecognition" / model / "config.json"] = {**values, "source": "; ".join(text)}
    return configs


def all_configs() -> dict[Path, dict]:
    return {
        **grid_family("MiniGrid", MINIGRID, "SHELM (NeurIPS 2023) MiniGrid comparison of HELM, HELMv2, SHELM, LSTM and CNN "
                      "(KeyCorridor also HELM, ICML 2022; DynamicObstacles HELM's representation analysis)"),
        **grid_family("MiniWorld", MINIWORLD, "HELMv2 (NeurIPS 2022 workshop) and SHELM (NeurIPS 2023) MiniWorld comparison"),
        **root_family("Procgen", PROCGEN, "HELM (ICML 2022) Procgen comparison, memory mode, unbounded levels", 25_000_000, True,
                      "EnvPool's <Game>Memory-v0 (distribution_mode memory, num_levels 0, start_level 0, 64x64x3)"),
        **root_family("RandomMaze", {"RandomMaze": "RandomMaze-v0"}, "HELM (ICML 2022) RandomMaze comparison", 2_000_000, False,
                      "no reward normalisation, as in the code; the maze generator is ours (a perfect maze, "
                      "where the original used mazelab's complexity/density 0.75 generator)"),
        **psychlab(),
    }


def render(values: dict) -> str:
    return json.dumps(values, indent=2) + "\n"


def main() -> int:
    for path, values in all_configs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(values))
    print(f"wrote {len(all_configs())} configs under {ROOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
