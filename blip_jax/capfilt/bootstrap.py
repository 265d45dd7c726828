"""The CapFilt driver: web records -> synthetic captions + ITM scores -> decisions -> the
bootstrapped dataset.

Work is split into chunks of ``batch_size * chunk_batches`` records of each process's strided
share. A finished chunk is two files under ``<workdir>/parts``: its decision rows (JSON lines,
ordered by record index) and then its ``.meta.json`` (skip counts, seconds), each written to a
temporary name and renamed, so a chunk counts as done only when both exist. A rerun of the same
command skips the done chunks (sampling keys depend only on the seed, the process and the batch's
position, so a resumed run writes what an uninterrupted one would). When every process is done,
process 0 merges the parts into:

    decisions.jsonl       one row per record, in record order: the web texts and synthetic texts
                          with p(match) and keep, or {"skipped": true} for an unreadable image
    bootstrapped.json     BLIP pretraining list [{"image": path, "caption": [kept texts]}]
                          (sources with image files); for sources that hold the images (web
                          shards, ArrayRecord, tfds) bootstrapped-*.array_record caption records
                          that point at the source's images by index (output_format "captions",
                          format capfilt_captions: no second copy of the images), or with the
                          images' bytes copied in (output_format "array_record", standalone)
    bootstrapped.spec.json  the DatasetSpec of that output, for a pretraining config's mixture
    report.json           `report.summarize`

Any random-access source serves; webdataset (img2dataset) tar shards are read in place by index,
after a scan of each shard's headers that is cached in ``<workdir>/tar_index``.

A rerun with a changed config, or over a source whose record count changed, stops
(`CapfiltResumeMismatch`, exit code 2) naming the fields, since its parts would mix two settings.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence

import jax
import numpy as np

from blip_jax.capfilt.captioner import Captioner, SamplingConfig, local_mesh
from blip_jax.capfilt.filter import Filter
from blip_jax.capfilt.report import ReportBuilder, load_noise_labels
from blip_jax.data.synthetic import load_scenes
from blip_jax.files import atomic_open, write_atomic, write_json_atomic

log = logging.getLogger("blip_jax.capfilt")

PARTS = "parts"
CONFIG_FILE = "capfilt_config.json"
# Config fields that do not change what a run writes (speed knobs); all others must match on resume.
RUNTIME_FIELDS = ("num_threads", "log_every_chunks")


class CapfiltResumeMismatch(RuntimeError):
    """The workdir holds parts written with another config."""


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    threshold: float = 0.5  # keep a text when p(match) > threshold (0.5: the ITM head's argmax)
    max_words: int = 30
    max_len: int = 35
    filter_web: bool = True  # False: web texts are scored but all kept
    filter_synthetic: bool = True  # False: synthetic texts are scored but all kept

    @classmethod
    def from_dict(cls, d) -> FilterConfig:
        from blip_jax.config_loader import dataclass_from_config

        out = dataclass_from_config(cls, "filtering", d)
        if not 0.0 <= out.threshold < 1.0:
            raise ValueError(f"filtering.threshold must be in [0, 1), got {out.threshold}")
        return out


# ---------------------------------------------------------------------------------------------
# Decisions


def decide(record: dict, web_probs: Sequence[float | None], synthetic: Sequence[str],
           synthetic_probs: Sequence[float | None], cfg: FilterConfig) -> dict:
    """One decision row. A text with p_match None (not a string, or empty after cleaning) is
    never kept; the others are kept when p(match) > threshold, or always when their kind is not
    filtered."""

    def texts(values, probs, filtered):
        out = []
        for text, p in zip(values, probs):
            keep = p is not None and (not filtered or p > cfg.threshold)
            out.append({"text": text, "p_match": None if p is None else round(float(p), 6), "keep": bool(keep)})
        return out

    return {"index": int(record["index"]), "image_key": record.get("image_key", ""),
            "image": record.get("image_path"),
            "web": texts(record["captions"], web_probs, cfg.filter_web),
            "synthetic": texts(synthetic, synthetic_probs, cfg.filter_synthetic)}


def kept_texts(row: dict) -> list[str]:
    return [t["text"] for t in row.get("web", []) + row.get("synthetic", []) if t["keep"]]


# ---------------------------------------------------------------------------------------------
# Work split


class _Positions(Sequence):
    """A random-access view of `records` at `positions`, each record's `index` set to its position
    in `records` (decision rows and outputs refer to records by that)."""

    def __init__(self, records, positions: Sequence[int]):
        self._records, self._positions = records, positions

    def __len__(self) -> int:
        return len(self._positions)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        pos = int(self._positions[i])
        rec = self._records[pos]
        return dict(rec, index=pos) if "captions" in rec else rec


def _part_name(process: int, processes: int, chunk: int) -> str:
    return f"p{process:05d}-of-{processes:05d}-c{chunk:07d}"


def _check_config(workdir: str, cfg_json: dict) -> None:
    """Save the config on the first run; on a rerun refuse another one (runtime knobs aside)."""
    from blip_jax.train.checkpointing import config_changes

    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        if jax.process_index() == 0:
            write_json_atomic(path, cfg_json, indent=1, sort_keys=True)
        return
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    strip = lambda d: {k: v for k, v in d.items() if k not in RUNTIME_FIELDS}  # noqa: E731
    changes = config_changes(strip(saved), strip(cfg_json))
    if changes:
        raise CapfiltResumeMismatch(
            f"{workdir} holds CapFilt parts written with another config ({path}); changed: "
            + "; ".join(changes) + ". Use a new --workdir, or delete the workdir to start over.")


# ---------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class CapfiltRun:
    """Everything a run needs, already loaded (`build_run` makes one from a config)."""

    records: Sequence[dict]  # random-access source
    captioner: Captioner
    filter: Filter
    filtering: FilterConfig
    image_size: int
    batch_size: int = 32
    chunk_batches: int = 8
    seed: int = 0
    num_threads: int = 4
    noise_labels: str = ""  # web_noise.json-style file ("" = none)
    scenes: str = ""  # the embedded world's scenes.json: which texts are true of their image ("" = none)
    output_format: str = "auto"  # auto | blip_json | captions | array_record
    log_every_chunks: int = 1
    source_skips: dict = dataclasses.field(default_factory=dict)  # lost while opening the source, by reason
    source_spec: dict | None = None  # the source's DatasetSpec (absolute paths): the captions output's base


def decide_batch(run: CapfiltRun, batch: dict, key: jax.Array) -> list[dict]:
    """One eval batch (pixel_values (B, H, W, 3), mask (B,), index (B,) record positions) -> the
    decision rows of its real rows: caption every image, score its usable web captions and its
    synthetic ones in one filter pass, apply the rule."""
    pixels = np.asarray(batch["pixel_values"])
    synthetic = run.captioner(pixels, key)
    keep = np.asarray(batch["mask"]).astype(bool)
    index = np.asarray(batch["index"])
    recs = [run.records[int(i)] if k else None for i, k in zip(index, keep)]
    web = [[c if isinstance(c, str) else None for c in r["captions"]] if r else [] for r in recs]
    scored = [[t for t in w + s if t is not None and run.filter.clean(t)] if r else []
              for r, w, s in zip(recs, web, synthetic)]
    probs = run.filter.match_probabilities(pixels, scored)
    rows = []
    for i, r, w, s, texts, p in zip(index, recs, web, synthetic, scored, probs):
        if r is not None:
            prob_of = dict(zip(texts, p.tolist()))
            rows.append(decide(dict(r, index=int(i), captions=w), [prob_of.get(t) for t in w], s,
                               [prob_of.get(t) for t in s], run.filtering))
    return rows


def process_chunks(run: CapfiltRun, workdir: str, max_chunks: int | None = None, stop=None) -> bool:
    """This process's share, chunk by chunk, skipping finished chunks. Returns True when every
    chunk of the share is done, False when `max_chunks` new chunks are done or `stop` (a
    PreemptionHandler: SIGTERM / SIGINT) asks to stop; a chunk in progress is finished first."""
    from blip_jax.data import pipelines as pl

    process, processes = jax.process_index(), jax.process_count()
    share = range(process, len(run.records), processes)
    per_chunk = run.batch_size * run.chunk_batches
    num_chunks = -(-len(share) // per_chunk)
    parts = os.path.join(workdir, PARTS)
    os.makedirs(parts, exist_ok=True)
    base_key = jax.random.fold_in(jax.random.key(run.seed), process)
    done_now = 0
    for chunk in range(num_chunks):
        name = os.path.join(parts, _part_name(process, processes, chunk))
        if os.path.exists(name + ".meta.json"):
            continue
        if (max_chunks is not None and done_now >= max_chunks) or (stop is not None and stop.stop_requested):
            return False
        t0 = time.time()
        positions = share[chunk * per_chunk:(chunk + 1) * per_chunk]
        view = _Positions(run.records, positions)
        opts = pl.LoaderOptions(batch_size=run.batch_size, shard_index=0, shard_count=1,
                                num_threads=run.num_threads)
        pipeline = pl.eval_pipeline(view, opts, image_size=run.image_size)
        it = iter(pipeline)
        rows = {}
        for b, batch in enumerate(it):
            if np.asarray(batch["mask"]).any():
                key = jax.random.fold_in(base_key, chunk * run.chunk_batches + b)
                rows.update((row["index"], row) for row in decide_batch(run, batch, key))
        skips = it.skip_counts
        seen = set(rows)
        for pos in positions:  # records the pipeline skipped (unreadable images)
            if pos not in seen:
                rec = run.records[pos]
                key_ = rec.get("image_key", "") if "captions" in rec else rec.get("where", "")
                rows[pos] = {"index": int(pos), "image_key": key_, "image": rec.get("image_path"), "skipped": True}
        write_atomic(name + ".jsonl", (json.dumps(rows[i], ensure_ascii=False) + "\n" for i in sorted(rows)))
        meta = {"chunk": chunk, "records": len(positions), "skips": skips, "seconds": round(time.time() - t0, 3)}
        write_json_atomic(name + ".meta.json", meta)
        done_now += 1
        if run.log_every_chunks and (chunk + 1) % run.log_every_chunks == 0:
            log.info("chunk %d/%d: %d records in %.1fs (%.1f images/s)", chunk + 1, num_chunks, len(positions),
                     meta["seconds"], len(positions) / max(meta["seconds"], 1e-9))
    return True


def _iter_rows(paths: list[str]) -> Iterator[dict]:
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)


def merge_outputs(run: CapfiltRun, workdir: str) -> dict:
    """Parts -> decisions.jsonl, the bootstrapped dataset, report.json; returns the report. The
    bootstrapped dataset has one entry per kept text (an image with a kept web and a kept synthetic
    text appears twice), as BLIP's released CapFilt files, so pretraining sees each kept text once
    an epoch. One pass over the merged rows: each row goes to the decisions file and the report as the kept ones
    are written out, and the report keeps histograms, not the scores, so memory stays flat however
    many records there are."""
    parts = os.path.join(workdir, PARTS)
    processes = jax.process_count()
    per_process = []
    skips: dict[str, int] = {}
    for p in range(processes):
        prefix = f"p{p:05d}-of-{processes:05d}-"
        metas = sorted(f for f in os.listdir(parts) if f.startswith(prefix) and f.endswith(".meta.json"))
        for m in metas:
            with open(os.path.join(parts, m), encoding="utf-8") as f:
                for reason, c in json.load(f)["skips"].items():
                    skips[reason] = skips.get(reason, 0) + int(c)
        per_process.append([os.path.join(parts, m.removesuffix(".meta.json") + ".jsonl") for m in metas])

    def merged() -> Iterator[dict]:  # record order across the processes' strided shares
        return heapq.merge(*(_iter_rows(paths) for paths in per_process), key=lambda r: r["index"])

    fmt = run.output_format
    if fmt == "auto":
        first = next((r for r in merged() if not r.get("skipped")), None)
        fmt = "blip_json" if first is None or first.get("image") else "captions"
    if fmt not in ("blip_json", "captions", "array_record"):
        raise ValueError(f"output_format must be auto, blip_json, captions or array_record, got {run.output_format!r}")
    if fmt == "captions" and not run.source_spec:
        raise ValueError("output_format 'captions' points at the source's images and needs its spec (source_spec)")

    report_builder = ReportBuilder(load_noise_labels(run.noise_labels) if run.noise_labels else None,
                                   load_scenes(run.scenes) if run.scenes else None)
    with atomic_open(os.path.join(workdir, "decisions.jsonl")) as decisions:

        def kept_entries() -> Iterator[tuple[dict, str]]:
            """(row, text) per kept text: the bootstrapped dataset's entries, in record order."""
            for row in merged():
                decisions.write(json.dumps(row, ensure_ascii=False) + "\n")
                report_builder.add(row)
                if not row.get("skipped"):
                    for text in kept_texts(row):
                        yield row, text

        if fmt == "blip_json":
            path = os.path.join(workdir, "bootstrapped.json")
            with atomic_open(path) as out:  # a JSON list streamed one entry a line
                out.write("[")
                for i, (r, text) in enumerate(kept_entries()):
                    if not r.get("image"):
                        raise ValueError(f"record {r['index']} ({r['image_key']!r}) has no image file: use "
                                         "output_format='array_record' for sources that hold image bytes")
                    entry = {"image": os.path.abspath(r["image"]), "caption": text}
                    out.write(("," if i else "") + "\n" + json.dumps(entry, ensure_ascii=False))
                out.write("\n]\n")
            spec = {"name": "capfilt", "format": "blip_json", "paths": [os.path.abspath(path)]}
        else:
            from blip_jax.data.convert import write_array_record

            out_dir = os.path.join(workdir, "bootstrapped")
            if fmt == "captions":  # the kept texts and where their image is; the images stay in the source
                records = ({"index": r["index"], "image_id": r["index"], "image_key": r["image_key"],
                            "captions": [text], "source": "capfilt"} for r, text in kept_entries())
                written = write_array_record(records, out_dir, "bootstrapped", images=False)
                spec = {"name": "capfilt", "format": "capfilt_captions", "base": run.source_spec}
            else:
                # the image bytes are copied once per kept text (the "captions" format copies none)
                records = (dict(run.records[r["index"]], captions=[text]) for r, text in kept_entries())
                written = write_array_record(records, out_dir, "bootstrapped")
                spec = {"name": "capfilt", "format": "array_record"}
            spec["paths"] = [os.path.abspath(p) for p in written["files"]]
    write_json_atomic(os.path.join(workdir, "bootstrapped.spec.json"), spec, indent=1)

    report = report_builder.result(skips)
    report["source_skips"] = dict(run.source_skips)
    report["output"] = spec
    write_json_atomic(os.path.join(workdir, "report.json"), report, indent=1)
    return report


