"""grain pipelines: pretraining mixtures, retrieval / captioning / VQA fine-tuning, evaluation.

Every builder returns a `DataPipeline`; `iter(pipeline)` gives a grain `DatasetIterator` of
batches (dicts of numpy arrays; per-process batch size) whose `get_state()/set_state()` is the
whole pipeline position (checkpoint it with `grain.checkpoint.CheckpointSave/Restore` under
Orbax, see `checkpoint_args`). Shapes (B = per-process batch, S = image size, L = max_len):

  pretrain / retrieval / caption:  pixel_values (B, S, S, 3) f32, input_ids (B, L) i32,
                                   attention_mask (B, L) i32, image_id (B,) i32, index (B,) i32
  vqa (train):   pixel_values, question_input_ids / question_attention_mask (B, Lq) i32,
                 answer_input_ids / answer_attention_mask (B, K, La) i32, answer_weights (B, K)
                 f32 (0 for padding answers), question_id (B,) i32
  eval:          pixel_values, index, image_id, mask (B,) i32 (1 = real sample, 0 = padding)
                 [+ question_input_ids / question_attention_mask / question_id for VQA]

Flow (per process): records -> shard by process (strided: disjoint, complete) -> shuffle ->
repeat -> [weighted mix] -> per-element decode/augment/clean/tokenize (seeded by element
index: deterministic) -> drop + count bad records -> batch -> [worker processes] -> batches.
Bad records never raise: counts per reason are in `iterator.skip_counts`, as metrics
`data_metrics(iterator.skip_counts)`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from blip_jax.data import annotations as ann
from blip_jax.data.image import image_bytes_of
from blip_jax.data.records import (
    DROPPED_FIELD,
    PARTIAL_REASONS,
    REASON_INDEX,
    SKIP_KEY,
    SKIP_REASONS,
    SKIPPED_FIELD,
    BadRecord,
    skip_marker,
)
from blip_jax.data.sources import (
    ArrayRecordRecords,
    CaptionOverlayRecords,
    TfdsRecords,
    WebDatasetIterDataset,
    WebDatasetRecords,
    webdataset_record_count,
)
from blip_jax.data.text import caption_problem, pre_caption, pre_question
from blip_jax.data.transforms import EvalImageTransform, RandAugment, TrainImageTransform

log = logging.getLogger(__name__)
FORMATS = ("blip_json", "coco_karpathy", "vqa", "webdataset", "array_record", "tfds", "capfilt_captions")


# ---------------------------------------------------------------------------------------------
# Dataset specs


@dataclasses.dataclass
class DatasetSpec:
    """Where one dataset lives. `paths`: annotation JSON files (blip_json, coco_karpathy, vqa),
    tar shard globs (webdataset), .array_record globs (array_record) or [tfds name] (tfds)."""

    name: str
    format: str
    paths: Sequence[str]
    image_root: str | None = None
    vg_image_root: str | None = None  # vqa: root for entries with "dataset": "vg"
    weight: float = 1.0  # mixture weight (pretraining)
    split: str = "train"  # coco_karpathy: train/val/test; vqa: train/test; tfds: split name
    tfds_data_dir: str | None = None
    tfds_caption_key: str = "captions/text"
    # webdataset: the samples in all shards, when known; else read from img2dataset's
    # {shard}_stats.json files, else counted by scanning the tar headers (cached)
    num_records: int | None = None
    # webdataset: read the shards by index (`WebDatasetRecords`: one header scan per shard, cached)
    # and shuffle globally like a map-style source, instead of streaming them; for shards on disks
    # with fast random reads
    random_access: bool = False
    # webdataset read by index: where its header index is cached (None: the job's own cache)
    index_dir: str | None = None
    # capfilt_captions: `paths` are caption-only ArrayRecord shards whose records point (by index)
    # at the images of this dataset spec (CapFilt's bootstrapped set over web shards/ArrayRecord)
    base: dict | None = None

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"dataset {self.name!r}: format must be one of {FORMATS}, got {self.format!r}")
        self.paths = [self.paths] if isinstance(self.paths, str) else list(self.paths)

    @classmethod
    def from_any(cls, spec: DatasetSpec | dict | Any) -> DatasetSpec:
        if isinstance(spec, cls):
            return spec
        d = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
        return cls(**d)


def open_source(spec: DatasetSpec, shard_index: int = 0, shard_count: int = 1, seed: int = 0,
                num_epochs: int | None = 1, random_access: bool = False, index_dir: str | None = None):
    """-> (map-style records or a streaming IterDataset, load-time skip Counter).

    Map-style results are *not* yet sharded (the pipeline slices them); streaming ones are.
    `random_access`: webdataset shards are read by index (`WebDatasetRecords`, header index cached
    in `index_dir`; the process's own shards are indexed first) instead of streamed."""
    fmt = spec.format
    random_access = random_access or spec.random_access
    index_dir = spec.index_dir or index_dir
    if fmt == "blip_json":
        recs = ann.load_pretrain(spec.paths, spec.image_root, source=spec.name)
        return recs, recs.skips
    if fmt == "coco_karpathy":
        if len(spec.paths) != 1:
            raise ValueError(f"dataset {spec.name!r}: coco_karpathy takes one annotation file per split")
        recs = ann.load_coco_karpathy(spec.paths[0], spec.image_root, spec.split, source=spec.name)
        return recs, recs.skips
    if fmt == "vqa":
        recs = ann.load_vqa(spec.paths, spec.image_root, spec.vg_image_root, spec.split, source=spec.name)
        return recs, recs.skips
    if fmt == "array_record":
        return ArrayRecordRecords(spec.paths, source=spec.name), collections.Counter()
    if fmt == "capfilt_captions":
        if not spec.base:
            raise ValueError(f"dataset {spec.name!r}: capfilt_captions needs `base`, the spec of the image source")
        base, skips = open_source(DatasetSpec.from_any(spec.base), random_access=True, index_dir=index_dir)
        return CaptionOverlayRecords(ArrayRecordRecords(spec.paths, source=spec.name), base, spec.name), skips
    if fmt == "tfds":
        src = TfdsRecords(spec.paths[0], spec.split, spec.tfds_data_dir, caption_key=spec.tfds_caption_key,
                          source=spec.name)
        return src, collections.Counter()
    if random_access:
        recs = WebDatasetRecords(spec.paths, source=spec.name, index_dir=index_dir,
                                 first_share=(shard_index, shard_count))
        return recs, recs.skips
    ds = WebDatasetIterDataset(spec.paths, source=spec.name, seed=seed, num_epochs=num_epochs,
                               shard_index=shard_index, shard_count=shard_count)
    return ds, collections.Counter()


def stream_record_count(spec: DatasetSpec, index_dir: str | None = None) -> int:
    """The samples of a streamed (webdataset) dataset: `spec.num_records`, else img2dataset's stats
    files, else a scan of the shards' tar headers (about 17,000 samples/s a core; cached in
    `index_dir`, so only a first run pays it)."""
    if spec.num_records is not None:
        return int(spec.num_records)
    t0 = time.time()
    count, how = webdataset_record_count(spec.paths, index_dir)
    if how["scanned"]:
        log.warning("dataset %r: counted %d samples, %d shards from img2dataset stats files and %d by scanning "
                    "their tar headers (%.1f s%s); set num_records in its spec to skip this", spec.name, count,
                    how["stats_json"], how["scanned"], time.time() - t0,
                    f", cached in {index_dir}" if index_dir else "")
    return count


# ---------------------------------------------------------------------------------------------
# Per-element processors: record -> example (numpy) or raise BadRecord


def tokenize(tokenizer, text: str | list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """-> input_ids, attention_mask int32 (L,) for a str, (N, L) for a list; right-padded."""
    out = tokenizer(text if isinstance(text, list) else [text], padding="max_length", truncation=True,
                    max_length=max_len, return_tensors="np")
    ids = np.asarray(out["input_ids"], np.int32)
    mask = np.asarray(out["attention_mask"], np.int32)
    if ids.shape[-1] != max_len:  # tokenizers that ignore max_length padding: enforce it here
        pad = getattr(tokenizer, "pad_token_id", 0) or 0
        fixed_ids = np.full(ids.shape[:-1] + (max_len,), pad, np.int32)
        fixed_mask = np.zeros_like(fixed_ids)
        n = min(max_len, ids.shape[-1])
        fixed_ids[..., :n], fixed_mask[..., :n] = ids[..., :n], mask[..., :n]
        ids, mask = fixed_ids, fixed_mask
    return (ids, mask) if isinstance(text, list) else (ids[0], mask[0])


def _where(record: dict) -> str:
    return f"{record.get('source', '')}:{record.get('image_key') or record.get('image_path') or record.get('index')}"


@dataclasses.dataclass
class ImageTextProcessor:
    """Image + one caption. Pretraining samples one valid caption per visit (lists), fine-tuning
    uses the record's caption; `prompt` is prepended after cleaning (captioning)."""

    image_transform: Any
    tokenizer: Any = None
    max_words: int = 30
    max_len: int = 35
    prompt: str = ""

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        valid = [c for c in record["captions"] if caption_problem(c) is None]
        if not valid:
            reason = caption_problem(record["captions"][0]) if record["captions"] else "bad_caption"
            raise BadRecord(reason, _where(record))
        n_bad = len(record["captions"]) - len(valid)
        caption = valid[int(rng.integers(len(valid)))] if len(valid) > 1 else valid[0]
        text = self.prompt + pre_caption(caption, self.max_words)
        pixels = self.image_transform(image_bytes_of(record), rng, _where(record))
        out = {"pixel_values": pixels, "image_id": np.int32(record["image_id"]), "index": np.int32(record["index"])}
        if self.tokenizer is None:
            out["caption"] = np.str_(text)
        else:
            out["input_ids"], out["attention_mask"] = tokenize(self.tokenizer, text, self.max_len)
        if n_bad:  # counted (per visit) as dropped_caption by _DropSkipped; the record is kept
            bad = next(c for c in record["captions"] if caption_problem(c) is not None)
            out[DROPPED_FIELD] = [skip_marker("dropped_caption", f"{n_bad} of {len(record['captions'])} "
                                              f"captions unusable, e.g. {bad!r:.40}", _where(record))] * n_bad
        return out


@dataclasses.dataclass
class VQAProcessor:
    """Image + question (+ up to `max_answers` weighted answers when training)."""

    image_transform: Any
    tokenizer: Any = None
    max_question_words: int = 50
    question_max_len: int = 35
    answer_max_len: int = 10
    max_answers: int = 10
    train: bool = True

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        q = record.get("question")
        if not isinstance(q, str) or not pre_question(q, self.max_question_words).strip():
            raise BadRecord("bad_question", _where(record))
        question = pre_question(q, self.max_question_words)
        out: dict[str, Any] = {"question_id": np.int64(record["question_id"]).astype(np.int32)}
        if self.train:
            pairs = [(a, w) for a, w in zip(record["answers"], record["answer_weights"]) if isinstance(a, str) and a]
            if not pairs:
                raise BadRecord("bad_answers", _where(record))
            pairs = sorted(pairs, key=lambda p: -p[1])[: self.max_answers]  # stable: ties keep order
            answers = [a for a, _ in pairs]
            weights = np.zeros(self.max_answers, np.float32)
            weights[: len(pairs)] = [w for _, w in pairs]
        out["pixel_values"] = self.image_transform(image_bytes_of(record), rng, _where(record))
        if self.tokenizer is None:
            out["question"] = np.str_(question)
            if self.train:
                out["answers"] = np.array(answers + [""] * (self.max_answers - len(answers)), dtype=np.str_)
                out["answer_weights"] = weights
            return out
        out["question_input_ids"], out["question_attention_mask"] = tokenize(self.tokenizer, question,
                                                                             self.question_max_len)
        if self.train:
            ids, mask = tokenize(self.tokenizer, answers, self.answer_max_len)
            pad = getattr(self.tokenizer, "pad_token_id", 0) or 0
            a_ids = np.full((self.max_answers, self.answer_max_len), pad, np.int32)
            a_mask = np.zeros((self.max_answers, self.answer_max_len), np.int32)
            a_ids[: len(answers)], a_mask[: len(answers)] = ids, mask
            out.update(answer_input_ids=a_ids, answer_attention_mask=a_mask, answer_weights=weights)
        return out


@dataclasses.dataclass
class EvalProcessor:
    """Eval image (+ the VQA question) with alignment ids."""

    image_transform: Any
    tokenizer: Any = None
    vqa: bool = False
    question_max_len: int = 35
    max_question_words: int = 50

    def __call__(self, record: dict, rng: np.random.Generator | None = None) -> dict:
        out: dict[str, Any] = {"index": np.int32(record["index"]), "image_id": np.int32(record["image_id"])}
        if self.vqa:
            vqa = VQAProcessor(self.image_transform, self.tokenizer, self.max_question_words,
                               self.question_max_len, train=False)
            out.update(vqa(record, rng))
            return out
        out["pixel_values"] = self.image_transform(image_bytes_of(record), rng, _where(record))
        return out


@dataclasses.dataclass
class _Guarded:
    """Turns BadRecord into a skip marker; passes source-level skip markers through."""

    fn: Any

    def __call__(self, record: dict, rng: np.random.Generator | None = None) -> dict:
        if SKIP_KEY in record:
            return record
        try:
            return self.fn(record, rng)
        except BadRecord as e:
            return skip_marker(e.reason, e.detail, _where(record))


# ---------------------------------------------------------------------------------------------
# Skip accounting and batching as grain iterators (checkpointable state, JSON-serialisable)


class _DropSkipped(grain.IterDataset):
    """Drops skip markers; each kept element carries SKIPPED_FIELD, int32 (R,): how many records
    were dropped just before it (so counts survive worker processes and batching)."""

    def __init__(self, parent):
        super().__init__(parent)

    def __iter__(self):
        return _DropSkippedIterator(self._parent.__iter__())


_LOGGED: collections.Counter = collections.Counter()


class _DropSkippedIterator(grain.DatasetIterator):
    _MUTATES_ELEMENT_SPEC = True

    def __init__(self, parent):
        super().__init__(parent)
        self._pending = np.zeros(len(SKIP_REASONS), np.int32)

    def __next__(self):
        while True:
            x = next(self._parent)
            if SKIP_KEY in x:
                self._count(x, "skipping record")
                continue
            for part in x.pop(DROPPED_FIELD, ()):
                self._count(part, "dropping part of a record")
            x[SKIPPED_FIELD] = self._pending
            self._pending = np.zeros(len(SKIP_REASONS), np.int32)
            return x

    def _count(self, marker: dict, what: str) -> None:
        reason = marker[SKIP_KEY]
        self._pending[REASON_INDEX[reason]] += 1
        if _LOGGED[reason] < 5:  # a few examples per reason, not a flood
            _LOGGED[reason] += 1
            log.warning("%s (%s): %s %s", what, reason, marker.get("where", ""), marker.get("detail", ""))

    def get_state(self):
        return {"parent": self._parent.get_state(), "pending": self._pending.tolist()}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self._pending = _reason_counts(state["pending"], np.int32)


def _reason_counts(saved, dtype) -> np.ndarray:
    """Checkpointed per-reason counts -> (len(SKIP_REASONS),); a state saved before reasons were
    appended to SKIP_REASONS is zero-padded."""
    out = np.zeros(len(SKIP_REASONS), dtype)
    saved = np.asarray(saved, dtype)
    if len(saved) > len(out):
        raise ValueError(f"checkpointed skip counts have {len(saved)} reasons, this version knows {len(out)}")
    out[: len(saved)] = saved
    return out


def pad_batch(examples: list[dict], batch_size: int, template: dict[str, tuple[tuple, Any]]) -> dict:
    """Stacks examples and pads to `batch_size` with zeros; adds mask (B,) int32."""
    out = {}
    n = len(examples)
    for k, (shape, dtype) in template.items():
        arr = np.zeros((batch_size,) + tuple(shape), dtype)
        if n:
            arr[:n] = np.stack([np.asarray(e[k]) for e in examples])
        out[k] = arr
    out["mask"] = (np.arange(batch_size) < n).astype(np.int32)
    skipped = np.zeros(len(SKIP_REASONS), np.int32)
    for e in examples:
        skipped += e[SKIPPED_FIELD]
    out[SKIPPED_FIELD] = skipped
    return out


class _PaddedBatch(grain.IterDataset):
    """Eval batching: every element exactly once, the last batch zero-padded with mask 0, and
    exactly `num_batches` batches (so all processes of a multi-host eval step together)."""

    def __init__(self, parent, batch_size: int, num_batches: int, template):
        super().__init__(parent)
        self._bs, self._nb, self._template = batch_size, num_batches, template

    def __iter__(self):
        return _PaddedBatchIterator(self._parent.__iter__(), self._bs, self._nb, self._template)


class _PaddedBatchIterator(grain.DatasetIterator):
    def __init__(self, parent, batch_size, num_batches, template):
        super().__init__(parent)
        self._bs, self._nb, self._template = batch_size, num_batches, template
        self._emitted, self._exhausted = 0, False

    def __next__(self):
        if self._emitted >= self._nb:
            if not self._exhausted and next(self._parent, None) is not None:
                raise RuntimeError("eval pipeline produced more elements than planned batches")
            raise StopIteration
        examples = []
        while len(examples) < self._bs and not self._exhausted:
            x = next(self._parent, None)
            if x is None:
                self._exhausted = True
            else:
                examples.append(x)
        self._emitted += 1
        return pad_batch(examples, self._bs, self._template)

    def get_state(self):
        return {"parent": self._parent.get_state(), "emitted": self._emitted, "exhausted": self._exhausted}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self._emitted, self._exhausted = state["emitted"], state["exhausted"]


class _SkipCounting(grain.IterDataset):
    def __init__(self, parent, initial: collections.Counter):
        super().__init__(parent)
        self._initial = dict(initial)

    def __iter__(self):
        return SkipCountingIterator(self._parent.__iter__(), self._initial)


class SkipCountingIterator(grain.DatasetIterator):
    """The iterator pipelines hand out: batches without the bookkeeping field, running totals
    of skipped records per reason in `skip_counts` (part of the checkpointed state)."""

    def __init__(self, parent, initial: dict[str, int]):
        super().__init__(parent)
        self._initial = dict(initial)
        self._counts = np.zeros(len(SKIP_REASONS), np.int64)

    def __next__(self):
        try:
            batch = next(self._parent)
        except StopIteration:
            self._collect_trailing()
            raise
        skipped = batch.pop(SKIPPED_FIELD)
        self._counts += np.asarray(skipped).reshape(-1, len(SKIP_REASONS)).sum(0)
        return batch

    def _collect_trailing(self) -> None:
        """Skips after the last element of a finite stream ride on no element: fetch them from
        in-process drop iterators. (Across worker processes, and inside a dropped remainder
        batch, they stay uncounted; training streams are infinite, eval runs in-process.)"""
        stack = list(self._parents)
        while stack:
            node = stack.pop()
            if isinstance(node, _DropSkippedIterator):
                self._counts += node._pending
                node._pending = np.zeros(len(SKIP_REASONS), np.int32)
            stack.extend(getattr(node, "_parents", ()))

    @property
    def skip_counts(self) -> dict[str, int]:
        """Records skipped so far by this process, per reason (load-time ones included)."""
        out = {r: int(c) for r, c in zip(SKIP_REASONS, self._counts) if c}
        for r, c in self._initial.items():
            out[r] = out.get(r, 0) + int(c)
        return out

    def get_state(self):
        return {"parent": self._parent.get_state(), "skipped": self._counts.tolist()}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self._counts = _reason_counts(state["skipped"], np.int64)


def data_metrics(counts: Mapping[str, int]) -> dict[str, int]:
    """Skip counts by reason (a `SkipCountingIterator.skip_counts`, or their sum over processes) ->
    {"data/skipped/<reason>": n, "data/skipped/total": n} for metric writers. The total counts
    skipped records (and broken shards), not the parts dropped from kept records (PARTIAL_REASONS:
    dropped captions, dropped VQA votes), which have their own entries."""
    out = {f"data/skipped/{r}": n for r, n in sorted(counts.items())}
    out["data/skipped/total"] = sum(n for r, n in counts.items() if r not in PARTIAL_REASONS)
    return out


# ---------------------------------------------------------------------------------------------
# Builders


@dataclasses.dataclass
class LoaderOptions:
    """Parallelism, sharding and determinism knobs common to all pipelines.

    shard_index/shard_count default to jax.process_index()/process_count(). `num_workers`
    processes each run the per-element work *and* batching (batches come back through shared
    memory); 0 runs it in `num_threads` threads of this process (PIL and libjpeg release the
    GIL). Restoring an iterator state needs the same num_workers and shard layout."""

    batch_size: int = 32
    seed: int = 0
    shard_index: int | None = None
    shard_count: int | None = None
    num_workers: int = 0
    worker_buffer_size: int = 2
    num_threads: int = 8
    prefetch_buffer_size: int = 64
    host_prefetch: int = 2  # batches prefetched in a background thread when num_workers == 0
    # Streaming sources (webdataset) in training: records are shuffled within consecutive windows
    # of this many, each window with its own seed, so batches are not runs of one shard's order and
    # their composition changes every epoch (map-style sources are shuffled globally). Raw records
    # are held (encoded images): about window x 50 KB per reader. 0 = shard order.
    shuffle_window: int = 1000
    # Where tar header indexes are cached: those that count streamed shards without img2dataset
    # stats files, and those of shards read by index (None: not cached).
    index_dir: str | None = None
    # Evaluation images: True decodes at full size as the original BLIP does (PIL decode + bicubic
    # resize, bit-exact); False lets JPEGs decode at a reduced DCT scale, which is identical unless
    # both sides of the stored JPEG are at least 2 x image_size (COCO's 640x480 at 384 or 480, Flickr30k
    # at 224 or 384: identical; COCO at 224, larger photos: mean 1.3-1.5, max ~15 grey levels).
    exact_eval_decode: bool = False

    def resolved_shard(self) -> tuple[int, int]:
        if self.shard_index is not None and self.shard_count is not None:
            return self.shard_index, self.shard_count
        import jax

        return jax.process_index(), jax.process_count()


@dataclasses.dataclass
class DataPipeline:
    """A built pipeline: `iter(p)` -> SkipCountingIterator of batches."""

    dataset: Any  # grain.IterDataset
    num_examples: int  # examples per epoch for this process (the global count / processes)
    batch_size: int
    load_skips: collections.Counter

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.batch_size

    def __iter__(self) -> SkipCountingIterator:
        return iter(self.dataset)


def _ensure_absl_flags() -> None:
    """grain's worker processes read absl flags; outside an absl app they are unparsed, which
    makes mp_prefetch fail. Marking them parsed keeps the defaults (what an absl app would do)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _mp_options(opts: LoaderOptions):
    _ensure_absl_flags()
    return grain.MultiprocessingOptions(num_workers=opts.num_workers, per_worker_buffer_size=opts.worker_buffer_size)


def _read_options(opts: LoaderOptions):
    return grain.ReadOptions(num_threads=opts.num_threads, prefetch_buffer_size=opts.prefetch_buffer_size)


def _finish_train(stream, opts: LoaderOptions, load_skips, num_examples) -> DataPipeline:
    ds = _DropSkipped(stream).batch(opts.batch_size, drop_remainder=True)
    if opts.num_workers > 0:
        ds = ds.mp_prefetch(_mp_options(opts))
    elif opts.host_prefetch > 0:
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=opts.host_prefetch)
    return DataPipeline(_SkipCounting(ds, load_skips), num_examples, opts.batch_size, load_skips)


def train_pipeline(datasets: Sequence[DatasetSpec | dict], processor, opts: LoaderOptions,
                   num_epochs: int | None = None, shuffle: bool = True) -> DataPipeline:
    """General training pipeline: weighted mixture of `datasets` through `processor`.

    A single dataset runs epoch after epoch (reshuffled each epoch); several are mixed by
    `weight` (each repeated on its own, so a small dataset is revisited more often)."""
    specs = [DatasetSpec.from_any(s) for s in datasets]
    if not specs:
        raise ValueError("no datasets given")
    shard_index, shard_count = opts.resolved_shard()
    load_skips: collections.Counter = collections.Counter()
    guarded = _Guarded(processor)
    map_branches, iter_branches, weights, num_examples = [], [], [], 0
    for i, spec in enumerate(specs):
        src, skips = open_source(spec, shard_index, shard_count, opts.seed + 7919 * i, num_epochs,
                                 index_dir=opts.index_dir)
        load_skips.update(skips)
        # An epoch is the whole mixture once (BLIP's concatenated datasets), counted globally and
        # divided evenly, so that every process derives the same steps per epoch.
        if isinstance(src, grain.IterDataset):
            if shuffle and opts.shuffle_window > 1:
                src = grain.experimental.WindowShuffleIterDataset(src, window_size=opts.shuffle_window,
                                                                  seed=opts.seed + 7919 * i)
            iter_branches.append((i, src.random_map(guarded, seed=opts.seed + 104729 * (i + 1))))
            num_examples += stream_record_count(spec, opts.index_dir) // shard_count
        else:
            ds = grain.MapDataset.source(src)[shard_index::shard_count]
            if not len(ds):
                raise ValueError(f"dataset {spec.name!r} ({', '.join(spec.paths)}) has no records"
                                 + (f" for process {shard_index} of {shard_count}" if shard_count > 1 else ""))
            num_examples += len(src) // shard_count
            if shuffle:
                ds = ds.shuffle(seed=opts.seed + 7919 * i)
            map_branches.append((i, ds.repeat(num_epochs) if (num_epochs != 1 or len(specs) > 1) else ds))
        weights.append(spec.weight)
    if not iter_branches:
        branches = [ds for _, ds in map_branches]
        mixed = branches[0] if len(branches) == 1 else grain.MapDataset.mix(branches, weights)
        stream = mixed.random_map(guarded, seed=opts.seed).to_iter_dataset(_read_options(opts))
    else:
        by_index = dict(iter_branches)
        for i, ds in map_branches:
            by_index[i] = ds.random_map(guarded, seed=opts.seed + 104729 * (i + 1)).to_iter_dataset(
                _read_options(opts))
        branches = [by_index[i] for i in range(len(specs))]
        stream = branches[0] if len(branches) == 1 else grain.IterDataset.mix(branches, weights)
    return _finish_train(stream, opts, load_skips, num_examples)


def _train_transform(image_size: int, min_scale: float, hflip: bool, randaugment: bool,
                     exact_crops: bool) -> TrainImageTransform:
    """BLIP's train transform. `exact_crops`: torchvision's RandomResizedCrop exactly (full-size PIL
    decode, PIL bicubic); otherwise the fast path (DCT-scaled decode, OpenCV area resize: 1.8x the
    images/s per core, crops within ~1 grey level of the exact ones; see data/transforms.py)."""
    return TrainImageTransform(image_size, min_scale=min_scale, hflip=hflip,
                               randaugment=RandAugment() if randaugment else None, fast_decode=not exact_crops)


def pretrain_pipeline(datasets: Sequence[DatasetSpec | dict], tokenizer, opts: LoaderOptions, *,
                      image_size: int = 224, min_scale: float = 0.2, max_words: int = 30, max_len: int = 30,
                      hflip: bool = True, randaugment: bool = True, exact_crops: bool = False,
                      num_epochs: int | None = None) -> DataPipeline:
    """Pretraining on a weighted mixture (e.g. COCO+VG+CC+SBU+LAION)."""
    transform = _train_transform(image_size, min_scale, hflip, randaugment, exact_crops)
    proc = ImageTextProcessor(transform, tokenizer, max_words=max_words, max_len=max_len)
    return train_pipeline(datasets, proc, opts, num_epochs=num_epochs)


def retrieval_train_pipeline(dataset: DatasetSpec | dict, tokenizer, opts: LoaderOptions, *,
                             image_size: int = 384, min_scale: float = 0.5, max_words: int = 30,
                             max_len: int = 35, hflip: bool = True, randaugment: bool = True,
                             exact_crops: bool = False, num_epochs: int | None = None) -> DataPipeline:
    """Retrieval fine-tuning (coco_karpathy train: one record per caption). `image_id` in the
    batch is the dense image id: pairs with equal ids are ITC positives."""
    transform = _train_transform(image_size, min_scale, hflip, randaugment, exact_crops)
    proc = ImageTextProcessor(transform, tokenizer, max_words=max_words, max_len=max_len)
    return train_pipeline([dataset], proc, opts, num_epochs=num_epochs)


def caption_train_pipeline(dataset: DatasetSpec | dict, tokenizer, opts: LoaderOptions, *,
                           image_size: int = 384, min_scale: float = 0.5, max_words: int = 30,
                           max_len: int = 40, prompt: str = "a picture of ", hflip: bool = True,
                           randaugment: bool = True, exact_crops: bool = False,
                           num_epochs: int | None = None) -> DataPipeline:
    """Caption fine-tuning: captions are `prompt + pre_caption(caption)` (BLIP's coco_karpathy_train)."""
    transform = _train_transform(image_size, min_scale, hflip, randaugment, exact_crops)
    proc = ImageTextProcessor(transform, tokenizer, max_words=max_words, max_len=max_len, prompt=prompt)
    return train_pipeline([dataset], proc, opts, num_epochs=num_epochs)


def vqa_train_pipeline(dataset: DatasetSpec | dict, tokenizer, opts: LoaderOptions, *,
                       image_size: int = 480, min_scale: float = 0.5, question_max_len: int = 35,
                       answer_max_len: int = 10, max_answers: int = 10, hflip: bool = True,
                       randaugment: bool = True, exact_crops: bool = False,
                       num_epochs: int | None = None) -> DataPipeline:
    """VQA fine-tuning (vqa_train + vqa_val + vg_qa as one spec with several files)."""
    transform = _train_transform(image_size, min_scale, hflip, randaugment, exact_crops)
    proc = VQAProcessor(transform, tokenizer, question_max_len=question_max_len,
                        answer_max_len=answer_max_len, max_answers=max_answers, train=True)
    return train_pipeline([dataset], proc, opts, num_epochs=num_epochs)


def _eval_template(processor: EvalProcessor, image_size: int) -> dict[str, tuple[tuple, Any]]:
    t = {"index": ((), np.int32), "image_id": ((), np.int32),
         "pixel_values": ((image_size, image_size, 3), np.float32 if processor.image_transform.normalize else np.uint8)}
    if processor.vqa:
        t["question_id"] = ((), np.int32)
        if processor.tokenizer is not None:
            t["question_input_ids"] = ((processor.question_max_len,), np.int32)
            t["question_attention_mask"] = ((processor.question_max_len,), np.int32)
    return t


def eval_pipeline(dataset: DatasetSpec | dict | Sequence[dict], opts: LoaderOptions, *, image_size: int = 384,
                  tokenizer=None, vqa: bool = False, question_max_len: int = 35,
                  exact_decode: bool | None = None) -> DataPipeline:
    """Every record of `dataset` exactly once (this process's strided share), in order, in
    `ceil(ceil(N / shard_count) / batch_size)` batches on every process; padding rows have
    mask 0. Records with bad images are skipped and counted (their `index` never appears).

    `exact_decode` (default `opts.exact_eval_decode`): decode images at full size before the
    bicubic resize, as the original BLIP; otherwise large JPEGs decode at a reduced DCT scale
    (identical pixels unless both sides of the JPEG are >= 2 x image_size; see EvalImageTransform)."""
    if isinstance(dataset, Sequence) and (not len(dataset) or {"captions", SKIP_KEY} & set(dataset[0])):
        records, load_skips = dataset, collections.Counter()  # records, or a random-access view of them
    else:
        spec = DatasetSpec.from_any(dataset)
        records, load_skips = open_source(spec)
        if isinstance(records, grain.IterDataset):
            raise ValueError("eval needs a random-access source (BLIP JSON, ArrayRecord or tfds)")
    shard_index, shard_count = opts.resolved_shard()
    exact = opts.exact_eval_decode if exact_decode is None else exact_decode
    proc = EvalProcessor(EvalImageTransform(image_size, fast_decode=not exact), tokenizer, vqa=vqa,
                         question_max_len=question_max_len)
    n_total = len(records)
    num_batches = math.ceil(math.ceil(n_total / shard_count) / opts.batch_size)
    ds = grain.MapDataset.source(records)[shard_index::shard_count]
    num_examples = len(ds)
    stream = ds.map(_Guarded(proc)).to_iter_dataset(_read_options(opts))
    if opts.num_workers > 0:
        stream = stream.mp_prefetch(_mp_options(opts))
    batched = _PaddedBatch(_DropSkipped(stream), opts.batch_size, num_batches, _eval_template(proc, image_size))
    return DataPipeline(_SkipCounting(batched, load_skips), num_examples, opts.batch_size, load_skips)


def retrieval_eval_texts(records: Sequence[dict], max_words: int = 30,
                         skips: collections.Counter | None = None):
    """coco_karpathy val/test records -> (texts, txt2img (T,) int32, img2txt list of lists).

    Text i belongs to image txt2img[i] (the record `index`). A caption that is not a string, or
    is empty after cleaning, stays in as an "" query so that text indices stay aligned with the
    annotation file (a retrieval metric then counts it as a miss); each one is counted in
    `skips` (under bad_caption / empty_caption, when given) and logged with its file and entry."""
    texts, txt2img, img2txt = [], [], []
    files = getattr(records, "files", None)
    bad: collections.Counter = collections.Counter()
    for rec in records:
        ids = []
        for k, c in enumerate(rec["captions"]):
            ids.append(len(texts))
            problem = caption_problem(c)
            texts.append("" if problem else pre_caption(c, max_words))
            txt2img.append(rec["index"])
            if problem:
                bad[problem] += 1
                if sum(bad.values()) <= 5:
                    where = f"{files[0]}: entry {rec['index']}" if files and len(files) == 1 else _where(rec)
                    log.warning("retrieval eval: %s caption %d (%s) is an empty query (%s)", where, k, repr(c)[:40],
                                problem)
        img2txt.append(ids)
    if bad:
        log.warning("retrieval eval%s: %d of %d texts are empty queries (%s), kept to align text ids",
                    f" ({', '.join(files)})" if files else "", sum(bad.values()), len(texts), dict(bad))
        if skips is not None:
            skips.update(bad)
    return texts, np.asarray(txt2img, np.int32), img2txt


def checkpoint_args(iterator):
    """(save_args, restore_args) for an Orbax CheckpointManager item holding the iterator:

        mngr.save(step, args=ocp.args.Composite(state=..., data=save_args))
        mngr.restore(step, args=ocp.args.Composite(state=..., data=restore_args))
    Each process writes its own process_<i>-of-<n>.json."""
    return grain.checkpoint.CheckpointSave(iterator), grain.checkpoint.CheckpointRestore(iterator)
