"""Output paths that are checked before any long work and appear all at once, or not at all.

Standard library only: the scripts check their --out before importing torch or loading models.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from utils.errors import UserError


def check_output(path: str | os.PathLike, flag: str, kind: str) -> None:
    """Fail now, on one line naming the path, if `path` cannot be written as a `kind` ("file" or "directory").

    A directory where a file is wanted (or the reverse), a path under a file, and a folder this
    process cannot create files in are all refused. Nothing is left behind by the check.
    """
    if kind not in ("file", "directory"):
        raise ValueError(f"kind must be 'file' or 'directory', not {kind!r}")
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give the path of a file (e.g. {path / 'name.pt'})")
    if kind == "directory" and path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; give a directory")
    base = path if path.is_dir() else path.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise UserError(f"{flag} {path}: {base} is a file, not a directory")
    try:  # os.access says yes to root even on a read-only file system: try it
        fd, probe = tempfile.mkstemp(dir=base, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"{flag} {path}: cannot write in {base} ({err.strerror or err})") from None


def check_new_output_dir(out_dir: str | os.PathLike, flag: str = "--out") -> None:
    """`out_dir` must become a directory of its own: new or empty, so old results never mix with new ones."""
    out_dir = Path(out_dir)
    check_output(out_dir, flag, "directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise UserError(f"{flag} {out_dir} already holds files; choose a new or empty directory")


@contextlib.contextmanager
def new_parents(path: str | os.PathLike) -> Iterator[None]:
    """Create the missing folders above `path`; remove them again if the body fails."""
    made = []
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        made.append(folder)
        folder = folder.parent
    try:
        for folder in reversed(made):
            folder.mkdir()
        yield
    except BaseException:
        for folder in made:  # innermost first; a folder someone else filled meanwhile stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@contextlib.contextmanager
def staged_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder next to `path` to write into; its files move into `path` when the body succeeds.

    If the body fails (or is interrupted) the temporary folder and any folder made for it are
    removed, so a failed run leaves no partial output behind.
    """
    path = Path(path)
    with new_parents(path):
        stage = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        try:
            yield stage
            if path.is_dir():
                for item in stage.iterdir():
                    os.replace(item, path / item.name)
                stage.rmdir()
            else:
                os.rename(stage, path)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
