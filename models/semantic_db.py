"""The SHELM semantic database: CLIP text embeddings of words that the frozen LM also knows.

SHELM maps an observation to the k words whose CLIP text embedding is closest to the CLIP image
embedding, then feeds those words' LM token embeddings to the memory. That only works for words
that are a single whole-word token in *both* vocabularies, so the database is built from the
intersection of the two tokenizers' vocabularies (``shared_vocabulary``), embedded once with the
CLIP text tower (``build_database``, run by ``prepare_embeddings.py``) and stored on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from utils.errors import UserError

FORMAT_VERSION = 2  # 2: raw embeddings averaged over templates (1 averaged normalised ones)

# Prompt templates of the SHELM paper (papers.md 2.5); MiniGrid and MiniWorld use none.
TEMPLATES: dict[str, list[str]] = {
    "none": ["{}"],
    "psychlab": [
        "a render of {}",
        "a render of a {}",
        "a screenshot of a {}",
        "a screenshot of {}",
        "a screen showing {}",
        "a screen showing a {}",
    ],
    "avalon": [
        "a screenshot of {}",
        "a screenshot of a {}",
        "a screenshot of many {}",
        "a biome containing {}",
        "a biome containing a {}",
        "a biome containing many {}",
        "a biome full of {}",
    ],
}

# Word markers of the tokenizer families we know.
_EOW_SUFFIX = "</w>"  # CLIP BPE: a token that ends a word
_BYTE_SPACE = "Ġ"  # GPT-2 byte-level BPE: a token that starts after a space
_SP_SPACE = "▁"  # SentencePiece: a token that starts a word
_WP_CONT = "##"  # WordPiece: a token that continues a word


# -- vocabulary intersection ---------------------------------------------------------------------


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (also used by CLIP's BPE).

    Printable Latin-1 bytes stand for themselves; the others (controls, space, ...) are moved to
    code points 256 and up, in byte order.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


_BYTE_DECODER = {c: b for b, c in _byte_level_alphabet().items()}


def _byte_decode(token: str) -> str | None:
    """Undo the byte-level character mapping; None if the token is not whole UTF-8 text."""
    try:
        return bytes(_BYTE_DECODER[c] for c in token).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return None


def _is_byte_level(tokenizer, vocab: dict[str, int]) -> bool:
    """Byte-level BPE vocabularies contain the whole 256-character byte alphabet as tokens."""
    singles = {tok[: -len(_EOW_SUFFIX)] if tok.endswith(_EOW_SUFFIX) else tok for tok in vocab}
    coverage = sum(c in singles for c in _BYTE_DECODER) / len(_BYTE_DECODER)
    if coverage >= 0.9:
        return True
    # A pruned vocabulary may lack rare bytes: fall back to the tokenizer's own decoder setting.
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except Exception:
        return False
    return "ByteLevel" in json.dumps(decoder)


def _tokenizer_kind(vocab: dict[str, int]) -> str:
    """Which word-marker convention a vocabulary uses, judged by how many tokens carry each marker.

    Returns "eow" (CLIP), "space" (GPT-2), "sentencepiece", "wordpiece" or "wordlevel"
    (TransfoXL-like: every token is a whole word).
    """
    counts = {
        "eow": sum(t.endswith(_EOW_SUFFIX) for t in vocab),
        "space": sum(t.startswith(_BYTE_SPACE) for t in vocab),
        "sentencepiece": sum(t.startswith(_SP_SPACE) for t in vocab),
        "wordpiece": sum(t.startswith(_WP_CONT) and len(t) > 2 for t in vocab),
    }
    kind, count = max(counts.items(), key=lambda kv: kv[1])
    # A handful of marker-like tokens in a word-level vocabulary is noise, not a convention.
    return kind if count >= max(3, 0.02 * len(vocab)) else "wordlevel"


def _whole_words(tokenizer) -> tuple[str, dict[str, int]]:
    """Map lower-cased whole words (letters only) to exactly one token id of ``tokenizer``.

    When several tokens give the same lower-cased word (GPT-2 "Ġcat", "ĠCat"), the token whose
    text is already lower case wins, then the smallest id, so the choice is deterministic.
    """
    vocab: dict[str, int] = dict(tokenizer.get_vocab())
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    specials |= {str(t) for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values() if getattr(t, "special", False)}
    kind = _tokenizer_kind(vocab)
    byte_level = _is_byte_level(tokenizer, vocab)

    best: dict[str, tuple[tuple[int, int], int]] = {}
    for token, token_id in vocab.items():
        if token in specials:
            continue
        if kind == "eow":
            if not token.endswith(_EOW_SUFFIX):
                continue  # a piece that does not end a word
            text = token[: -len(_EOW_SUFFIX)]
        elif kind == "space":
            if not token.startswith(_BYTE_SPACE):
                continue  # continues a word (or starts the text without a space)
            text = token[len(_BYTE_SPACE) :] if not byte_level else token
        elif kind == "sentencepiece":
            if not token.startswith(_SP_SPACE):
                continue
            text = token[len(_SP_SPACE) :]
        elif kind == "wordpiece":
            if token.startswith(_WP_CONT):
                continue
            text = token
        else:
            text = token
        if byte_level:
            decoded = _byte_decode(text)
            if decoded is None:
                continue
            text = decoded.strip() if kind == "space" else decoded
        if not text or not text.isalpha():
            continue
        word = text.lower()
        rank = (0 if text == word else 1, token_id)
        if word not in best or rank < best[word][0]:
            best[word] = (rank, token_id)
    return kind, {word: token_id for word, (_, token_id) in best.items()}


def shared_vocabulary(clip_tokenizer, lm_tokenizer) -> list[tuple[str, int, int]]:
    """Words that are one whole-word token in both tokenizers: (word, clip_id, lm_id), by clip id.

    Words are compared lower-cased and must consist of letters only; special tokens, punctuation,
    digits and subword pieces never qualify.
    """
    _, clip_words = _whole_words(clip_tokenizer)
    _, lm_words = _whole_words(lm_tokenizer)
    shared = [(word, clip_id, lm_words[word]) for word, clip_id in clip_words.items() if word in lm_words]
    shared.sort(key=lambda item: (item[1], item[0]))
    return shared


# -- building ---------------------------------------------------------------------------------------


def resolve_templates(templates: str) -> tuple[str, list[str]]:
    """A template set name ("none", "psychlab", "avalon") or a file with one template per line.

    Returns (name recorded in the database, template strings).
    """
    if templates in TEMPLATES:
        return templates, list(TEMPLATES[templates])
    path = Path(templates).expanduser()
    if not path.is_file():
        raise UserError(f"--templates must be one of {', '.join(TEMPLATES)} or a template file; {templates} is neither")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read template file {path}: {exc}") from exc
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise UserError(f"template file {path} has no templates")
    for line in lines:
        rest = line.replace("{}", "", 1)
        if "{}" not in line or "{" in rest or "}" in rest:
            raise UserError(f"template file {path}: each line needs exactly one '{{}}' and no other braces: {line!r}")
    return str(path.resolve()), lines


def build_database(
    clip,
    clip_tokenizer,
    lm_tokenizer,
    templates: list[str],
    clip_name: str,
    lm_name: str,
    template_name: str,
    progress: bool = True,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Embed every shared word with CLIP's text tower: mean over templates, then L2-normalised.

    As in the original SHELM, the raw (unnormalised) text embeddings are averaged over the
    templates and only the mean is normalised.
    """
    from models.clip_encoder import encode_texts

    if not templates:
        raise UserError("at least one template is needed")
    shared = shared_vocabulary(clip_tokenizer, lm_tokenizer)
    if not shared:
        raise UserError(f"CLIP tokenizer of {clip_name} and LM tokenizer of {lm_name} share no whole words")
    words = [word for word, _, _ in shared]
    dim = int(clip.config.projection_dim)
    total = torch.zeros(len(words), dim)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(words) * len(templates), desc="CLIP text embeddings", unit="text")
    for template in templates:
        texts = [template.format(word) for word in words]
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            total[start : start + len(chunk)] += encode_texts(
                clip, clip_tokenizer, chunk, batch_size=batch_size, normalize=False
            )
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    embeddings = F.normalize(total / len(templates), dim=-1)
    return {
        "words": words,
        "clip_ids": torch.tensor([c for _, c, _ in shared], dtype=torch.long),
        "lm_ids": torch.tensor([l for _, _, l in shared], dtype=torch.long),
        "embeddings": embeddings.contiguous(),
        "meta": {
            "clip_model": model_identity(clip_name),
            "lm": model_identity(lm_name),
            "templates": template_name,
            "template_strings": list(templates),
            "n_words": len(words),
            "embed_dim": dim,
            "format_version": FORMAT_VERSION,
        },
    }


