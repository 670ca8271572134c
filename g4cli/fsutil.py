"""The one way g4 writes a file: a temporary file beside the destination, fsync, then rename.

A reader (or a later g4) sees the old file or the whole new one, never half of it; a failure
or Ctrl-C leaves no stray file. Temporary names are ``.<name>.<pid>.g4-partial``, so that a
file left by a killed process is recognisable (and its process can be checked to be gone).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from g4cli.errors import OutputError, describe_os_error

PARTIAL_SUFFIX = ".g4-partial"


def partial_path(path: Path, tag: str = "") -> Path:
    """The temporary name ``path`` is written under before it is renamed into place."""
    return path.with_name(f".{path.name}.{os.getpid()}{tag}{PARTIAL_SUFFIX}")


def partial_pid(path: Path) -> int | None:
    """The process id in a temporary name made by ``partial_path`` (None if there is none)."""
    stem = path.name.removesuffix(PARTIAL_SUFFIX)
    for part in reversed(stem.split(".")):
        if part.isdigit():
            return int(part)
    return None


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_output(path: Path | str, *, error: type[Exception] = OutputError, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync it and rename it into place.

    On any failure the temp file is deleted and ``path`` is untouched; an OSError becomes one
    ``error`` line naming the file and the reason. ``durable=False`` skips the fsync: only for
    an intermediate that is deleted anyway (a crash loses nothing a later run would miss).
    """
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise error(f"{parent}: output directory does not exist")
    if not os.access(parent, os.W_OK):
        raise error(f"{parent}: output directory is not writable")
    tmp = partial_path(path)
    try:
        yield tmp
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise error(describe_os_error(e, str(path))) from e
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path | str, data: bytes, *, error: type[Exception] = OutputError) -> None:
    with atomic_output(path, error=error) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path | str, text: str, *, error: type[Exception] = OutputError) -> None:
    write_bytes(path, text.encode("utf-8"), error=error)


def write_json(path: Path | str, data: Any, *, indent: int | None = 2, error: type[Exception] = OutputError) -> None:
    write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n", error=error)
