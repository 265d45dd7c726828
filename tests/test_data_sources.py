"""BLIP JSON loaders (and their fail-fast errors), webdataset shards, ArrayRecord, tfds."""

import collections
import io
import json
import os
import sys
import tarfile
import types

import numpy as np
import pytest
from PIL import Image

from blip_jax.data import annotations as ann
from blip_jax.data import sources
from blip_jax.data.convert import write_array_record
from blip_jax.data.records import (
    SKIP_KEY,
    AnnotationError,
    BadRecord,
    deserialize_record,
    make_record,
    serialize_record,
)
from blip_jax.data.sources import (
    ArrayRecordRecords,
    TfdsRecords,
    WebDatasetIterDataset,
    WebDatasetRecords,
    tfds_example_to_record,
)


def _jpeg(color=(255, 0, 0), size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def _write(path, obj):
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=1))
    return str(path)


# ------------------------------------------------------------------------------------------ BLIP JSON
def test_load_pretrain_list_and_string_captions(tmp_path):
    p = _write(tmp_path / "p.json", [{"image": "a.jpg", "caption": "one"}, {"image": "b.jpg", "caption": ["x", "y"]},
                                     {"image": "a.jpg", "caption": None}])
    recs = ann.load_pretrain(p, image_root="/root")
    assert [r["captions"] for r in recs] == [["one"], ["x", "y"], [None]]
    assert [r["image_id"] for r in recs] == [0, 1, 0]
    assert recs[0]["image_path"] == "/root/a.jpg" and recs[2]["index"] == 2


def test_load_coco_karpathy_train_and_eval(tmp_path):
    train = _write(tmp_path / "t.json", [
        {"image": "val2014/COCO_val2014_000000000042.jpg", "caption": "c1", "image_id": "coco_42"},
        {"image": "val2014/COCO_val2014_000000000042.jpg", "caption": "c2", "image_id": "coco_42"},
        {"image": "val2014/COCO_val2014_000000000007.jpg", "caption": "c3", "image_id": "coco_7"}])
    recs = ann.load_coco_karpathy(train, "/im", "train")
    assert [r["image_id"] for r in recs] == [0, 0, 1] and [r["image_key"] for r in recs] == ["coco_42"] * 2 + ["coco_7"]
    val = _write(tmp_path / "v.json", [{"image": "val2014/COCO_val2014_000000391895.jpg", "caption": ["a", "b"]}])
    recs = ann.load_coco_karpathy(val, None, "val")
    assert recs[0]["image_key"] == "391895" and recs[0]["captions"] == ["a", "b"] and recs[0]["image_id"] == 0


def test_load_vqa_roots_and_answer_weights(tmp_path):
    p = _write(tmp_path / "q.json", [
        {"question_id": 1, "question": "what?", "answer": ["red", "red", "blue", "red"], "image": "i.jpg",
         "dataset": "vqa"},
        {"question_id": "2", "question": "where?", "answer": "left", "image": "v.jpg", "dataset": "vg"}])
    recs = ann.load_vqa(p, vqa_root="/coco", vg_root="/vg")
    assert recs[0]["image_path"] == "/coco/i.jpg" and recs[1]["image_path"] == "/vg/v.jpg"
    assert recs[0]["answers"] == ["red", "blue"] and recs[0]["answer_weights"] == [0.75, 0.25]
    assert recs[1]["answers"] == ["left"] and recs[1]["answer_weights"] == [0.2] and recs[1]["question_id"] == 2
    lst = _write(tmp_path / "a.json", ["red", "blue"])
    assert ann.load_answer_list(lst) == ["red", "blue"]


