"""Loaders for BLIP's own JSON annotation files, as users already have them.

- pretraining lists:   [{"image": path, "caption": str | [str, ...]}, ...]
- coco_karpathy_train: [{"image": "val2014/COCO_val2014_000000391895.jpg", "caption": str,
                         "image_id": "coco_391895"}, ...]   (one entry per caption)
- coco_karpathy_val/test: [{"image": ..., "caption": [5 captions]}, ...]   (one entry per image)
- VQA / VG QA:         [{"question_id", "question", "answer": [..] | str, "image",
                         "dataset": "vqa" | "vg"}, ...]; answer_list.json: [str, ...]

Structural problems (not a list, an entry that is not an object, a missing or mistyped
`image` / `question_id` / ... field, invalid JSON) fail fast with `AnnotationError` naming the
file, the line and the field. *Content* problems that real data has (a caption that is null, a
number or empty; a broken line in a JSON-lines file) are not fatal: those records are skipped
and counted by the pipeline (or by the loader, for JSON lines).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

from blip_jax.data.records import AnnotationError, make_record

log = logging.getLogger(__name__)
_WS = re.compile(r"[ \t\n\r]*")


def _iter_json_array(text: str, path: str) -> Iterator[tuple[Any, int]]:
    """Yields (element, line number) of a top-level JSON array, so errors can name the line."""
    decoder = json.JSONDecoder()
    pos = _WS.match(text, 0).end()
    line = 1 + text.count("\n", 0, pos)
    if pos >= len(text) or text[pos] != "[":
        kind = "an object" if text[pos:pos + 1] == "{" else "not a list"
        raise AnnotationError(f"{path}:{line}: expected a JSON list of entries at top level, found {kind} "
                              "(COCO-format instance files must be converted to BLIP's list format)")
    pos = _WS.match(text, pos + 1).end()
    if text[pos:pos + 1] == "]":
        return
    last = 0
    while True:
        line += text.count("\n", last, pos)
        last = pos
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise AnnotationError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
        yield obj, line
        pos = _WS.match(text, end).end()
        ch = text[pos:pos + 1]
        if ch == "]":
            return
        if ch != ",":
            lineno = 1 + text.count("\n", 0, pos)
            raise AnnotationError(f"{path}:{lineno}: invalid JSON: expected ',' or ']' after entry")
        pos = _WS.match(text, pos + 1).end()


def _read_text(path: str, what: str) -> str:
    """A UTF-8 file's text (a leading byte-order mark, as Windows tools write, is dropped);
    a missing or undecodable file -> AnnotationError naming it."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except FileNotFoundError:
        raise AnnotationError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise AnnotationError(f"{path}: {what} is a directory") from None
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e})") from None


def read_annotation_entries(path: str) -> tuple[list[tuple[dict, int]], collections.Counter]:
    """Reads a .json list or a .jsonl file -> ([(entry, line)], skip counts).

    In JSON-lines files a malformed line is skipped and counted as 'bad_json' (web-scale lists
    are often concatenated from many writers); in a .json list it fails fast."""
    skips: collections.Counter = collections.Counter()
    text = _read_text(path, "annotation file")
    entries: list[tuple[dict, int]] = []
    if path.endswith((".jsonl", ".ndjson")):
        for lineno, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                skips["bad_json"] += 1
                continue
            if not isinstance(obj, dict):
                skips["bad_json"] += 1
                continue
            entries.append((obj, lineno))
        return entries, skips
    for obj, line in _iter_json_array(text, path):
        if not isinstance(obj, dict):
            raise AnnotationError(f"{path}:{line}: entry {len(entries)}: expected an object, "
                                  f"got {type(obj).__name__}")
        entries.append((obj, line))
    return entries, skips


def _field(entry: dict, name: str, path: str, line: int, index: int, types, what: str):
    if name not in entry:
        raise AnnotationError(f"{path}:{line}: entry {index}: missing field '{name}'")
    value = entry[name]
    if not isinstance(value, types) or isinstance(value, bool) or (isinstance(value, str) and not value):
        raise AnnotationError(f"{path}:{line}: entry {index}: field '{name}': expected {what}, "
                              f"got {type(value).__name__} {value!r:.60}")
    return value


