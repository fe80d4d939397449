"""Transformer-XL's vocab.pkl in its real formats, read without running anything the file names.

The fixtures were written by transformers 4.37.2 in a side venv (tests/make_trxl_vocab_fixtures.py):
trxl_vocab_437.pkl is what its `save_pretrained` writes (the tokenizer's __dict__, with regex,
sacremoses, tokenizers and transformers objects), trxl_vocab_legacy_torch.pkl is the hub's format
(a legacy, non-zip torch.save of the vocabulary's attributes).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from models.transfo_xl import _Inert, _read_vocab_file, load_vocab
from tests.tiny_lms import tiny_transfo_xl
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REAL = ("trxl_vocab_437.pkl", "trxl_vocab_legacy_torch.pkl")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((FIXTURES / "trxl_vocab_expected.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def trxl(tmp_path_factory) -> Path:
    return Path(tiny_transfo_xl(str(tmp_path_factory.mktemp("lm") / "tiny-trxl")))


def with_vocab(trxl: Path, dst: Path, vocab: bytes) -> str:
    """A copy of the tiny Transformer-XL directory with `vocab` as its vocab.pkl."""
    shutil.copytree(trxl, dst)
    (dst / "vocab.pkl").write_bytes(vocab)
    return str(dst)


# -- the real formats ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL)
def test_real_vocab_files_load(name, expected):
    vocab = load_vocab(str(FIXTURES / name))
    assert vocab.idx2sym == expected["idx2sym"] and len(vocab) == 40
    assert vocab.get_vocab()["door"] == 13 and vocab.decode([13, 14]) == "door key"
    assert vocab.convert_ids_to_tokens([28, 31]) == ["café", "東京"]
    assert vocab.all_special_tokens == ["<eos>", "<unk>"]


def test_the_437_file_references_only_allow_listed_globals_and_imports_none(expected):
    """The tokenizer objects become placeholders: sacremoses, tokenizers and transformers are never imported."""
    assert expected["globals"]["trxl_vocab_437.pkl"] == [
        "collections.Counter", "collections.OrderedDict", "re._compile", "sacremoses.normalize.MosesPunctNormalizer",
        "sacremoses.tokenize.MosesDetokenizer", "sacremoses.tokenize.MosesTokenizer", "tokenizers.AddedToken",
        "transformers.tokenization_utils.Trie",
    ]
    assert expected["globals"]["trxl_vocab_legacy_torch.pkl"] == ["collections.Counter", "collections.OrderedDict"]
    probe = (
        "import sys\nfrom models.transfo_xl import _read_vocab_file\n"
        "before = set(sys.modules)\n"
        f"data = _read_vocab_file({str(FIXTURES / REAL[0])!r})\n"
        "new = sorted(m for m in set(sys.modules) - before if m.split('.')[0] in ('sacremoses', 'tokenizers', 'transformers'))\n"
        "print(new, type(data['moses_tokenizer']).__mro__[1].__name__, data['punction_without_space_before_pattern'].args[1])"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "_Inert", "32"]  # 32: the pattern's flags, kept as data


# -- placeholders never run the real code ----------------------------------------------------------


class CallsReCompile:
    def __init__(self, pattern: str):
        self.pattern = pattern

    def __reduce__(self):
        return (re._compile, (self.pattern, 0))


@pytest.fixture
def fake_sacremoses(monkeypatch):
    """A stand-in `sacremoses.tokenize` module, only while pickling: loading must never import it."""
    module = types.ModuleType("sacremoses.tokenize")

    class MosesTokenizer:
        def __init__(self, payload=None):
            self.lang = "en"
            self.payload = payload

    MosesTokenizer.__module__, MosesTokenizer.__qualname__ = module.__name__, "MosesTokenizer"
    module.MosesTokenizer = MosesTokenizer
    monkeypatch.setitem(sys.modules, "sacremoses", types.ModuleType("sacremoses"))
    monkeypatch.setitem(sys.modules, "sacremoses.tokenize", module)
    return MosesTokenizer


def forget_sacremoses(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "sacremoses.tokenize", raising=False)
    monkeypatch.delitem(sys.modules, "sacremoses", raising=False)


@pytest.mark.parametrize("protocol", [0, 1, 2, 4])
def test_placeholders_never_call_the_real_callable(tmp_path, fake_sacremoses, monkeypatch, protocol):
    """re._compile("(") would raise; protocols 0/1 rebuild objects through copyreg._reconstructor."""
    state = {"idx2sym": ["<unk>", "a"], "pattern": CallsReCompile("("), "moses": fake_sacremoses()}
    path = tmp_path / "vocab.pkl"
    path.write_bytes(pickle.dumps(state, protocol=protocol))
    forget_sacremoses(monkeypatch)
    data = _read_vocab_file(str(path))
    assert "sacremoses.tokenize" not in sys.modules
    assert isinstance(data["pattern"], _Inert) and data["pattern"].args == ("(", 0)
    moses = data["moses"]
    assert isinstance(moses, _Inert) and not hasattr(moses, "lang") and moses.state == {"lang": "en", "payload": None}
    # protocols 0/1 call copyreg._reconstructor(cls, object, None): its placeholder holds the class's
    origin = moses._origin if protocol >= 2 else moses.args[0]._origin
    assert origin == "sacremoses.tokenize.MosesTokenizer"
    assert load_vocab(str(path)).idx2sym == ["<unk>", "a"]


# -- code is refused, whatever the format ---------------------------------------------------------


class RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class RunsExec:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


class RunsPopen:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.marker)],))


PAYLOADS = {
    "os.system": (RunsShell, f"{os.system.__module__}.system"),
    "exec": (RunsExec, "exec"),
    "subprocess.Popen": (RunsPopen, "subprocess.Popen"),
}


def save(obj, path: Path, form: str) -> None:
    """`obj` as a plain pickle, a legacy torch.save stream (the hub's format) or a zip torch.save archive."""
    if form == "pickle":
        path.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=form == "torch-zip")