@pytest.mark.parametrize("content,loader,match", [
    ('[\n {"image": "a.jpg", "caption": "x"},\n {"caption": "y"}\n]', "pretrain",
     r":3: entry 1: missing field 'image'"),
    ('[\n {"image": 5, "caption": "x"}\n]', "pretrain", r":2: entry 0: field 'image': expected"),
    ('[\n {"image": "a.jpg", "caption": "x"},\n {"image": "b.jpg" "caption": "y"}\n]', "pretrain",
     r":3:\d+: invalid JSON"),
    ('{"images": [], "annotations": []}', "pretrain", r":1: expected a JSON list .* found an object"),
    ('[\n "just a string"\n]', "pretrain", r":2: entry 0: expected an object"),
    ('[{"image": "a.jpg", "caption": "c"}]', "karpathy_train", r"missing field 'image_id'"),
    ('[{"image": "a.jpg", "caption": "c"}]', "karpathy_val", r"field 'caption': expected a list"),
    ('[{"question_id": "x1", "question": "q", "answer": "a", "image": "i"}]', "vqa", r"field 'question_id'"),
    ('[{"question_id": 1, "question": "q", "answer": "a", "image": "i", "dataset": "gqa"}]', "vqa",
     r"field 'dataset'"),
    ('[{"question_id": 1, "question": "q", "image": "i"}]', "vqa", r"missing field 'answer'"),
])
def test_malformed_annotation_files_fail_fast(tmp_path, content, loader, match):
    path = _write(tmp_path / "bad.json", content)
    fn = {"pretrain": lambda: ann.load_pretrain(path),
          "karpathy_train": lambda: ann.load_coco_karpathy(path, split="train"),
          "karpathy_val": lambda: ann.load_coco_karpathy(path, split="val"),
          "vqa": lambda: ann.load_vqa(path)}[loader]
    with pytest.raises(AnnotationError, match=match) as e:
        fn()
    assert str(e.value).startswith(path)


def test_jsonl_malformed_lines_are_skipped_and_counted(tmp_path):
    p = _write(tmp_path / "p.jsonl", '{"image": "a.jpg", "caption": "x"}\n{"image": "b.jpg", "cap\n[1, 2]\n\n'
                                     '{"image": "c.jpg", "caption": "z"}\n')
    recs = ann.load_pretrain(p)
    assert [r["image_path"] for r in recs] == ["a.jpg", "c.jpg"]
    assert recs.skips == {"bad_json": 2}


# ------------------------------------------------------------------------------------------ records
def test_serialize_roundtrip_and_bad_bytes():
    rec = make_record(image=b"\xff\xd8abc", image_id=3, image_key="k", captions=["a", None], question="q?",
                      question_id=9, answers=["x"], answer_weights=[1.0], source="s", index=4)
    back = deserialize_record(serialize_record(rec))
    assert back == dict(rec, image_path=None)
    for bad in (b"", b"NOTMAGIC....", serialize_record(rec)[:12] + b"\xff\xff\xff\x00"):
        with pytest.raises(BadRecord) as e:
            deserialize_record(bad)
        assert e.value.reason == "bad_record"


# ------------------------------------------------------------------------------------------ webdataset
def _shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for name, payload in samples:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return str(path)


def _web_shards(tmp_path, n_shards=3, per_shard=4):
    paths = []
    for s in range(n_shards):
        samples = []
        for i in range(per_shard):
            key = f"{s:02d}{i:03d}"
            samples += [(f"{key}.jpg", _jpeg()), (f"{key}.txt", f"caption {key}".encode()),
                        (f"{key}.json", json.dumps({"key": key, "caption": f"caption {key}"}).encode())]
        paths.append(_shard(tmp_path / f"s-{s}.tar", samples))
    return paths


def test_webdataset_reads_samples_and_bad_members(tmp_path):
    good = _web_shards(tmp_path, 1, 2)[0]
    bad = _shard(tmp_path / "z-bad.tar", [("k1.jpg", _jpeg()), ("k1.json", b"{not json"),
                                         ("k2.txt", b"no image here"), ("k3.jpg", _jpeg()), ("k3.txt", b"\xff\xfe"),
                                         ("k4.jpg", _jpeg()), ("k4.json", b'{"caption": "from json", "key": "k4"}')])
    out = list(WebDatasetIterDataset([good, bad], shuffle_shards=False))
    assert [r["captions"] for r in out[:2]] == [["caption 00000"], ["caption 00001"]]
    assert [o.get(SKIP_KEY) for o in out[2:5]] == ["bad_json", "missing_image", "bad_caption"]
    assert out[5]["captions"] == ["from json"] and out[5]["image_key"] == "k4"
    # a truncated tar ends its shard with truncated_shard (+ truncated_sample) markers, not an exception
    data = open(good, "rb").read()
    trunc = tmp_path / "trunc.tar"
    for cut in range(600, len(data) - 1024, 300):  # any cut: never raises, records or skip markers
        trunc.write_bytes(data[:cut])
        out = list(WebDatasetIterDataset(str(trunc)))
        assert all("captions" in o or SKIP_KEY in o for o in out)
    with tarfile.open(good) as tar:
        jpg2 = [m for m in tar.getmembers() if m.name == "00001.jpg"][0]
    trunc.write_bytes(data[: jpg2.offset_data + 40])  # inside the second sample's image data
    out = list(WebDatasetIterDataset(str(trunc)))
    assert out[0]["captions"] == ["caption 00000"]
    assert [o.get(SKIP_KEY) for o in out[1:]] == ["truncated_shard", "truncated_sample"]
    assert str(trunc) in out[1]["detail"]


