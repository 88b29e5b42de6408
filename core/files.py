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


#: Files up to this size are digested whole by :func:`content_digest`; larger ones are sampled.
WHOLE_DIGEST_LIMIT = 256 * 2**20
_DIGEST_SAMPLE = 16 * 2**20


def content_digest(path: str | os.PathLike[str]) -> str:
    """A sha256 that tells files' contents apart without reading a corpus-sized file at every run start.

    Files up to :data:`WHOLE_DIGEST_LIMIT` are hashed whole (:func:`sha256_file`); a larger one by its size
    and its first and last 16 MiB, which any edit that changes its length or ends shows, at a fixed cost.
    """
    path = Path(path)
    size = path.stat().st_size
    if size <= WHOLE_DIGEST_LIMIT:
        return sha256_file(path)
    digest = hashlib.sha256(f"size {size}\n".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_DIGEST_SAMPLE))
        handle.seek(size - _DIGEST_SAMPLE)
        digest.update(handle.read(_DIGEST_SAMPLE))
    return digest.hexdigest()

