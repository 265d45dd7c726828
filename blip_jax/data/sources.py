"""Record sources: webdataset tar shards (streamed, or read by index through a header index),
ArrayRecord shards (random access), tfds.

BLIP JSON files load into plain record lists (`annotations.py`), which grain reads as
random-access sources directly.
"""

from __future__ import annotations

import bisect
import collections
import concurrent.futures
import dataclasses
import glob
import hashlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from blip_jax.data.records import (
    SKIP_KEY,
    BadRecord,
    deserialize_record,
    make_record,
    skip_marker,
)
from blip_jax.files import write_json_atomic

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")


def expand_paths(patterns: str | Sequence[str]) -> list[str]:
    """Globs (and brace-free lists) -> sorted unique existing paths; a pattern matching nothing
    is an error (a typo in a config should not silently train on less data)."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    out: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise FileNotFoundError(f"no files match {pattern!r}")
        out.extend(matches)
    return sorted(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------------
# webdataset / img2dataset shards


def _sample_key(name: str) -> tuple[str, str]:
    """webdataset convention: key = path up to the first '.' of the basename, ext = the rest."""
    dirname, base = os.path.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return os.path.join(dirname, stem), ext.lower()


class _HeaderErrorTarInfo(tarfile.TarInfo):
    """TarInfo that remembers on its TarFile why the last header read failed: `tarfile` ends
    iteration quietly on a zero block (the end-of-archive marker) *and* on a cut, empty or garbage
    header after offset 0, so this is the only way to tell a complete shard from a broken one."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as e:
            tar._header_error = e
            raise


@dataclasses.dataclass(frozen=True)
class ShardBreak:
    """Where a streamed tar shard broke off: yielded by `_iter_tar_samples` after the samples it
    could read. `cut_sample`: the sample being read had a member cut inside its data (it is lost)."""

    path: str
    offset: int
    samples_read: int
    cut_sample: bool
    why: str

    def lost_samples(self) -> int | None:
        return _lost_samples(self.path, self.samples_read, self.cut_sample)


def _lost_samples(path: str, samples_read: int, cut_sample: bool) -> int | None:
    """Samples of a broken shard known to be lost: the one cut in its data, and those after the
    break when img2dataset's stats file says how many the shard held; None when unknown."""
    expected = _img2dataset_successes(path)
    if expected is None:
        return 1 if cut_sample else None
    return max(int(cut_sample), expected - samples_read)


def _lost_text(lost: int | None) -> str:
    return f"{lost} samples lost" if lost is not None else "samples after the break lost, number unknown"


def _iter_tar_samples(path: str):
    """Yields (key, {ext: bytes}) per sample of a tar shard, then, when the shard breaks off (a cut
    copy: no end-of-archive marker, a member whose data is cut short; garbage where a header should
    be), one `ShardBreak` instead of raising. A sample whose member data is cut is not yielded; the
    members of the sample being read when a *header* breaks are (as `index_tar_shard` keeps them)."""
    key, files, n = None, {}, 0

    def broken(why: str, offset: int, cut: bool = False) -> ShardBreak:
        return ShardBreak(path, offset, n, cut, why)

    try:
        tar = tarfile.open(path, "r|*", tarinfo=_HeaderErrorTarInfo)
    except (tarfile.TarError, OSError, EOFError) as e:
        yield broken(f"unreadable: {e}", 0)
        return
    with tar:
        members = iter(tar)
        while True:
            try:
                member = next(members, None)
            except (tarfile.TarError, OSError, EOFError) as e:
                if key is not None and files:
                    yield key, files
                    n += 1
                yield broken(f"bad tar header: {e}", tar.offset)
                return
            if member is None:
                break
            if not member.isfile():
                continue
            k, ext = _sample_key(member.name)
            if k != key and key is not None:
                yield key, files
                n += 1
                files = {}
            key = k
            try:
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
            except (tarfile.TarError, OSError, EOFError):
                data = None
            if data is None or len(data) != member.size:
                yield broken(f"member {member.name!r} cut inside its data", member.offset_data, cut=True)
                return
            files[ext] = data
        if key is not None:
            yield key, files
            n += 1
        end = getattr(tar, "_header_error", None)
        if not isinstance(end, tarfile.EOFHeaderError):  # iteration stopped at no end-of-archive marker
            yield broken(f"no end-of-archive marker ({end or 'end of data'})", tar.offset)


