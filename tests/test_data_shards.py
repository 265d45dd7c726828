"""Streamed webdataset shards that break off are counted; ids are unique over shards; skips name the shard."""

import collections
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from blip_jax.data import pipelines as P
from blip_jax.data.records import SKIP_KEY
from blip_jax.data.sources import WebDatasetIterDataset, WebDatasetRecords


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 10, 10)).save(buf, "JPEG")
    return buf.getvalue()


def _shard(path, n=6, bad=()):
    """n samples {i:03d}.jpg + .txt; samples in `bad` have no .txt."""
    jpg = _jpeg()
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            for ext, data in (("jpg", jpg), ("txt", f"caption {i}".encode())):
                if ext == "txt" and i in bad:
                    continue
                info = tarfile.TarInfo(f"{i:03d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def _members(path):
    with tarfile.open(path) as tar:
        return tar.getmembers()


def _stream(path):
    out = list(WebDatasetIterDataset(str(path), shuffle_shards=False))
    keys = [r["image_key"] for r in out if SKIP_KEY not in r]
    return keys, collections.Counter(r[SKIP_KEY] for r in out if SKIP_KEY in r), out


def test_complete_shard_has_no_break_markers(tmp_path):
    keys, skips, _ = _stream(_shard(tmp_path / "s.tar"))
    assert keys == ["000", "001", "002", "003", "004", "005"] and skips == {}


@pytest.mark.parametrize("how", ["cut_header", "garbage_header", "no_end_marker", "empty_file"])
def test_a_shard_broken_between_samples_is_counted_and_named(tmp_path, how):
    path = _shard(tmp_path / "s.tar")
    data = open(path, "rb").read()
    m = _members(path)
    off = m[6].offset  # the header of sample 003's .jpg
    broken = {"cut_header": data[: off + 100], "garbage_header": data[:off] + b"\x17" * 512 + data[off:],
              "no_end_marker": data[: m[-1].offset_data + 512], "empty_file": b""}[how]
    open(path, "wb").write(broken)
    keys, skips, out = _stream(path)
    want = {"cut_header": 3, "garbage_header": 3, "no_end_marker": 6, "empty_file": 0}[how]
    assert keys == [f"{i:03d}" for i in range(want)]
    assert skips == {"truncated_shard": 1}  # no stats file: how many were lost is unknown
    assert path in out[-1]["detail"] and f"after {want} samples" in out[-1]["detail"]
    assert WebDatasetRecords(path).skips == {"truncated_shard": 1}


def test_a_member_cut_in_its_data_loses_that_sample_and_stats_count_the_rest(tmp_path):
    path = _shard(tmp_path / "s.tar", n=8)
    data = open(path, "rb").read()
    txt2 = _members(path)[5]  # 002.txt: the sample's image is whole, its caption is cut
    assert txt2.name == "002.txt"
    open(path, "wb").write(data[: txt2.offset_data + 3])
    keys, skips, out = _stream(path)
    # before: 002 came back as a 'bad_caption' and the shard as one 'bad_record'
    assert keys == ["000", "001"] and skips == {"truncated_shard": 1, "truncated_sample": 1}
    # img2dataset's stats file says how many the shard held: every lost sample is counted
    (tmp_path / "s_stats.json").write_text(json.dumps({"successes": 8}))
    keys, skips, _ = _stream(path)
    assert keys == ["000", "001"] and skips == {"truncated_shard": 1, "truncated_sample": 6}
    assert WebDatasetRecords(path).skips == skips and len(WebDatasetRecords(path)) == 2
    # through a pipeline: kept + counted == the samples the shard held
    opts = P.LoaderOptions(batch_size=1, shard_index=0, shard_count=1, num_threads=1, host_prefetch=0,
                           shuffle_window=0, prefetch_buffer_size=1)
    proc = P.ImageTextProcessor(lambda image, rng, where: np.zeros((4, 4, 3), np.float32))
    pipe = P.train_pipeline([dict(name="web", format="webdataset", paths=[path])], proc, opts, num_epochs=1,
                            shuffle=False)
    it = iter(pipe)
    kept = sum(1 for _ in it)
    assert kept == 2 and it.skip_counts == {"truncated_shard": 1, "truncated_sample": 6}
    assert kept + it.skip_counts["truncated_sample"] == 8


def test_streamed_image_ids_are_unique_over_shards_and_deterministic(tmp_path):
    a, b = _shard(tmp_path / "a.tar", n=3), _shard(tmp_path / "b.tar", n=3)  # the same keys in both
    ids = [r["image_id"] for r in WebDatasetIterDataset([a, b], shuffle_shards=False)]
    stride = 2**31 // 2
    assert ids == [0, 1, 2, stride, stride + 1, stride + 2]
    for seed in range(4):  # shard order (reshuffled per seed) does not change a sample's id
        ds = WebDatasetIterDataset([b, a], seed=seed)
        by_shard = {(r["image_id"] // stride, r["index"]): r["image_id"] for r in ds}
        assert sorted(by_shard.values()) == ids
    assert max(ids) < 2**31


def test_web_skip_messages_name_the_shard_file(tmp_path):
    path = _shard(tmp_path / "s.tar", n=3, bad=(1,))
    out = list(WebDatasetIterDataset(path, shuffle_shards=False))
    assert out[1][SKIP_KEY] == "bad_caption"
    assert out[1]["detail"] == f"sample 001 of {path}: no .txt and no json caption"
    rec = WebDatasetRecords(path)[1]
    assert rec[SKIP_KEY] == "bad_caption" and path in rec["detail"]
