"""Write Transformer-XL vocabulary files in the two real formats, for tests/test_trxl_vocab.py.

transformers 5 no longer has Transformer-XL, so this script runs ONLY in a side venv with the
last release that did:

    python3.11 -m venv /tmp/trxl437
    /tmp/trxl437/bin/pip install torch==2.13.0 transformers==4.37.2 sacremoses numpy
    /tmp/trxl437/bin/python tests/make_trxl_vocab_fixtures.py

It writes, under tests/fixtures/:
* trxl_vocab_437.pkl: the vocab.pkl that transformers 4.37.2 writes (`save_pretrained`, i.e.
  `pickle.dump(tokenizer.__dict__)`) for a small TransfoXLTokenizer built from a word list. It
  references re, sacremoses, tokenizers and transformers classes, not just plain data.
* trxl_vocab_legacy_torch.pkl: the hub's format: the original Transformer-XL vocabulary's
  attributes (the conversion script's `corpus.vocab.__dict__`) saved by `torch.save` in the
  legacy, non-zip format (pickle protocol 2).
* trxl_vocab_expected.json: the idx2sym both must give, and the globals each file references.

Both files are read back here by transformers itself (the way 4.37.2 reads a hub vocab.pkl),
so the fixtures are known to be what it accepts. The bytes of trxl_vocab_437.pkl vary from run
to run (it pickles sets, whose order follows Python's string hashing); its content does not.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
import warnings

import torch
from transformers import TransfoXLTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")

# wt103 puts its specials among the words; a few non-ASCII words and wt103's "@-@" joiner too.
WORDS = [
    "<unk>", "<eos>", "the", ",", ".", "of", "and", "in", "to", "a", "=", "@-@", "was", "door", "key", "red",
    "blue", "ball", "cat", "dog", "box", "lamp", "grey", "green", "yellow", "purple", "room", "opened",
    "café", "naïve", "Zürich", "東京", "Ω", "1", "1999", "(", ")", "'s", "The", "KEY",
]
# The attributes of the original Transformer-XL `Vocab` that the hub's vocab.pkl holds.
LEGACY_KEYS = ("special", "min_freq", "max_size", "lower_case", "delimiter", "vocab_file", "counter", "idx2sym",
               "sym2idx", "unk_idx")


def globals_of(data: bytes, legacy_torch: bool) -> list[str]:
    """Every module.name a file's pickles look up (recorded, never imported for unknown names)."""
    seen: set[str] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add(f"{module}.{name}")
            return super().find_class(module, name)

        def persistent_load(self, pid):
            raise pickle.UnpicklingError(f"persistent id {pid!r}")

    f = io.BytesIO(data)
    for _ in range(5 if legacy_torch else 1):  # magic, protocol, sys info, object, storage keys
        Recorder(f).load()
    assert f.read() == b"", "trailing data (storages?)"
    return sorted(seen)


def main() -> None:
    os.makedirs(FIXTURES, exist_ok=True)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # so the saved `vocab_file` attribute is a plain relative name
        try:
            with open("vocab.txt", "w", encoding="utf-8") as f:
                f.write("\n".join(WORDS) + "\n")
            tok = TransfoXLTokenizer(vocab_file="vocab.txt")
            assert tok.idx2sym == WORDS, tok.idx2sym
            tok.save_pretrained("saved")
            with open(os.path.join("saved", "vocab.pkl"), "rb") as f:
                saved_437 = f.read()
            legacy = io.BytesIO()
            torch.save({k: tok.__dict__[k] for k in LEGACY_KEYS}, legacy, _use_new_zipfile_serialization=False)
            legacy_bytes = legacy.getvalue()
            assert legacy_bytes[:2] == b"\x80\x02" and not legacy_bytes.startswith(b"PK")

            # Read back the way transformers 4.37.2 reads a hub vocab.pkl (pickle, then torch.load).
            os.environ["TRUST_REMOTE_CODE"] = "True"
            for name, data in (("a.pkl", saved_437), ("b.pkl", legacy_bytes)):
                with open(name, "wb") as f:
                    f.write(data)
                back = TransfoXLTokenizer(pretrained_vocab_file=name)  # b: torch.load's weights_only default reads it
                assert back.idx2sym == WORDS, (name, back.idx2sym)
        finally:
            os.chdir(cwd)

    with open(os.path.join(FIXTURES, "trxl_vocab_437.pkl"), "wb") as f:
        f.write(saved_437)
    with open(os.path.join(FIXTURES, "trxl_vocab_legacy_torch.pkl"), "wb") as f:
        f.write(legacy_bytes)
    expected = {
        "idx2sym": WORDS,
        "globals": {
            "trxl_vocab_437.pkl": globals_of(saved_437, legacy_torch=False),
            "trxl_vocab_legacy_torch.pkl": globals_of(legacy_bytes, legacy_torch=True),
        },
        "made_with": {"transformers": __import__("transformers").__version__, "torch": torch.__version__},
    }
    with open(os.path.join(FIXTURES, "trxl_vocab_expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(json.dumps(expected["globals"], indent=1), len(saved_437), len(legacy_bytes))


if __name__ == "__main__":
    main()