def _shard_skips(brk: ShardBreak, source: str) -> list[dict]:
    """A broken shard -> its skip markers: one `truncated_shard`, plus one `truncated_sample` per
    sample known to be lost (`ShardBreak.lost_samples`)."""
    lost = brk.lost_samples()
    detail = (f"{brk.path} breaks off at byte {brk.offset} after {brk.samples_read} samples ({brk.why}); "
              f"{_lost_text(lost)}")
    log.warning("webdataset shard %s", detail)
    return ([skip_marker("truncated_shard", detail, source)]
            + [skip_marker("truncated_sample", f"lost in {brk.path}", source)] * (lost or 0))


def webdataset_sample_to_record(key: str, files: dict[str, bytes], source: str, index: int,
                                shard: str = "", image_id: int | None = None) -> dict:
    """One img2dataset sample ({key}.jpg/.txt/.json) -> record, or a skip marker naming the shard
    file and the sample key. `image_id` defaults to `index`."""
    where = f"sample {key} of {shard}" if shard else f"sample {key}"
    image = None
    for ext in IMAGE_EXTENSIONS:
        if ext in files:
            image = files[ext]
            break
    if image is None:
        return skip_marker("missing_image", f"no image member in {where}", source)
    meta: dict[str, Any] = {}
    if "json" in files:
        try:
            meta = json.loads(files["json"].decode("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("not an object")
        except (UnicodeDecodeError, ValueError):
            return skip_marker("bad_json", where, source)
    if "txt" in files:
        try:
            captions = [files["txt"].decode("utf-8")]
        except UnicodeDecodeError:
            return skip_marker("bad_caption", f"{where}: .txt is not UTF-8", source)
    elif "caption" in meta:
        captions = [meta["caption"]]
    else:
        return skip_marker("bad_caption", f"{where}: no .txt and no json caption", source)
    raw_key = meta.get("key", os.path.basename(key))
    return make_record(image=image, image_key=str(raw_key), captions=captions, source=source,
                       index=index, image_id=index if image_id is None else image_id)


def _shard_items(path: str, source: str):
    """`_iter_tar_samples` with a shard break expanded into its skip markers (`_shard_skips`):
    yields (key, files) or a skip-marker dict, one per position the stream counts."""
    for item in _iter_tar_samples(path):
        if isinstance(item, ShardBreak):
            yield from _shard_skips(item, source)
        else:
            yield item


class WebDatasetIterDataset(grain.IterDataset):
    """Streams img2dataset/webdataset tar shards as records (a grain IterDataset source).

    Records' `index` is their position in the shard and `image_id` is unique over the shards
    (`image_id`). A shard that breaks off (cut copy, garbage) gives the samples before the break,
    then a `truncated_shard` skip (and a `truncated_sample` per sample known lost) naming the file.

    Sharding (per process via `shard_index/shard_count`, and per grain worker via `set_slice`)
    assigns whole shards when there are at least as many shards as readers, else every reader
    reads all shards and keeps every k-th sample. Shard order is reshuffled each epoch from
    `seed`. The iterator state is (epoch, shard position, samples consumed), so a restore
    re-opens the shard and skips the consumed samples without decoding them."""

    def __init__(self, shards: str | Sequence[str], *, source: str = "web", seed: int = 0,
                 shuffle_shards: bool = True, num_epochs: int | None = 1,
                 shard_index: int = 0, shard_count: int = 1):
        super().__init__()
        self._shards = expand_paths(shards)
        self._source = source
        self._seed = seed
        self._shuffle = shuffle_shards
        self._num_epochs = num_epochs
        self._start, self._step = shard_index, shard_count
        self._shard_number = {p: i for i, p in enumerate(self._shards)}
        self._id_stride = max(1, 2**31 // len(self._shards))
        self._warned_ids = False

    def image_id(self, path: str, position: int) -> int:
        """The `image_id` of the sample at `position` in shard `path`: unique over all shards and
        deterministic (the shard's number in the sorted path list x stride + position; stride
        2**31 // number of shards, so ids fit int32; ids repeat, with a warning, only in a shard
        holding more samples than the stride)."""
        if position >= self._id_stride and not self._warned_ids:
            self._warned_ids = True
            log.warning("webdataset %r: shard %s has more than %d samples, so its image_ids run into the next "
                        "shard's (retrieval would pair such samples as positives)", self._source, path,
                        self._id_stride)
        return self._shard_number[path] * self._id_stride + position % self._id_stride

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        del sequential_slice
        start, stop, step = sl.start or 0, sl.stop, sl.step or 1
        if stop is not None:
            raise ValueError("WebDatasetIterDataset supports open-ended slices only")
        # Compose: the new slice selects every `step`-th of our current units.
        self._start, self._step = self._start + start * self._step, self._step * step

    def __str__(self) -> str:
        return f"WebDatasetIterDataset({len(self._shards)} shards, slice {self._start}::{self._step})"

    def __iter__(self):
        return _WebDatasetIterator(self)


class _WebDatasetIterator(grain.DatasetIterator):
    def __init__(self, ds: WebDatasetIterDataset):
        super().__init__()
        self._ds = ds
        self._epoch, self._shard_pos, self._consumed = 0, 0, 0
        self._gen = None

    def _plan(self, epoch: int) -> tuple[list[str], bool]:
        ds = self._ds
        order = list(ds._shards)
        if ds._shuffle:
            perm = np.random.default_rng([ds._seed, epoch]).permutation(len(order))
            order = [order[i] for i in perm]
        if len(order) >= ds._step:
            return order[ds._start::ds._step], False
        return order, True  # sample-level split

    def _open(self):
        shards, by_sample = self._plan(self._epoch)
        if self._shard_pos >= len(shards):
            return None
        path = shards[self._shard_pos]
        gen = _shard_items(path, self._ds._source)
        for _ in range(self._consumed):  # resume: skip what was consumed, no image decode
            next(gen, None)
        return gen, path, by_sample

    def __next__(self):
        ds = self._ds
        while True:
            if ds._num_epochs is not None and self._epoch >= ds._num_epochs:
                raise StopIteration
            if self._gen is None:
                opened = self._open()
                if opened is None:
                    self._epoch, self._shard_pos, self._consumed = self._epoch + 1, 0, 0
                    if ds._num_epochs is None and not self._plan(self._epoch)[0]:
                        raise StopIteration  # nothing assigned to this reader at all
                    continue
                self._gen = opened
            gen, path, by_sample = self._gen
            item = next(gen, StopIteration)
            if item is StopIteration:
                self._gen, self._shard_pos, self._consumed = None, self._shard_pos + 1, 0
                continue
            position = self._consumed
            self._consumed += 1
            if by_sample and position % ds._step != ds._start:
                continue
            if isinstance(item, dict):  # a skip marker of a broken shard
                return item
            key, files = item
            return webdataset_sample_to_record(key, files, ds._source, position, shard=path,
                                               image_id=ds.image_id(path, position))

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "shard_pos": self._shard_pos, "consumed": self._consumed}

    def set_state(self, state: dict[str, Any]) -> None:
        self._epoch, self._shard_pos, self._consumed = state["epoch"], state["shard_pos"], state["consumed"]
        self._gen = None


# ---------------------------------------------------------------------------------------------
# webdataset shards read by index


@dataclasses.dataclass(frozen=True)
class TarShardIndex:
    """Where the samples of one tar shard lie: sample i is the bytes [starts[i], starts[i+1]), its
    members' headers and data. `complete` is False when the shard breaks off (a truncated copy, or
    garbage where a header should be): the samples before the break are indexed, the rest are lost
    and counted as a `truncated_shard`. `cut_sample`: a sample's member data ran past the end of the
    file; that sample is not indexed (the streaming reader drops it too)."""

    path: str
    size: int
    mtime_ns: int
    starts: np.ndarray  # int64 (N + 1,)
    complete: bool
    cut_sample: bool = False

    def __len__(self) -> int:
        return len(self.starts) - 1

    def to_json(self) -> dict:
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns,
                "starts": self.starts.tolist(), "complete": self.complete, "cut_sample": self.cut_sample}


def index_tar_shard(path: str) -> TarShardIndex:
    """Scans the member headers of a tar shard (seeking over the data, no payload is read) and
    groups consecutive members with the same key into samples, as the streaming reader does."""
    st = os.stat(path)
    spans: list[list] = []  # [key, start of its first header, end of its last member's data]
    complete, cut_sample = True, False
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                end = member.offset_data + member.size
                key = _sample_key(member.name)[0]
                if end > st.st_size:  # the data runs past the end of the file: that sample is lost
                    complete, cut_sample = False, True
                    if spans and spans[-1][0] == key:
                        spans.pop()
                    break
                if spans and spans[-1][0] == key:
                    spans[-1][2] = end
                else:
                    spans.append([key, member.offset, end])
            if complete:  # iteration also ends quietly at a cut header or garbage: want the end marker
                with open(path, "rb") as f:
                    f.seek(tar.offset)
                    complete = f.read(tarfile.BLOCKSIZE) == tarfile.NUL * tarfile.BLOCKSIZE
    except (tarfile.TarError, OSError, EOFError):
        complete = False
    starts = np.asarray([s[1] for s in spans] + ([spans[-1][2]] if spans else [0]), np.int64)
    return TarShardIndex(os.path.abspath(path), st.st_size, st.st_mtime_ns, starts, complete, cut_sample)


def _cached_tar_index(path: str, index_dir: str | None) -> TarShardIndex:
    """`index_tar_shard`, kept as JSON in `index_dir` and reused while the shard's size and
    modification time are unchanged (a rerun over thousands of shards does not rescan them)."""
    if not index_dir:
        return index_tar_shard(path)
    path = os.path.abspath(path)
    cache = os.path.join(index_dir, hashlib.sha1(path.encode()).hexdigest()[:20] + ".json")
    st = os.stat(path)
    try:
        with open(cache, encoding="utf-8") as f:
            d = json.load(f)
        if (d["path"], d["size"], d["mtime_ns"]) == (path, st.st_size, st.st_mtime_ns):
            return TarShardIndex(path, d["size"], d["mtime_ns"], np.asarray(d["starts"], np.int64), d["complete"],
                                 d["cut_sample"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no cache yet, or an unreadable one: scan again
    index = index_tar_shard(path)
    os.makedirs(index_dir, exist_ok=True)
    write_json_atomic(cache, index.to_json())
    return index


def _read_tar_sample(path: str, start: int, end: int) -> tuple[str | None, dict[str, bytes]]:
    """The members of one indexed sample -> (key, {ext: bytes}); (None, {}) when the bytes there
    are no longer a tar sample (the file changed since it was indexed)."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    # The span ends with the last member's data: add its block padding and an end-of-archive marker.
    data += tarfile.NUL * (-len(data) % tarfile.BLOCKSIZE + 2 * tarfile.BLOCKSIZE)
    key, files = None, {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if member.isfile():
                    key, ext = _sample_key(member.name)
                    files[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError):
        return None, {}
    return key, files


class WebDatasetRecords(grain.sources.RandomAccessDataSource):
    """img2dataset/webdataset tar shards read by record index, with no conversion: each shard's
    headers are scanned once (`index_tar_shard`; cached in `index_dir`), after which record i is one
    seek and one read. For jobs that need random access and resumable order (CapFilt); training
    streams the same shards with `WebDatasetIterDataset`, which yields the same records.

    `skips` counts the shards that break off (`truncated_shard`; their readable samples are kept)
    and the samples known lost in them (`truncated_sample`, as the stream counts them).
    `first_share` (index, count): the strided share of the shards this process indexes first, so
    that processes sharing `index_dir` split the scanning between them."""

    def __init__(self, shards: str | Sequence[str], source: str = "web", index_dir: str | None = None,
                 num_threads: int = 8, first_share: tuple[int, int] = (0, 1)):
        self._paths = expand_paths(shards)
        self._source = source
        mine = range(first_share[0], len(self._paths), first_share[1])
        order = list(dict.fromkeys([*mine, *range(len(self._paths))]))
        with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
            found = dict(zip(order, pool.map(lambda i: _cached_tar_index(self._paths[i], index_dir), order)))
        self._indexes = [found[i] for i in range(len(self._paths))]
        self._offsets = np.cumsum([0] + [len(ix) for ix in self._indexes])
        self.skips = collections.Counter()
        for ix in self._indexes:
            if not ix.complete:
                lost = _lost_samples(ix.path, len(ix), ix.cut_sample)
                log.warning("webdataset shard %s breaks off after %d samples; %s", ix.path, len(ix), _lost_text(lost))
                self.skips.update(truncated_shard=1, truncated_sample=lost or 0)
        self.skips = +self.skips  # drop zero counts

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        shard = bisect.bisect_right(self._offsets, index) - 1
        ix, pos = self._indexes[shard], index - int(self._offsets[shard])
        key, files = _read_tar_sample(ix.path, int(ix.starts[pos]), int(ix.starts[pos + 1]))
        if key is None:
            return skip_marker("bad_record", f"sample {pos} of {ix.path} no longer reads as indexed", self._source)
        return webdataset_sample_to_record(key, files, self._source, index, shard=ix.path)

    @property
    def truncated_shards(self) -> list[str]:
        return [ix.path for ix in self._indexes if not ix.complete]

    def __repr__(self) -> str:
        return f"WebDatasetRecords({len(self._paths)} shards, {len(self)} records)"


def _img2dataset_successes(shard: str) -> int | None:
    """The sample count img2dataset wrote next to a shard ({stem}_stats.json: "successes"), or
    None when there is no readable one."""
    stats = os.path.splitext(shard)[0] + "_stats.json"
    try:
        with open(stats, encoding="utf-8") as f:
            n = json.load(f)["successes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return n if isinstance(n, int) and n >= 0 else None


def webdataset_record_count(shards: str | Sequence[str], index_dir: str | None = None,
                            num_threads: int = 8) -> tuple[int, dict[str, int]]:
    """How many samples the shards hold -> (count, {"stats_json": shards counted from img2dataset's
    stats files, "scanned": shards whose headers were scanned (`index_tar_shard`, cached in
    `index_dir`)}). Streamed training needs it for its epochs (schedules, ramps, per-epoch evals)."""
    paths = expand_paths(shards)
    from_stats = [_img2dataset_successes(p) for p in paths]
    missing = [p for p, n in zip(paths, from_stats) if n is None]
    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        scanned = list(pool.map(lambda p: len(_cached_tar_index(p, index_dir)), missing))
    total = sum(n for n in from_stats if n is not None) + sum(scanned)
    return total, {"stats_json": len(paths) - len(missing), "scanned": len(missing)}


# ---------------------------------------------------------------------------------------------
# Captions over another source's images (CapFilt's bootstrapped set without an image copy)


class CaptionOverlayRecords(grain.sources.RandomAccessDataSource):
    """Caption records (`captions`: ArrayRecord records without image bytes whose `index` is a
    position in `base`) read as full records: the image of base[index] with the overlay's
    captions. CapFilt writes its bootstrapped set so for sources that hold the images (web shards,
    ArrayRecord), so that the kept set costs its captions, not a second copy of the images."""

    def __init__(self, captions, base, source: str = "capfilt"):
        self._captions, self._base, self._source = captions, base, source

    def __len__(self) -> int:
        return len(self._captions)

    def __getitem__(self, index: int) -> dict:
        entry = self._captions[index]
        if SKIP_KEY in entry:
            return entry
        rec = self._base[int(entry["index"])]
        if SKIP_KEY in rec:
            return rec
        return dict(rec, captions=entry["captions"], source=self._source, index=index,
                    image_id=int(entry["index"]))

    def __repr__(self) -> str:
        return f"CaptionOverlayRecords({len(self)} records over {self._base!r})"


# ---------------------------------------------------------------------------------------------
# ArrayRecord


class ArrayRecordRecords(grain.sources.RandomAccessDataSource):
    """ArrayRecord shards written by `convert.py` -> records (bad bytes -> skip markers)."""

    def __init__(self, paths: str | Sequence[str], source: str = "array_record"):
        self._paths = expand_paths(paths)
        self._ds = grain.sources.ArrayRecordDataSource(self._paths)
        self._source = source

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):  # IndexError, so that iteration ends (the reader raises ValueError)
            raise IndexError(f"record {index} of {len(self)}")
        data = self._ds[index]
        try:
            rec = deserialize_record(data)
        except BadRecord as e:
            return skip_marker(e.reason, f"{e.detail} at index {index}", self._source)
        rec["source"] = rec.get("source") or self._source
        return rec

    def __repr__(self) -> str:
        return f"ArrayRecordRecords({len(self._paths)} files, {len(self)} records)"


# ---------------------------------------------------------------------------------------------
# tfds (optional extra: `pip install blip-jax[tfds]`)


def _get_path(example: dict, key: str):
    if key in example:
        return example[key]
    node: Any = example
    for part in key.split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _as_text(value) -> Any:
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value


def tfds_example_to_record(example: dict, index: int, image_key: str = "image",
                           caption_key: str = "captions/text", id_key: str | None = "image/id",
                           source: str = "tfds") -> dict:
    """A tfds example (decoded or with SkipDecoding image bytes) -> record."""
    image = _get_path(example, image_key)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3:
        image = image if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, -1)
    elif isinstance(image, (bytes, np.bytes_)):
        image = bytes(image)
    elif image is not None and not isinstance(image, np.ndarray):
        image = None
    captions = _get_path(example, caption_key)
    if captions is None:
        captions = []
    elif isinstance(captions, (str, bytes, np.bytes_)):
        captions = [captions]
    captions = [_as_text(c) for c in np.asarray(captions, dtype=object).reshape(-1).tolist()]
    raw_id = _get_path(example, id_key) if id_key else None
    image_id = int(raw_id) if raw_id is not None and np.ndim(raw_id) == 0 else index
    return make_record(image=image, image_id=image_id, image_key=str(image_id), captions=captions,
                       source=source, index=index)


class TfdsRecords(grain.sources.RandomAccessDataSource):
    """`tfds.data_source(name, split)` of a dataset the user prepared -> records.

    Images are read undecoded (SkipDecoding) so the train transform can use scaled JPEG decode.
    Needs the optional extra; importing blip_jax never imports tensorflow_datasets."""

    def __init__(self, name: str, split: str, data_dir: str | None = None, image_key: str = "image",
                 caption_key: str = "captions/text", id_key: str | None = "image/id", source: str | None = None):
        try:
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise ImportError("tfds sources need tensorflow-datasets: pip install 'blip-jax[tfds]'") from e
        decoders = {image_key: tfds.decode.SkipDecoding()}
        self._ds = tfds.data_source(name, split=split, data_dir=data_dir, decoders=decoders)
        self._kw = dict(image_key=image_key, caption_key=caption_key, id_key=id_key, source=source or name)

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> dict:
        return tfds_example_to_record(self._ds[index], index, **self._kw)
