"""Atomic file writes: a temporary file in the target's directory, then ``os.replace``, so a reader
(another worker, the leaderboard) never sees half a file. And ``move_aside``: keep a file under a
numbered name, never overwriting one.

Files get the permissions of an ordinary ``open`` (0666 minus the umask), not ``mkstemp``'s private
0600, so a results tree shared on a cluster stays readable by the team.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds, it replaces ``path``.

    ``suffix`` matters for writers that append their own extension (``np.savez`` adds ``.npz``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def move_aside(path: Path, name: Callable[[int], str]) -> Path:
    """Move ``path`` to ``path.with_name(name(n))`` for the first free n >= 1 and return it.

    Linked, then unlinked: unlike a rename, the link fails when the target exists, so a file set
    aside earlier (or by a racing process) is never overwritten.
    """
    path = Path(path)
    n = 1
    while True:
        target = path.with_name(name(n))
        try:
            os.link(path, target)
        except FileExistsError:
            n += 1
            continue
        path.unlink()
        return target