def run_capfilt(run: CapfiltRun, workdir: str, cfg_json: dict | None = None,
                max_chunks: int | None = None, stop=None) -> dict | None:
    """Process this process's share (resuming), then (process 0, once all are done) merge.
    Returns the report on process 0 after a complete run, else None. `stop`: see process_chunks
    (each process stops on its own signal; schedulers signal every process)."""
    os.makedirs(workdir, exist_ok=True)
    if cfg_json is not None:
        # The effective batch (rounded to the device count) fixes chunk boundaries and sampling keys.
        # So does the source's length: records added or removed would shift every index.
        _check_config(workdir, dict(cfg_json, effective_batch_size=run.batch_size, source_records=len(run.records)))
    t0 = time.time()
    complete = all_complete = process_chunks(run, workdir, max_chunks, stop)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        # Every process comes here, stopped early or not (shares differ by up to a chunk, and a
        # signal may reach one process first): one that returned before it would leave the others
        # waiting in the collective until it timed out.
        all_complete = bool(np.all(multihost_utils.process_allgather(np.asarray(complete))))
    if not complete:
        why = stop.reason if stop is not None and stop.stop_requested else f"--max-chunks {max_chunks}"
        log.warning("stopped (%s) after the last finished chunk; rerun the same command to go on", why)
        return None
    if not all_complete:
        log.warning("this process's share is done, another process stopped early; rerun the same command to go on")
        return None
    if jax.process_index() != 0:
        return None
    report = merge_outputs(run, workdir)
    report["seconds"] = round(time.time() - t0, 2)
    log.info("CapFilt done in %.1fs: %d records, %d texts kept", report["seconds"], report["records"],
             report["texts_kept"])
    return report