def test_webdataset_slicing_is_disjoint_and_complete(tmp_path):
    shards = _web_shards(tmp_path, 3, 4)
    everything = {r["image_key"] for r in WebDatasetIterDataset(shards)}
    assert len(everything) == 12
    for count in (2, 3, 5):  # shard-level (<= 3 readers) and sample-level (5 readers) assignment
        parts = [{r["image_key"] for r in WebDatasetIterDataset(shards, shard_index=i, shard_count=count)}
                 for i in range(count)]
        assert set().union(*parts) == everything and sum(map(len, parts)) == 12


def test_webdataset_state_restore(tmp_path):
    shards = _web_shards(tmp_path, 3, 4)
    ds = WebDatasetIterDataset(shards, num_epochs=2, seed=3)
    it = iter(ds)
    for _ in range(6):
        next(it)
    state = it.get_state()
    rest = [r["image_key"] for r in it]
    it2 = iter(ds)
    it2.set_state(state)
    assert [r["image_key"] for r in it2] == rest and len(rest) == 18
    # epochs reshuffle shard order deterministically
    keys = [r["image_key"] for r in ds]
    assert sorted(keys[:12]) == sorted(keys[12:]) and keys[:12] != keys[12:]


def _same_record(a, b):
    """Equal but for `index` and `image_id` (a shard position in the stream, a global one by index)."""
    drop = ("index", "image_id", "detail", "where")
    return {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}


def test_webdataset_records_by_index_equal_the_stream(tmp_path):
    shards = _web_shards(tmp_path, 3, 4)
    long_key = "deep/" + "k" * 140  # past ustar's 100 characters: an extended header before the member
    bad = _shard(tmp_path / "z-bad.tar", [("k1.jpg", _jpeg()), ("k1.json", b"{not json"), ("k2.txt", b"no image"),
                                         (f"{long_key}.jpg", _jpeg((0, 0, 255))), (f"{long_key}.txt", b"long")])
    stream = list(WebDatasetIterDataset(shards + [bad], shuffle_shards=False))
    recs = WebDatasetRecords(shards + [bad], source="web")
    assert len(recs) == len(stream) == 15 and not recs.skips
    assert all(_same_record(recs[i], s) for i, s in enumerate(stream))
    assert recs[5]["index"] == recs[5]["image_id"] == 5 and recs[5]["captions"] == ["caption 01001"]
    assert recs[14]["captions"] == ["long"] and recs[14]["image"] == _jpeg((0, 0, 255))
    assert [recs[i].get(SKIP_KEY) for i in (12, 13)] == ["bad_json", "missing_image"]
    with pytest.raises(IndexError):
        recs[15]
    # The shard changed under a built index: that sample is a counted skip, not an exception.
    data = open(shards[0], "rb").read()
    with open(shards[0], "wb") as f:
        f.write(b"\x01" * len(data))
    assert recs[0].get(SKIP_KEY) == "bad_record"