def assert_one_line_refusal(err: UserError, path: Path, global_name: str) -> None:
    text = str(err)
    assert "\n" not in text and str(path) in text and global_name in text, text


@pytest.mark.parametrize("form", ["pickle", "torch-legacy", "torch-zip"])
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_code_is_refused_and_never_runs(tmp_path, form, payload):
    """The payload sits after a regex (allowed as a placeholder), so it is the payload that is named."""
    cls, global_name = PAYLOADS[payload]
    marker = tmp_path / "MARKER"
    path = tmp_path / "vocab.pkl"
    save({"idx2sym": ["<unk>", "a"], "pattern": re.compile("a+"), "evil": cls(marker)}, path, form)
    with pytest.raises(UserError) as caught:
        load_vocab(str(path))
    assert_one_line_refusal(caught.value, path, global_name)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["args", "state"])
def test_code_inside_a_placeholder_is_refused(tmp_path, fake_sacremoses, monkeypatch, where):
    marker = tmp_path / "MARKER"
    evil = CallsReCompile(RunsShell(marker)) if where == "args" else fake_sacremoses(RunsShell(marker))
    path = tmp_path / "vocab.pkl"
    path.write_bytes(pickle.dumps({"idx2sym": ["a"], "x": evil}))
    forget_sacremoses(monkeypatch)
    with pytest.raises(UserError) as caught:
        load_vocab(str(path))
    assert_one_line_refusal(caught.value, path, f"{os.system.__module__}.system")
    assert not marker.exists() and "sacremoses.tokenize" not in sys.modules


def test_a_global_is_never_imported_even_when_refused(tmp_path):
    path = tmp_path / "vocab.pkl"
    # protocol 4 STACK_GLOBAL of this.s (importing `this` prints the Zen of Python), with a newline in the name
    path.write_bytes(b"\x80\x04\x8c\x04this\x8c\x03s\nx\x93.")
    had = "this" in sys.modules
    with pytest.raises(UserError) as caught:
        load_vocab(str(path))
    assert_one_line_refusal(caught.value, path, "'this.s\\nx'")
    assert ("this" in sys.modules) == had


@pytest.mark.parametrize("form", ["torch-legacy", "torch-zip"])
def test_tensors_are_refused(tmp_path, form):
    path = tmp_path / "vocab.pkl"
    save({"idx2sym": ["a"], "t": torch.zeros(2)}, path, form)
    with pytest.raises(UserError) as caught:
        load_vocab(str(path))
    assert_one_line_refusal(caught.value, path, "torch._utils._rebuild_tensor_v2")


