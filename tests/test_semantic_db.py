"""SHELM semantic database: vocabulary intersection, build/save/load, retrieval, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

import tiny_clip  # noqa: F401  (puts the repo root on sys.path)
from tiny_clip import (
    make_clip_tokenizer,
    make_gpt2_tokenizer,
    make_tiny_clip,
    make_wordpiece_tokenizer,
    save_tiny_clip,
    save_wordpiece_tokenizer,
)

from models.semantic_db import (
    TEMPLATES,
    build_database,
    default_db_path,
    load_database,
    resolve_templates,
    retrieve_topk,
    save_database,
    shared_vocabulary,
)
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    base = tmp_path_factory.mktemp("tok")
    return {
        "clip": make_clip_tokenizer(base / "clip"),
        "gpt2": make_gpt2_tokenizer(base / "gpt2"),
        "wordpiece": make_wordpiece_tokenizer(base / "wp"),
    }


def _expected(clip_tok, lm_tok, pairs):
    """(word, clip token, lm token) -> (word, clip id, lm id), sorted by clip id."""
    rows = [(w, clip_tok.convert_tokens_to_ids(c), lm_tok.convert_tokens_to_ids(l)) for w, c, l in pairs]
    assert all(isinstance(i, int) and i != clip_tok.unk_token_id for _, i, _ in rows)
    return sorted(rows, key=lambda r: r[1])


def test_shared_vocabulary_clip_gpt2(toks):
    clip, gpt2 = toks["clip"], toks["gpt2"]
    got = shared_vocabulary(clip, gpt2)
    # Not shared: wall/purple (CLIP pieces), door/ing (GPT-2 continuations only), "!"/"3" (not
    # letters), green/blue/... (not in GPT-2). cat/red/ball pick the lower-case GPT-2 token even
    # though the capitalised one has a smaller id; box exists only as "ĠBox".
    words = ["a", "ball", "box", "café", "cat", "dog", "grey", "key", "lamp", "red"]
    lm_token = {"ball": "Ġball", "box": "ĠBox", "café": "ĠcafÃ©", "cat": "Ġcat", "red": "Ġred"}
    pairs = [(w, ("cafÃ©" if w == "café" else w) + "</w>", lm_token.get(w, "Ġ" + w)) for w in words]
    assert got == _expected(clip, gpt2, pairs)


def test_shared_vocabulary_clip_wordpiece(toks):
    clip, wp = toks["clip"], toks["wordpiece"]
    got = shared_vocabulary(clip, wp)
    # Not shared: lamp/ing (WordPiece "##" only), wall/purple (CLIP pieces), don (not in CLIP),
    # specials, punctuation and digits. "x" is a single-letter whole word in both.
    words = ["a", "x", "of", "the", "red", "green", "blue", "key", "door", "ball", "cat", "dog", "grey", "café"]
    pairs = [(w, ("cafÃ©" if w == "café" else w) + "</w>", w) for w in words]
    assert got == _expected(clip, wp, pairs)
    assert [w for w, _, _ in got] == [w for w, _, _ in sorted(got, key=lambda r: r[1])]


def _fast_tokenizer(tokens: list[str]) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")))
    tok.add_special_tokens({"unk_token": "<unk>", "eos_token": "</s>"})
    return tok


def test_shared_vocabulary_sentencepiece_and_wordlevel(toks):
    clip = toks["clip"]
    sp = _fast_tokenizer(["<unk>", "</s>", "▁Cat", "▁cat", "▁dog", "▁red", "▁3", "▁<0x41>", "ing", "door", "▁wall", "▁key"])
    got = shared_vocabulary(clip, sp)
    assert [(w, l) for w, _, l in got] == [("red", 5), ("key", 11), ("cat", 3), ("dog", 4)]
    # TransfoXL-like word-level vocabulary: every token is a whole word.
    wl = _fast_tokenizer(["<unk>", "</s>", "The", "the", "Cat", "dog", ",", "lamp", "don't", "ing", "purple"])
    got = shared_vocabulary(clip, wl)
    assert sorted((w, l) for w, _, l in got) == [("cat", 4), ("dog", 5), ("ing", 9), ("lamp", 7), ("the", 3)]


def test_retrieve_topk_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(5, 16, generator=g) * 3
    db = torch.randn(40, 16, generator=g)
    scores, idx = retrieve_topk(img, db, k=7)
    assert scores.shape == idx.shape == (5, 7)
    for b in range(5):
        sims = [float(img[b] @ db[j] / (img[b].norm() * db[j].norm())) for j in range(40)]
        order = sorted(range(40), key=lambda j: -sims[j])[:7]
        assert idx[b].tolist() == order
        assert scores[b].tolist() == pytest.approx([sims[j] for j in order], abs=1e-5)
    with pytest.raises(UserError):
        retrieve_topk(img, db, k=41)


def test_templates_table():
    assert TEMPLATES["none"] == ["{}"]
    assert len(TEMPLATES["psychlab"]) == 6 and len(TEMPLATES["avalon"]) == 7
    assert all("{}" in t for ts in TEMPLATES.values() for t in ts)
    assert "a biome full of {}" in TEMPLATES["avalon"] and "a screen showing a {}" in TEMPLATES["psychlab"]


def test_template_file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a photo of {}\n\n# comment\na {} in a maze\n")
    name, strings = resolve_templates(str(f))
    assert name == str(f.resolve()) and strings == ["a photo of {}", "a {} in a maze"]
    f.write_text("no placeholder\n")
    with pytest.raises(UserError):
        resolve_templates(str(f))
    with pytest.raises(UserError):
        resolve_templates("nonexistent-template-set")


@pytest.fixture(scope="module")
def built(tmp_path_factory, toks):
    base = tmp_path_factory.mktemp("db")
    clip_tok = toks["clip"]
    clip = make_tiny_clip(clip_tok, seed=1)
    db = build_database(clip, clip_tok, toks["wordpiece"], TEMPLATES["psychlab"], "tiny/clip", "tiny-lm", "psychlab", progress=False)
    return clip, clip_tok, db, base


def test_build_database_mean_of_templates(built, toks):
    clip, clip_tok, db, _ = built
    shared = shared_vocabulary(clip_tok, toks["wordpiece"])
    assert db["words"] == [w for w, _, _ in shared]
    assert db["clip_ids"].tolist() == [c for _, c, _ in shared] and db["lm_ids"].tolist() == [l for _, _, l in shared]
    assert db["embeddings"].shape == (len(shared), 16)
    torch.testing.assert_close(db["embeddings"].norm(dim=-1), torch.ones(len(shared)))
    meta = db["meta"]
    assert meta["n_words"] == len(shared) and meta["embed_dim"] == 16 and meta["templates"] == "psychlab"
    assert meta["template_strings"] == TEMPLATES["psychlab"] and meta["format_version"] == 2

    # "cat" by the original SHELM's formula: raw text embeddings averaged over templates, then normalised.
    i = db["words"].index("cat")
    raw = []
    with torch.no_grad():
        for t in TEMPLATES["psychlab"]:
            ids = clip_tok(t.format("cat"), return_tensors="pt")
            raw.append(clip.get_text_features(**ids).pooler_output[0])
    expected = F.normalize(torch.stack(raw).mean(0), dim=-1)
    torch.testing.assert_close(db["embeddings"][i], expected, atol=1e-5, rtol=1e-5)
    # not the mean of normalised templates (our earlier rule), nor just the first template
    per_template_normalised = F.normalize(torch.stack([F.normalize(r, dim=-1) for r in raw]).mean(0), dim=-1)
    assert not torch.allclose(db["embeddings"][i], per_template_normalised, atol=1e-4)
    assert not torch.allclose(db["embeddings"][i], F.normalize(raw[0], dim=-1), atol=1e-3)


def test_save_load_round_trip_and_mismatches(built):
    _, _, db, base = built
    path = base / "sub" / "db.pt"
    save_database(db, path)
    assert [p.name for p in path.parent.iterdir()] == ["db.pt"]  # no temp file left behind
    loaded = load_database(path, "tiny/clip", "tiny-lm", "psychlab")
    assert loaded["words"] == db["words"] and loaded["meta"] == db["meta"]
    for key in ("clip_ids", "lm_ids", "embeddings"):
        assert torch.equal(loaded[key], db[key])
    assert load_database(path, "tiny/clip", "tiny-lm")["meta"]["n_words"] == len(db["words"])

    for clip_name, lm, templates, flag in [
        ("other/clip", "tiny-lm", "psychlab", "--clip-model other/clip"),
        ("tiny/clip", "other-lm", "psychlab", "--lm other-lm"),
        ("tiny/clip", "tiny-lm", "avalon", "--templates avalon"),
    ]:
        with pytest.raises(UserError) as info:
            load_database(path, clip_name, lm, templates)
        msg = str(info.value)
        assert "\n" not in msg and "python prepare_embeddings.py" in msg and flag in msg and f"--out {path}" in msg

    with pytest.raises(UserError, match="prepare_embeddings.py.*--out") as info:
        load_database(base / "missing.pt", "tiny/clip", "tiny-lm", "none")
    assert "not found" in str(info.value)

    corrupt = base / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a torch file")
    with pytest.raises(UserError, match="corrupt"):
        load_database(corrupt, "tiny/clip", "tiny-lm")
    torch.save({"words": ["a"]}, corrupt)
    with pytest.raises(UserError, match="corrupt"):
        load_database(corrupt, "tiny/clip", "tiny-lm")


def test_default_db_path(tmp_path):
    p = default_db_path("openai/clip-vit-base-patch16", "minilm", "none")
    assert p == Path("data/semantic_db__openai--clip-vit-base-patch16__minilm__none.pt")
    local = tmp_path / "my clip"
    local.mkdir()
    q = default_db_path(str(local), "gpt2", "avalon", data_dir=tmp_path)
    assert q.parent == tmp_path and q.name.startswith("semantic_db__my_clip-") and q.name.endswith("__gpt2__avalon.pt")
    assert q == default_db_path(str(local) + "/", "gpt2", "avalon", data_dir=tmp_path)  # same dir, same file
    assert " " not in q.name


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    return subprocess.run([sys.executable, "prepare_embeddings.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_prepare_embeddings_cli(tmp_path):
    clip_dir = save_tiny_clip(tmp_path / "clip")
    lm_dir = save_wordpiece_tokenizer(tmp_path / "lm")
    out = tmp_path / "db.pt"
    ok = _run_cli("--clip-model", str(clip_dir), "--lm", str(lm_dir), "--templates", "avalon", "--out", str(out), "--device", "cpu")
    assert ok.returncode == 0, ok.stderr
    assert str(out) in ok.stdout and "14 words" in ok.stdout
    db = load_database(out, str(clip_dir), str(lm_dir), "avalon")
    assert db["meta"]["n_words"] == 14 and db["meta"]["template_strings"] == TEMPLATES["avalon"]

    bad = _run_cli("--clip-model", str(tmp_path / "nope"), "--lm", str(lm_dir), "--out", str(tmp_path / "x.pt"))
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope" in lines[0]

    # Another triple into the same file is refused (before loading CLIP).
    other = _run_cli("--clip-model", str(clip_dir), "--lm", str(lm_dir), "--templates", "none", "--out", str(out))
    assert other.returncode == 2 and "--force" in other.stderr


def test_minilm_tokenizer_shares_words_with_clip(toks):
    """The project's offline LM ("minilm", a BERT WordPiece tokenizer) works as the LM side."""
    from transformers import AutoTokenizer

    from models.lm_memory import resolve_lm_path

    mini = AutoTokenizer.from_pretrained(resolve_lm_path("minilm"))
    words = {w: l for w, _, l in shared_vocabulary(toks["clip"], mini)}
    assert {"cat", "dog", "red", "key", "door", "ball", "the", "of"} <= set(words)
    assert mini.convert_ids_to_tokens(words["door"]) == "door"


def test_retrieve_topk_with_a_prenormalised_database_is_the_same():
    torch.manual_seed(1)
    img, db = torch.randn(3, 8), torch.randn(50, 8)
    unit = torch.nn.functional.normalize(db, dim=-1)
    plain = retrieve_topk(img, db, k=5)
    fast = retrieve_topk(img, unit, k=5, db_normalized=True)
    assert torch.equal(plain[1], fast[1]) and torch.allclose(plain[0], fast[0])
