"""Command-line parsing that reports a usage mistake on one line (standard library only)."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class OneLineArgumentParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line (`prog: error: ... (see --help)`), exit code 2.

    argparse's default prints the whole usage block first, which hides the actual mistake.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def positive_int(text: str) -> int:
    """argparse `type=` for counts (episodes, envs, batch sizes): an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse `type=` for seeds and the like: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def python_command() -> str:
    """How to call this interpreter in a printed hint: `python` inside the active venv, else its path.

    After `make train` the project's interpreter is `.venv/bin/python`; a hint that says `python`
    would otherwise run a Python without the project's packages.
    """
    import os
    from pathlib import Path

    venv = os.environ.get("VIRTUAL_ENV")
    if venv and Path(venv).resolve() == Path(sys.prefix).resolve():
        return "python"
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)
