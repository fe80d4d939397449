"""What a model is, said once: config validation, the agent builder, report.py's comparisons and
configs/generate.py all read this registry.

Adding a trained memory is one file (a `models.memory.Memory` subclass with a
`from_config(in_dim, cfg)` classmethod) and one line here: `ModelSpec("X-PPO", memory="module:Class")`.
It is then built like the LSTM (the Impala-PPO CNN, the memory, the heads), trains, resumes,
evaluates, sweeps and is reported like every other model.
"""

from __future__ import annotations

from dataclasses import dataclass

from utils.errors import UserError

# What a model's memory is, and the comparisons report.py makes: every model against every model
# of a lower rank (a frozen LM against trained memories and against no memory, and so on).
KINDS = {"frozen_lm": 2, "trained": 1, "none": 0}

LM_KEYS = ("lm", "lm_mode", "lm_layers", "mem_len", "mem_reset")
CLIP_KEYS = ("clip_model", "clip_cache_size")
TRXL_KEYS = ("trxl_layers", "trxl_dim", "trxl_heads", "trxl_mem_len")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "none", "trained" or "frozen_lm" (see KINDS)
    build: str | None = None  # "module:callable(obs_shape, n_actions, cfg)"; trained memories: None
    memory: str | None = None  # trained memories: "module:MemoryClass"
    keys: tuple[str, ...] = ()  # the model-specific config keys it reads
    alias_of: str | None = None  # the same model under another name
    # checkpoints of format <= 2 named the agent's parts differently: (old prefix, new prefix)
    legacy_prefixes: tuple[tuple[str, str], ...] = ()

    @property
    def has_memory(self) -> bool:
        return self.kind != "none"


_LSTM = dict(kind="trained", memory="models.recurrent:LSTMMemory",
             legacy_prefixes=(("cnn.", "encoder."), ("lstm.", "memory.rnn.")))

MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> None:
    """Add a model (one line per model, below; tests and users may add their own)."""
    if spec.kind not in KINDS:
        raise ValueError(f"model {spec.name}: kind must be one of {', '.join(KINDS)}")
    if (spec.build is None) == (spec.memory is None):
        raise ValueError(f"model {spec.name}: give exactly one of build= and memory=")
    MODELS[spec.name] = spec


register(ModelSpec("CNN-PPO", "none", build="models.baselines:cnn_ppo", legacy_prefixes=(("cnn.", "encoder."),)))
register(ModelSpec("MLP-PPO", "none", build="models.baselines:mlp_ppo"))
register(ModelSpec("Impala-PPO", **_LSTM))
register(ModelSpec("LSTM-PPO", alias_of="Impala-PPO", **_LSTM))
register(ModelSpec("GRU-PPO", "trained", memory="models.recurrent:GRUMemory"))
register(ModelSpec("TrXL-PPO", "trained", memory="models.gtrxl:GatedTransformerXL", keys=TRXL_KEYS))
register(ModelSpec("HELM", "frozen_lm", build="models.helm:HELM", keys=LM_KEYS + ("beta", "hopfield_cache_size"),
                   legacy_prefixes=(("cnn.", "skip."), ("hopfield.", "encoder.hopfield."))))
register(ModelSpec("HELMv2", "frozen_lm", build="models.helmv2:HELMv2", keys=LM_KEYS + CLIP_KEYS,
                   legacy_prefixes=(("cnn.", "skip."), ("image_encoder.", "encoder.image_encoder."),
                                    ("to_tokens.", "encoder.to_tokens."))))
register(ModelSpec("SHELM", "frozen_lm", build="models.shelm:SHELM",
                   keys=LM_KEYS + CLIP_KEYS + ("topk", "templates", "semantic_db"),
                   legacy_prefixes=(("cnn.", "skip."), ("image_encoder.", "encoder.image_encoder."))))


def spec_of(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UserError(f"unknown model '{name}': choose one of {', '.join(MODELS)}")
    return MODELS[name]


def model_keys() -> dict[str, tuple[str, ...]]:
    """Each model's own config keys (what config validation checks settings against)."""
    return {name: spec.keys for name, spec in MODELS.items()}


def upgrade_agent_state(model: str, state: dict, checkpoint_format: int) -> dict:
    """An agent state dict of an older checkpoint format, with today's parameter names."""
    if checkpoint_format > 2:
        return state
    renamed = {}
    for key, value in state.items():
        for old, new in spec_of(model).legacy_prefixes:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = value
    return renamed
