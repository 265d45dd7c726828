"""The one record schema every source produces and every pipeline consumes.

A *record* is a plain dict (picklable, cheap to ship to worker processes):

    image        bytes (encoded JPEG/PNG/...) | np.ndarray uint8 (H, W, 3) | None
    image_path   str | None   file to read lazily when `image` is None (BLIP JSON sources)
    image_id     int          dense id, equal for all records of the same image within a source
    image_key    str          the original identifier (file name, COCO id, web key) for logs/outputs
    captions     list         raw, uncleaned caption values (validated lazily: bad ones are skipped)
    question     str          "" when not a VQA record
    question_id  int          -1 when not a VQA record
    answers      list[str]    VQA answers (possibly repeated); [] otherwise
    answer_weights list[float] one weight per distinct answer, BLIP's convention
    source       str          dataset name (used in mixtures and logs)
    index        int          position within its source (eval alignment)

Bad inputs never raise out of a pipeline: processing raises `BadRecord(reason)`, the pipeline
turns it into a skip marker, drops it and counts it under one of `SKIP_REASONS`.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

SKIP_REASONS: tuple[str, ...] = (
    "missing_image",  # file not found / unreadable
    "empty_image",  # zero bytes
    "truncated_image",  # decoder ran out of data
    "decode_error",  # not an image, corrupt header/data
    "image_too_large",  # more pixels than the configured limit (decompression bomb)
    "bad_caption",  # caption is not a string (None, number, list, ...)
    "empty_caption",  # caption empty after cleaning
    "bad_json",  # malformed per-sample JSON (web shards, JSON lines)
    "bad_record",  # malformed serialized record (ArrayRecord)
    "bad_question",  # VQA question missing / not a string / empty
    "bad_answers",  # VQA answers missing or unusable
    # (appended: checkpointed skip counts of an older, shorter list still restore)
    "truncated_shard",  # a tar shard that breaks off (cut copy, garbage): once per shard
    "truncated_sample",  # a sample of such a shard known lost: cut in its data, or past the break
    # Parts of a record that is kept (not in data/skipped/total):
    "dropped_caption",  # an unusable caption in a record's caption list; the others are used
    "dropped_answer",  # a VQA vote that is not a non-empty string (counted when loading)
)
PARTIAL_REASONS = ("dropped_caption", "dropped_answer")
REASON_INDEX = {r: i for i, r in enumerate(SKIP_REASONS)}
SKIP_KEY = "__skip__"
SKIPPED_FIELD = "_skipped"  # per-element int32 (R,) counts of records dropped just before it
DROPPED_FIELD = "_dropped"  # optional per-element list of skip markers for parts a processor dropped


class BadRecord(Exception):
    """A record that cannot be used; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASON_INDEX:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class AnnotationError(ValueError):
    """A malformed annotation file: raised at load time with the file, line and field."""


def make_record(**fields: Any) -> dict[str, Any]:
    """Returns a record with every schema key present (defaults for the missing ones)."""
    rec: dict[str, Any] = {
        "image": None,
        "image_path": None,
        "image_id": -1,
        "image_key": "",
        "captions": [],
        "question": "",
        "question_id": -1,
        "answers": [],
        "answer_weights": [],
        "source": "",
        "index": -1,
    }
    unknown = set(fields) - set(rec)
    if unknown:
        raise KeyError(f"unknown record fields {sorted(unknown)}")
    rec.update(fields)
    return rec


def skip_marker(reason: str, detail: str = "", where: str = "") -> dict[str, Any]:
    return {SKIP_KEY: reason, "detail": detail, "where": where}


# ---------------------------------------------------------------------------------------------
# Serialization for ArrayRecord shards: MAGIC | uint32 header length | JSON header | image bytes.
# Self-describing and dependency-free (no TF Example protos); images stay encoded so shards are
# small and decoding (with JPEG draft mode) happens in the input workers.
_MAGIC = b"BLIPREC1"
_HEADER_LEN = struct.Struct("<I")
_SERIALIZED_FIELDS = ("image_id", "image_key", "captions", "question", "question_id", "answers",
                      "answer_weights", "source", "index")


def serialize_record(record: dict[str, Any]) -> bytes:
    """Record (with `image` as encoded bytes) -> bytes for an ArrayRecord shard."""
    image = record.get("image")
    if isinstance(image, np.ndarray):
        raise TypeError("serialize_record stores encoded image bytes; encode arrays first")
    header = {k: record[k] for k in _SERIALIZED_FIELDS if k in record}
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return _MAGIC + _HEADER_LEN.pack(len(head)) + head + (image or b"")


def deserialize_record(data: bytes) -> dict[str, Any]:
    """Inverse of `serialize_record`; raises BadRecord('bad_record') for malformed bytes."""
    if len(data) < len(_MAGIC) + 4 or data[: len(_MAGIC)] != _MAGIC:
        raise BadRecord("bad_record", "missing BLIPREC1 magic")
    start = len(_MAGIC) + 4
    (n,) = _HEADER_LEN.unpack_from(data, len(_MAGIC))
    if start + n > len(data):
        raise BadRecord("bad_record", "header length beyond record end")
    try:
        header = json.loads(data[start : start + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRecord("bad_record", f"header: {e}") from None
    if not isinstance(header, dict):
        raise BadRecord("bad_record", "header is not an object")
    header = {k: v for k, v in header.items() if k in _SERIALIZED_FIELDS}
    return make_record(image=bytes(data[start + n :]), **header)