class WithPersistentId(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", "0") if isinstance(obj, bytearray) else None


def legacy_stream(obj, storage_keys: list[str]) -> bytes:
    """A legacy torch.save stream written by hand: magic, protocol, sys info, object, storage keys."""
    f = io.BytesIO()
    for head in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(head, f, protocol=2)
    WithPersistentId(f, protocol=2).dump(obj)
    pickle.dump(storage_keys, f, protocol=2)
    return f.getvalue()


@pytest.mark.parametrize(
    "obj, keys, message",
    [({"idx2sym": ["a"], "t": bytearray(b"x")}, [], "holds tensor data"), ({"idx2sym": ["a"]}, ["0"], "holds tensor storages")],
)
def test_persistent_ids_and_storages_are_refused(tmp_path, obj, keys, message):
    path = tmp_path / "vocab.pkl"
    path.write_bytes(legacy_stream(obj, keys))
    with pytest.raises(UserError, match=message) as caught:
        load_vocab(str(path))
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    path.write_bytes(legacy_stream({"idx2sym": ["a", "b"]}, []))  # the same stream without them reads
    assert load_vocab(str(path)).idx2sym == ["a", "b"]


# -- what HELM and SHELM do with a refused vocabulary ----------------------------------------------


def legacy_exploit(marker: Path) -> bytes:
    f = io.BytesIO()
    torch.save({"idx2sym": ["<unk>", "a"], "evil": RunsShell(marker)}, f, _use_new_zipfile_serialization=False)
    return f.getvalue()


def test_helm_goes_on_with_a_one_line_warning(trxl, tmp_path, capsys):
    from models import build_agent
    from utils.config import defaults

    marker = tmp_path / "MARKER"
    lm = with_vocab(trxl, tmp_path / "lm", legacy_exploit(marker))
    cfg = defaults() | {"model": "HELM", "lm": lm, "mem_len": 6, "seed": 0, "env": "MiniGrid-MemoryS7-v0"}
    agent = build_agent("HELM", (56, 56, 3), 7, cfg)
    capsys.readouterr()
    assert agent.vocabulary.token_texts([3, 4]) == ["#3", "#4"]
    assert agent.vocabulary.token_texts([3]) == ["#3"]  # warned once
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: no tokenizer for LM {lm!r} (refusing to unpickle "), err
    assert f"{os.system.__module__}.system" in err and f"{lm}/vocab.pkl" in err and err.endswith("memory tokens shown as ids\n")
    assert not marker.exists()


def test_prepare_embeddings_reads_the_437_vocabulary(trxl, tmp_path):
    import prepare_embeddings
    from tests.tiny_clip import save_tiny_clip

    clip = str(save_tiny_clip(tmp_path / "clip"))
    lm = with_vocab(trxl, tmp_path / "lm", (FIXTURES / REAL[0]).read_bytes())
    db = tmp_path / "db.pt"
    argv = ["--clip-model", clip, "--lm", lm, "--out", str(db), "--device", "cpu", "--no-progress"]
    assert prepare_embeddings.main(argv) == 0
    built = torch.load(db, weights_only=True)
    assert {"the", "door", "key", "red", "blue", "ball", "cat", "dog", "box", "lamp", "grey"} <= set(built["words"])
    assert built["lm_ids"].tolist()[built["words"].index("door")] == 13


def test_shelm_database_stops_on_a_refused_vocabulary_with_one_line(trxl, tmp_path, capsys):
    import prepare_embeddings
    from tests.tiny_clip import save_tiny_clip

    marker = tmp_path / "MARKER"
    clip = str(save_tiny_clip(tmp_path / "clip"))
    lm = with_vocab(trxl, tmp_path / "lm", legacy_exploit(marker))
    db = tmp_path / "db.pt"
    capsys.readouterr()
    argv = ["--clip-model", clip, "--lm", lm, "--out", str(db), "--device", "cpu", "--no-progress"]
    assert prepare_embeddings.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: refusing to unpickle "), err
    assert f"{os.system.__module__}.system" in err and f"{lm}/vocab.pkl" in err
    assert not db.exists() and not marker.exists()
