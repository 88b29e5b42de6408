"""Small file-system helpers that checkpoints and prepared corpora both need to be durable and checkable.

``fsync_path`` makes a file's or a folder's entries durable before a rename publishes them (a crash
must never leave a checkpoint or corpus that looks complete but is not); ``sha256_file`` hashes a file
in bounded memory, for manifests and for verifying inputs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: Bytes read at a time when hashing (bounded memory whatever the file size).
HASH_BLOCK = 1 << 24


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory; best effort (some file systems refuse fsync on directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file, read once sequentially in blocks of :data:`HASH_BLOCK` bytes."""
    digest = hashlib.sha256()
    with open(Path(path), "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
