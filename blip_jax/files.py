"""Output files that appear whole or not at all: written under a temporary name in the same
folder, then renamed over the target (atomic on POSIX filesystems). A job killed mid-write leaves
the previous file, or none, never a truncated one that a rerun would trust (a CapFilt chunk, a
pipeline stage's done-marker, evaluation metrics)."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str) -> Iterator[IO[str]]:
    """A text file to write `path` through: it replaces `path` when the block ends normally and is
    removed when the block raises. The temporary name is unique (created exclusively), so writers
    of the same file on several hosts sharing a filesystem never write into one temporary file."""
    tmp = f"{path}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            yield f
            # on disk before the rename: after a power loss or node crash the rename may survive
            # while unsynced data does not, leaving a whole-looking empty file a rerun would trust
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_atomic(path: str, text: str | Iterable[str]) -> None:
    """`text`, or the strings an iterable yields (streamed, for outputs larger than memory), into
    `path`."""
    with atomic_open(path) as f:
        if isinstance(text, str):
            f.write(text)
        else:
            f.writelines(text)


def write_json_atomic(path: str, obj: Any, **dump_kwargs) -> None:
    """`obj` as JSON into `path` (json.dumps keyword arguments: indent, sort_keys, ...)."""
    write_atomic(path, json.dumps(obj, **dump_kwargs))