def test_webdataset_records_of_truncated_shards(tmp_path):
    """Cut anywhere, a shard keeps the samples the stream reads from it and counts itself broken
    unless the cut only took end-of-archive padding."""
    good = _web_shards(tmp_path, 1, 3)[0]
    data = open(good, "rb").read()
    with tarfile.open(good) as tar:
        last = tar.getmembers()[-1]
    end_marker = last.offset_data + -(-last.size // 512) * 512  # the first zero block
    trunc = tmp_path / "trunc.tar"
    for cut in [0, 100, *range(512, len(data), 333), end_marker, end_marker + 512]:
        trunc.write_bytes(data[:cut])
        everything = list(WebDatasetIterDataset(str(trunc)))
        stream = [r for r in everything if r.get(SKIP_KEY, "")[:9] != "truncated"]
        recs = WebDatasetRecords(str(trunc))
        assert len(recs) == len(stream), cut
        assert all(_same_record(recs[i], s) for i, s in enumerate(stream)), cut
        # both count the broken shard, and the sample cut inside its data, alike
        assert recs.skips == collections.Counter(r[SKIP_KEY] for r in everything if r not in stream), cut
        assert recs.skips["truncated_shard"] == (0 if cut >= end_marker + 512 else 1), cut
        assert recs.truncated_shards == ([] if cut >= end_marker + 512 else [str(trunc)])


def test_webdataset_index_cache(tmp_path, monkeypatch):
    shards = _web_shards(tmp_path, 2, 3)
    index_dir = tmp_path / "index"
    first = WebDatasetRecords(shards, index_dir=str(index_dir), first_share=(1, 2))
    assert len(list(index_dir.glob("*.json"))) == 2
    scanned = []
    real = sources.index_tar_shard
    monkeypatch.setattr(sources, "index_tar_shard", lambda p: scanned.append(p) or real(p))
    again = WebDatasetRecords(shards, index_dir=str(index_dir))
    assert scanned == [] and [again[i]["image_key"] for i in range(6)] == [first[i]["image_key"] for i in range(6)]
    _shard(tmp_path / "s-1.tar", [("new.jpg", _jpeg()), ("new.txt", b"replaced")])  # a new file: rescanned
    changed = WebDatasetRecords(shards, index_dir=str(index_dir))
    assert [os.path.basename(p) for p in scanned] == ["s-1.tar"] and len(changed) == 4
    assert changed[3]["captions"] == ["replaced"]


def test_webdataset_record_count_from_stats_files_or_headers(tmp_path):
    shards = _web_shards(tmp_path, 3, 4)
    (tmp_path / "s-0_stats.json").write_text(json.dumps({"count": 5, "successes": 4, "failed_to_download": 1}))
    (tmp_path / "s-1_stats.json").write_text("{truncated")  # unreadable: the shard is scanned instead
    count, how = sources.webdataset_record_count(shards, index_dir=str(tmp_path / "index"))
    assert count == len(WebDatasetRecords(shards)) == 12 and how == {"stats_json": 1, "scanned": 2}
    (tmp_path / "s-2_stats.json").write_text(json.dumps({"successes": 40}))  # img2dataset's word is taken
    assert sources.webdataset_record_count(shards) == (48, {"stats_json": 2, "scanned": 1})


# ------------------------------------------------------------------------------------------ ArrayRecord
def test_convert_to_array_record_roundtrip(tmp_path):
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    (img_dir / "a.jpg").write_bytes(_jpeg((0, 255, 0)))
    (img_dir / "empty.jpg").write_bytes(b"")
    p = _write(tmp_path / "p.json", [{"image": "a.jpg", "caption": "green"}, {"image": "missing.jpg", "caption": "x"},
                                     {"image": "empty.jpg", "caption": "y"}, {"image": "a.jpg", "caption": ["g", "h"]}])
    meta = write_array_record(ann.load_pretrain(p, str(img_dir)), str(tmp_path / "ar"), "t", records_per_shard=1)
    assert meta["num_records"] == 2 and meta["skipped"] == {"missing_image": 1, "empty_image": 1}
    names = [f.rsplit("/", 1)[1] for f in meta["files"]]
    assert names == ["t-00000-of-00002.array_record", "t-00001-of-00002.array_record"]
    src = ArrayRecordRecords(str(tmp_path / "ar" / "*.array_record"))
    assert len(src) == 2
    assert src[0]["captions"] == ["green"] and src[1]["captions"] == ["g", "h"]
    assert src[0]["image"] == _jpeg((0, 255, 0)) and src[1]["image_id"] == 0


# ------------------------------------------------------------------------------------------ tfds
def test_tfds_example_mapping_and_source_with_fake_module(monkeypatch):
    ex = {"image": _jpeg(), "image/id": np.int64(77), "captions": {"text": np.array([b"a cat", b"two cats"])}}
    rec = tfds_example_to_record(ex, 0)
    assert rec["captions"] == ["a cat", "two cats"] and rec["image_id"] == 77 and rec["image"] == _jpeg()

    calls = {}

    def data_source(name, split, data_dir, decoders):
        calls.update(name=name, split=split, decoders=decoders)
        return [ex, dict(ex, **{"image/id": np.int64(78)})]

    fake = types.SimpleNamespace(data_source=data_source,
                                 decode=types.SimpleNamespace(SkipDecoding=lambda: "skip"))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    src = TfdsRecords("coco_captions", "train")
    assert len(src) == 2 and src[1]["image_id"] == 78 and src[1]["source"] == "coco_captions"
    assert calls == {"name": "coco_captions", "split": "train", "decoders": {"image": "skip"}}


def test_tfds_missing_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"blip-jax\[tfds\]"):
        TfdsRecords("coco_captions", "train")