def build_run(cfg, workdir: str) -> CapfiltRun:
    """A CapfiltRun from a config (configs/capfilt*.py): loads the source, tokenizer and models."""
    import grain

    from blip_jax import BlipForConditionalGeneration, BlipForImageTextRetrieval
    from blip_jax.configuration import override_text_config
    from blip_jax.data import pipelines as pl
    from blip_jax.train.loop import ensure_embedded_dataset, load_tokenizer

    data_root = ensure_embedded_dataset(cfg, workdir) if cfg.data.get("embedded", False) else None
    spec = pl.DatasetSpec.from_any(_source_spec(cfg.data.source, data_root, cfg.data.get("image_root")))
    # Webdataset shards are read by index too: each shard's headers are scanned once into
    # <workdir>/tar_index (every process starts with its own share of the shards).
    records, load_skips = pl.open_source(spec, jax.process_index(), jax.process_count(), random_access=True,
                                         index_dir=os.path.join(workdir, "tar_index"))
    if isinstance(records, grain.IterDataset):
        raise ValueError(f"data.source {spec.name!r} ({spec.format}) has no random-access reader")
    if load_skips:
        log.warning("lost while opening %s: %s%s", spec.name, dict(load_skips),
                    f" (broken shards: {records.truncated_shards})" if hasattr(records, "truncated_shards") else "")
    dtype = {"dtype": cfg.dtype} if cfg.get("dtype") else {}
    captioner_model = BlipForConditionalGeneration.from_pretrained(cfg.captioner, **dtype)
    filter_model = BlipForImageTextRetrieval.from_pretrained(cfg.filter, **dtype)
    enc = cfg.get("filter_use_enc_token_for_itm")
    if enc is not None:  # HF configs of BLIP's released filters say False; the original scored with [ENC]
        override_text_config(filter_model, {"use_enc_token_for_itm": bool(enc)}, "capfilt config")
    tokenizer = load_tokenizer(cfg, data_root, fallback=cfg.captioner)
    size = int(cfg.image_size or captioner_model.config.vision_config.image_size)
    if filter_model.config.vision_config.image_size != size:
        raise ValueError(f"the captioner and the filter see the same pixels: image_size {size}, but the filter "
                         f"({cfg.filter}) was configured for {filter_model.config.vision_config.image_size}")
    noise, scenes = cfg.data.get("noise_labels", ""), cfg.data.get("scenes", "")
    if noise == "embedded":
        noise = os.path.join(data_root, "annotations", "web_noise.json") if data_root else ""
    if scenes == "embedded":
        scenes = os.path.join(data_root, "scenes.json") if data_root else ""
    filtering = FilterConfig.from_dict(cfg.filtering)
    mesh = local_mesh()
    devices = mesh.devices.size
    batch_size = -(-int(cfg.batch_size) // devices) * devices  # every device gets whole rows
    return CapfiltRun(
        records=records,
        captioner=Captioner(captioner_model, tokenizer, SamplingConfig.from_dict(cfg.sampling), mesh=mesh),
        filter=Filter(filter_model, tokenizer, max_words=filtering.max_words, max_len=filtering.max_len, mesh=mesh),
        filtering=filtering, image_size=size, batch_size=batch_size, chunk_batches=int(cfg.chunk_batches),
        seed=int(cfg.seed), num_threads=int(cfg.get("num_threads", 4)), noise_labels=noise, scenes=scenes,
        output_format=cfg.get("output_format", "auto"), log_every_chunks=int(cfg.get("log_every_chunks", 1)),
        source_skips=dict(load_skips), source_spec=_absolute_spec(spec, os.path.join(workdir, "tar_index")))


def _absolute_spec(spec, index_dir: str) -> dict:
    """The source's DatasetSpec as a dict another job can open from anywhere: file paths made
    absolute, and for web shards the header index this run built."""
    d = dataclasses.asdict(spec)
    if d["format"] != "tfds":  # a tfds "path" is the dataset's name
        d["paths"] = [os.path.abspath(p) for p in d["paths"]]
    for key in ("image_root", "vg_image_root"):
        d[key] = os.path.abspath(d[key]) if d.get(key) else d.get(key)
    if d["format"] == "webdataset":
        d["index_dir"] = os.path.abspath(index_dir)
    return d


def _source_spec(source, data_root: str | None, image_root: str | None = None) -> dict:
    """data.source -> a DatasetSpec dict. A string is 'embedded:<split>' (with data.embedded=True)
    or '<format>:<path>[,<path>...]' (blip_json with data.image_root, array_record or webdataset
    globs, tfds name); a dict is a DatasetSpec."""
    if not isinstance(source, str):
        return source.to_dict() if hasattr(source, "to_dict") else dict(source)
    fmt, _, paths = source.partition(":")
    if fmt == "embedded":
        if not data_root:
            raise ValueError(f"data.source {source!r} needs data.embedded=True")
        from blip_jax.data.synthetic import embedded_spec

        return embedded_spec(paths, data_root)
    if fmt not in ("blip_json", "array_record", "webdataset", "tfds") or not paths:
        raise ValueError(f"data.source {source!r}: expected 'embedded:<split>', 'blip_json:<files>', "
                         "'array_record:<globs>', 'webdataset:<tar globs>' or 'tfds:<name>'")
    return {"name": "capfilt_source", "format": fmt, "paths": paths.split(","), "image_root": image_root or None}