def _join(root: str | None, image: str) -> str:
    return image if (root is None or os.path.isabs(image)) else os.path.join(root, image)


def _captions_of(value: Any) -> list:
    return list(value) if isinstance(value, list) else [value]


class AnnotationSet(list):
    """A list of records plus the skip counts of loading (JSON-lines only) and the file names."""

    def __init__(self, records=(), skips=None, files=()):
        super().__init__(records)
        self.skips = collections.Counter(skips or {})
        self.files = list(files)


def load_pretrain(paths: str | list[str], image_root: str | None = None, source: str = "pretrain") -> AnnotationSet:
    """BLIP pretraining lists (COCO/VG/CC/SBU/LAION style) -> records, one per entry.

    Entries with the same image share `image_id` (dense). A caption list is kept whole; the
    pipeline samples one caption per visit."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    out = AnnotationSet(files=paths)
    ids: dict[str, int] = {}
    for path in paths:
        entries, skips = read_annotation_entries(path)
        out.skips.update(skips)
        for i, (e, line) in enumerate(entries):
            image = _field(e, "image", path, line, i, str, "a non-empty image path")
            if "caption" not in e:
                raise AnnotationError(f"{path}:{line}: entry {i}: missing field 'caption'")
            full = _join(image_root, image)
            image_id = ids.setdefault(full, len(ids))
            out.append(make_record(image_path=full, image_id=image_id, image_key=image,
                                   captions=_captions_of(e["caption"]), source=source, index=len(out)))
    return out


def coco_numeric_id(image: str) -> int:
    """COCO id from a file name like val2014/COCO_val2014_000000391895.jpg (-1 if none)."""
    stem = os.path.splitext(os.path.basename(image))[0]
    tail = stem.split("_")[-1]
    return int(tail) if tail.isdigit() else -1


def load_coco_karpathy(path: str, image_root: str | None = None, split: str = "train",
                       source: str = "coco") -> AnnotationSet:
    """coco_karpathy_{train,val,test}.json (also flickr30k_*.json, same layout) -> records.

    train: one record per caption; `image_id` is the dense index of the entry's "image_id"
      (the ITC positives of retrieval fine-tuning are records with equal image_id).
    val/test: one record per image with all its captions; `image_id` is the entry index (the
      row of the image in retrieval metrics), `image_key` the COCO numeric id as a string (the
      id captioning results are reported under)."""
    entries, skips = read_annotation_entries(path)
    out = AnnotationSet(skips=skips, files=[path])
    if split == "train":
        ids: dict[Any, int] = {}
        for i, (e, line) in enumerate(entries):
            image = _field(e, "image", path, line, i, str, "a non-empty image path")
            raw_id = _field(e, "image_id", path, line, i, (str, int), "a string or integer id")
            if "caption" not in e:
                raise AnnotationError(f"{path}:{line}: entry {i}: missing field 'caption'")
            image_id = ids.setdefault(raw_id, len(ids))
            out.append(make_record(image_path=_join(image_root, image), image_id=image_id, image_key=str(raw_id),
                                   captions=_captions_of(e["caption"]), source=source, index=len(out)))
    elif split in ("val", "test", "eval"):
        for i, (e, line) in enumerate(entries):
            image = _field(e, "image", path, line, i, str, "a non-empty image path")
            captions = _field(e, "caption", path, line, i, list, "a list of captions")
            out.append(make_record(image_path=_join(image_root, image), image_id=i,
                                   image_key=str(coco_numeric_id(image)), captions=list(captions),
                                   source=source, index=i))
    else:
        raise ValueError(f"split must be train, val or test, got {split!r}")
    return out


def vqa_answers_and_weights(answer: Any, dataset: str,
                            dropped: collections.Counter | None = None) -> tuple[list[str], list[float]]:
    """BLIP's convention: VQA answers weighted by frequency among *all* the annotators' votes
    (weight = count / number of votes, as the original's data/vqa_dataset.py), one VG answer with
    weight 0.2. Votes that are not non-empty strings are dropped, but still count in the number of
    votes (["yes", None, "yes", "", "no"]: yes 2/5, no 1/5); they are counted in
    `dropped["dropped_answer"]`."""
    if dataset == "vg":
        answers = [answer] if isinstance(answer, str) and answer.strip() else []
        return answers, [0.2] * len(answers)
    votes = answer if isinstance(answer, list) else [answer]
    counts = collections.Counter(a for a in votes if isinstance(a, str) and a.strip())
    n_bad = len(votes) - sum(counts.values())
    if n_bad and dropped is not None:
        dropped["dropped_answer"] += n_bad
    return list(counts), [c / len(votes) for c in counts.values()]


def load_vqa(paths: str | list[str], vqa_root: str | None = None, vg_root: str | None = None,
             split: str = "train", source: str = "vqa") -> AnnotationSet:
    """vqa_train/vqa_val/vg_qa/vqa_test.json -> one record per question.

    Images resolve against `vqa_root` or `vg_root` by the entry's "dataset" field. Train records
    need "answer"; test records may lack it. `answers` are the distinct answers and
    `answer_weights` their weights (VQA: vote fraction, so count = weight * #votes, which is what
    VQA accuracy needs; VG: 0.2). Distinct images get distinct dense `image_id`."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    out = AnnotationSet(files=paths)
    ids: dict[str, int] = {}
    warned = False
    for path in paths:
        entries, skips = read_annotation_entries(path)
        out.skips.update(skips)
        for i, (e, line) in enumerate(entries):
            image = _field(e, "image", path, line, i, str, "a non-empty image path")
            qid = _field(e, "question_id", path, line, i, (int, str), "an integer id")
            if isinstance(qid, str):
                if not qid.isdigit():
                    raise AnnotationError(f"{path}:{line}: entry {i}: field 'question_id': expected an "
                                          f"integer id, got {qid!r:.40}")
                qid = int(qid)
            if "question" not in e:
                raise AnnotationError(f"{path}:{line}: entry {i}: missing field 'question'")
            dataset = e.get("dataset", "vqa")
            if dataset not in ("vqa", "vg"):
                raise AnnotationError(f"{path}:{line}: entry {i}: field 'dataset': expected 'vqa' or 'vg', "
                                      f"got {dataset!r:.40}")
            if split == "train" and "answer" not in e:
                raise AnnotationError(f"{path}:{line}: entry {i}: missing field 'answer' (train split)")
            before = out.skips["dropped_answer"]
            answers, weights = vqa_answers_and_weights(e.get("answer", []), dataset, out.skips)
            if out.skips["dropped_answer"] > before and not warned:
                warned = True
                log.warning("%s:%d: entry %d: dropped %d answers that are not non-empty strings (weights still "
                            "divide by all %d votes); later ones are counted without a warning", path, line, i,
                            out.skips["dropped_answer"] - before,
                            len(e["answer"]) if isinstance(e["answer"], list) else 1)
            full = _join(vg_root if dataset == "vg" else vqa_root, image)
            image_id = ids.setdefault(full, len(ids))
            out.append(make_record(image_path=full, image_id=image_id, image_key=image,
                                   question=e["question"], question_id=qid, answers=answers,
                                   answer_weights=weights, source=source if dataset == "vqa" else "vg",
                                   index=len(out)))
    if out.skips["dropped_answer"]:
        log.warning("%s: dropped %d VQA answers that are not non-empty strings", ", ".join(paths),
                    out.skips["dropped_answer"])
    else:
        del out.skips["dropped_answer"]
    return out


def load_answer_list(path: str) -> list[str]:
    """answer_list.json: a JSON list of candidate answer strings."""
    entries = []
    text = _read_text(path, "answer list")
    for obj, line in _iter_json_array(text, path):
        if not isinstance(obj, str) or not obj:
            raise AnnotationError(f"{path}:{line}: answer {len(entries)}: expected a non-empty string")
        entries.append(obj)
    return entries