# -- files ------------------------------------------------------------------------------------------


def model_identity(name: str) -> str:
    """What a database records as its CLIP/LM: the absolute path for local directories, else the name.

    So "./clip" and "/abs/clip" are the same model, while a hub id stays a hub id.
    """
    expanded = os.path.expanduser(name)
    return os.path.abspath(expanded) if os.path.exists(expanded) else name


def _safe_name(name: str) -> str:
    """A short filesystem-safe stand-in for a hub id, a local path or a template file."""
    expanded = os.path.expanduser(name)
    if os.path.exists(expanded):
        absolute = os.path.abspath(expanded)
        base = Path(absolute).stem or "root"
        digest = hashlib.sha1(absolute.encode("utf-8")).hexdigest()[:8]
        name = f"{base}-{digest}"
    name = name.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "_"


def default_db_path(clip_model: str, lm: str, templates: str, data_dir: str | os.PathLike = "data") -> Path:
    """data/semantic_db__<clip>__<lm>__<templates>.pt, one file per (CLIP, LM, templates) triple."""
    parts = [_safe_name(clip_model), _safe_name(lm), _safe_name(templates)]
    return Path(data_dir) / f"semantic_db__{'__'.join(parts)}.pt"


def prepare_command(clip_model: str, lm: str, templates: str, path: str | os.PathLike) -> str:
    """The exact shell command that (re)builds a database."""
    return (
        f"python prepare_embeddings.py --clip-model {shlex.quote(clip_model)} --lm {shlex.quote(lm)} "
        f"--templates {shlex.quote(templates)} --out {shlex.quote(str(path))}"
    )


