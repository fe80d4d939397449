"""Bad LM / CLIP / tokenizer / SHELM inputs: each is one line (a UserError), at once, and prints nothing else.

All models are tiny ones saved to disk like real ones; hub ids are never downloaded.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from models import build_agent
from models.clip_encoder import load_clip, load_clip_tokenizer
from models.lm_memory import load_frozen_lm
from models.frozen_lm import load_lm_tokenizer
from models.semantic_db import build_database, save_database
from tests.tiny_clip import save_tiny_clip, save_wordpiece_tokenizer
from tests.tiny_lms import tiny_bert, tiny_gpt2
from utils import config
from utils.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, str]:
    """Good tiny models and directories that are broken in one way each."""
    root = tmp_path_factory.mktemp("loading")
    d = {
        "root": str(root),
        "clip": str(save_tiny_clip(root / "clip")),
        "gpt2": tiny_gpt2(str(root / "gpt2")),
        "bert": tiny_bert(str(root / "bert"), with_tokenizer=False),
        "tokenizer_only": str(save_wordpiece_tokenizer(root / "tokenizer_only")),
    }
    save_wordpiece_tokenizer(root / "bert")  # shares whole words with the tiny CLIP tokenizer, for SHELM
    (root / "empty").mkdir()
    d["empty"] = str(root / "empty")
    (root / "a_file.txt").write_text("not a model\n")
    d["file"] = str(root / "a_file.txt")

    def variant(name: str, config_edit=None, weights_from: str | None = None, weights: bytes | None = None,
                config_text: str | None = None) -> None:
        path = root / name
        path.mkdir()
        cfg = json.loads((Path(d["gpt2"]) / "config.json").read_text())
        if config_edit:
            config_edit(cfg)
        (path / "config.json").write_text(config_text if config_text is not None else json.dumps(cfg))
        if weights_from:
            shutil.copy(Path(weights_from) / "model.safetensors", path / "model.safetensors")
        if weights is not None:
            (path / "model.safetensors").write_bytes(weights)
        d[name] = str(path)

    variant("foreign_weights", weights_from=d["bert"])  # GPT-2 config, BERT weights: all GPT-2 weights missing
    variant("wrong_shapes", config_edit=lambda c: c.update(n_embd=64), weights_from=d["gpt2"])
    variant("corrupt_weights", weights=b"garbage, not safetensors")
    variant("no_weights")
    variant("bad_json", config_text="{not json", weights_from=d["gpt2"])
    variant("no_model_type", config_edit=lambda c: c.pop("model_type"), weights_from=d["gpt2"])
    return d


LOAD = {
    "clip": load_clip,
    "lm": load_frozen_lm,
    "lm_tokenizer": load_lm_tokenizer,
    "clip_tokenizer": load_clip_tokenizer,
}

# (what is loaded, the name ({key} is a path from `dirs`), a substring of the one-line error)
BAD_LOADS = [
    ("clip", "{root}/missing_clip", "does not exist"),
    ("clip", "./no_such_dir/clip", "does not exist"),
    ("clip", "{gpt2}", "is a gpt2 model, not a CLIP model"),
    ("clip", "{bert}", "is a bert model, not a CLIP model"),
    ("clip", "{tokenizer_only}", "has no config.json"),
    ("clip", "{empty}", "has no config.json"),
    ("clip", "{file}", "is a file"),
    ("clip", "nobody-xyz/not-a-cached-clip", "not in the local cache and the hub is offline"),
    ("clip", "not a valid id!", "neither an existing directory nor a valid hub id"),
    ("lm", "{root}/missing_lm", "does not exist"),
    ("lm", "{clip}", "not a language model"),
    ("lm", "{empty}", "has no config.json"),
    ("lm", "{tokenizer_only}", "has no config.json"),
    ("lm", "{foreign_weights}", "not in its checkpoint"),
    ("lm", "{wrong_shapes}", "do not have the shapes"),
    ("lm", "{corrupt_weights}", "cannot load LM"),
    ("lm", "{no_weights}", "no file named"),
    ("lm", "{bad_json}", "cannot read"),
    ("lm", "{no_model_type}", "has no model_type"),
    ("lm", "nobody-xyz/not-a-cached-model", "minilm"),
    ("lm_tokenizer", "{gpt2}", "has no vocabulary"),
    ("lm_tokenizer", "{clip}", "not a language model"),
    ("lm_tokenizer", "{root}/missing_tokenizer", "does not exist"),
    ("lm_tokenizer", "nobody-xyz/not-a-cached-tokenizer", "not in the local cache"),
    ("clip_tokenizer", "{gpt2}", "not a CLIP model"),
]


@pytest.mark.parametrize("what,name,expected", BAD_LOADS, ids=[f"{w}-{n}" for w, n, _ in BAD_LOADS])
def test_bad_model_is_one_line_at_once(dirs, capfd, monkeypatch, what, name, expected):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        LOAD[what](name.format(**dirs))
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert expected in message and "\n" not in message
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no load reports, progress bars or retry warnings


@pytest.mark.parametrize("what", ["clip", "lm", "lm_tokenizer"])
def test_uncached_hub_id_with_the_hub_unreachable_fails_at_once(what, capfd, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("utils.hub.hub_offline", lambda: False)
    monkeypatch.setattr("utils.hub.hub_reachable", lambda: False)
    start = time.monotonic()
    with pytest.raises(UserError, match="not in the local cache and the hub is unreachable: download it where the hub is reachable, `huggingface-cli download "):
        LOAD[what]("nobody-xyz/not-cached")
    assert time.monotonic() - start < 5
    assert capfd.readouterr() == ("", "")


def test_good_models_load_quietly(dirs, capfd):
    load_clip(dirs["clip"])
    load_frozen_lm(dirs["gpt2"])
    load_lm_tokenizer(dirs["tokenizer_only"])
    load_clip_tokenizer(dirs["clip"])
    assert capfd.readouterr() == ("", "")


# -- SHELM: CLIP and templates are checked before the database -------------------------------------


@pytest.fixture(scope="module")
def shelm_db(dirs):
    from transformers import AutoTokenizer

    clip_dir, lm_dir = dirs["clip"], dirs["bert"]
    db = build_database(load_clip(clip_dir), AutoTokenizer.from_pretrained(clip_dir), AutoTokenizer.from_pretrained(lm_dir),
                        ["{}"], clip_dir, lm_dir, "none", progress=False)
    path = Path(dirs["root"]) / "db.pt"
    save_database(db, path)
    return str(path)


BAD_SHELM = [  # config overrides ({key} from `dirs`), a substring of the error, text the error must not have
    ({"clip_model": "{gpt2}", "semantic_db": "{root}/no_db.pt"}, "not a CLIP model", "prepare_embeddings"),
    ({"clip_model": "{root}/no_clip", "semantic_db": "{root}/no_db.pt"}, "does not exist", "prepare_embeddings"),
    ({"clip_model": "{tokenizer_only}", "semantic_db": "{root}/no_db.pt"}, "has no config.json", "prepare_embeddings"),
    ({"templates": "bogus", "semantic_db": "{root}/no_db.pt"}, "--templates must be one of", "prepare_embeddings"),
    ({"templates": "{root}/no_templates.txt", "semantic_db": "{root}/no_db.pt"}, "is neither", "prepare_embeddings"),
    ({"semantic_db": "{root}/no_db.pt"}, "not found; build it with: python prepare_embeddings.py", "Traceback"),
    ({"semantic_db": "{file}"}, "is corrupt", "Traceback"),
]


@pytest.mark.parametrize("overrides,expected,unexpected", BAD_SHELM)
def test_shelm_checks_clip_and_templates_before_the_database(dirs, shelm_db, overrides, expected, unexpected):
    cfg = config.defaults()
    cfg.update(env="CueRecall-D1-v0", seed=0, lm=dirs["bert"], clip_model=dirs["clip"], semantic_db=shelm_db, mem_len=6)
    cfg.update({key: value.format(**dirs) for key, value in overrides.items()})
    with pytest.raises(UserError) as info:
        build_agent("SHELM", (56, 56, 3), 2, cfg)
    message = str(info.value)
    assert expected in message and unexpected not in message and "\n" not in message


def test_shelm_with_good_inputs_builds(dirs, shelm_db):
    cfg = config.defaults()
    cfg.update(env="CueRecall-D1-v0", seed=0, lm=dirs["bert"], clip_model=dirs["clip"], semantic_db=shelm_db, mem_len=6)
    assert build_agent("SHELM", (56, 56, 3), 2, cfg).encoder.topk >= 1
