"""Convert BLIP JSON annotation sets or webdataset shards to ArrayRecord shards.

Every record is stored with its image as the original encoded bytes (no re-encoding: no
quality loss, and the train transform keeps its scaled JPEG decode). Records whose image is
missing/empty are dropped and counted at conversion time; images are *not* decoded here
(checking is `blip-jax data stats`), so conversion runs at disk speed.

Output: {out_dir}/{name}-{i:05d}-of-{n:05d}.array_record plus {name}.meta.json with counts.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Iterator

from blip_jax.data.image import image_bytes_of
from blip_jax.data.records import SKIP_KEY, BadRecord, serialize_record
from blip_jax.data.sources import WebDatasetIterDataset
from blip_jax.files import write_json_atomic


def _writer(path: str):
    from array_record.python.array_record_module import ArrayRecordWriter

    # group_size:1 keeps every record independently addressable: random access for shuffling.
    return ArrayRecordWriter(path, "group_size:1")


def iter_serialized(records: Iterable[dict], skips: collections.Counter, images: bool = True) -> Iterator[bytes]:
    """Records -> serialized bytes (skip markers and unreadable images counted in `skips`);
    `images` False stores the other fields only."""
    for rec in records:
        if SKIP_KEY in rec:
            skips[rec[SKIP_KEY]] += 1
            continue
        if not images:
            yield serialize_record(dict(rec, image=None, image_path=None))
            continue
        try:
            image = image_bytes_of(rec)
        except BadRecord as e:
            skips[e.reason] += 1
            continue
        if not isinstance(image, (bytes, bytearray)):
            raise TypeError("array images must be encoded before conversion")
        out = dict(rec, image=bytes(image), image_path=None)
        yield serialize_record(out)


def write_array_record(records: Iterable[dict], out_dir: str, name: str, records_per_shard: int = 10_000,
                       num_records: int | None = None, images: bool = True) -> dict:
    """Writes records -> shards; returns {"files", "num_records", "skipped"} (also in meta.json).
    `images` False writes the records without image bytes (caption records pointing elsewhere).

    With `num_records` unknown the shard count is unknown in advance; files are then renamed
    at the end to the -of-N suffix."""
    os.makedirs(out_dir, exist_ok=True)
    skips: collections.Counter = collections.Counter()
    tmp_files: list[str] = []
    writer, in_shard, total = None, 0, 0
    for data in iter_serialized(records, skips, images):
        if writer is None or in_shard >= records_per_shard:
            if writer is not None:
                writer.close()
            tmp_files.append(os.path.join(out_dir, f".{name}-{len(tmp_files):05d}.tmp"))
            writer, in_shard = _writer(tmp_files[-1]), 0
        writer.write(data)
        in_shard += 1
        total += 1
    if writer is not None:
        writer.close()
    files = []
    for i, tmp in enumerate(tmp_files):
        final = os.path.join(out_dir, f"{name}-{i:05d}-of-{len(tmp_files):05d}.array_record")
        os.replace(tmp, final)
        files.append(final)
    meta = {"name": name, "files": [os.path.basename(f) for f in files], "num_records": total,
            "skipped": dict(skips)}
    write_json_atomic(os.path.join(out_dir, f"{name}.meta.json"), meta, indent=1)
    return dict(meta, files=files)


def webdataset_records(shards) -> Iterator[dict]:
    ds = WebDatasetIterDataset(shards, shuffle_shards=False, num_epochs=1)
    yield from iter(ds)