def save_database(db: dict[str, Any], path: str | os.PathLike) -> None:
    """Write atomically (temp file + os.replace), so a crash never leaves half a database."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(db, handle)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_database(path: str | os.PathLike) -> dict[str, Any]:
    """Load and sanity-check a database file without checking what it was built for."""
    path = Path(path)
    try:
        db = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # pickle/zip errors come in many types
        raise ValueError(f"not a readable database ({type(exc).__name__})") from exc
    required = {"words", "clip_ids", "lm_ids", "embeddings", "meta"}
    if not isinstance(db, dict) or not required <= set(db) or not isinstance(db["meta"], dict):
        raise ValueError("missing database fields")
    n = len(db["words"])
    emb = db["embeddings"]
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != n or db["clip_ids"].shape != (n,) or db["lm_ids"].shape != (n,):
        raise ValueError("inconsistent database shapes")
    if db["meta"].get("format_version") != FORMAT_VERSION:
        raise ValueError(f"format version {db['meta'].get('format_version')} != {FORMAT_VERSION}")
    return db


def load_database(path: str | os.PathLike, clip_model: str, lm: str, templates: str | None = None) -> dict[str, Any]:
    """Load the database at ``path`` and check it was built for this CLIP, LM (and templates).

    Every failure is a one-line ``UserError`` that names the command which builds the right file.
    """
    template_arg = templates if templates is not None else "none"
    command = prepare_command(clip_model, lm, template_arg, path)
    if templates is not None:
        # Before the file: with a bad templates value the command above could not build it.
        template_name, template_strings = resolve_templates(templates)
    try:
        db = read_database(path)
    except FileNotFoundError:
        raise UserError(f"semantic database {path} not found; build it with: {command}") from None
    except ValueError as exc:
        raise UserError(f"semantic database {path} is corrupt ({exc}); rebuild it with: {command}") from None
    meta = db["meta"]
    if templates is None:
        command = prepare_command(clip_model, lm, str(meta.get("templates", "none")), path)
    mismatches = []
    if meta.get("clip_model") != model_identity(clip_model):
        mismatches.append(f"CLIP {meta.get('clip_model')!r}")
    if meta.get("lm") != model_identity(lm):
        mismatches.append(f"LM {meta.get('lm')!r}")
    if templates is not None:
        if meta.get("templates") != template_name or meta.get("template_strings") != template_strings:
            mismatches.append(f"templates {meta.get('templates')!r}")
    if mismatches:
        raise UserError(
            f"semantic database {path} was built for {', '.join(mismatches)}, not the requested one; "
            f"build it with: {command}"
        )
    return db


# -- retrieval --------------------------------------------------------------------------------------


def retrieve_topk(
    image_emb: torch.Tensor, db_embeddings: torch.Tensor, k: int, db_normalized: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-similarity top-k of each image embedding over the database: (scores, idx), [B, k], descending.

    ``db_normalized=True`` skips re-normalising the database (the caller keeps unit rows), which
    is most of the cost per env step for a database of tens of thousands of words.
    """
    n = db_embeddings.shape[0]
    if not 1 <= k <= n:
        raise UserError(f"top-k retrieval needs 1 <= k <= database size ({n}), got k={k}")
    img = F.normalize(image_emb.float(), dim=-1)
    db = db_embeddings.to(img.device).float()
    if not db_normalized:
        db = F.normalize(db, dim=-1)
    scores = img @ db.T
    return torch.topk(scores, k, dim=-1, largest=True, sorted=True)
