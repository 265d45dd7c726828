"""Reading img2dataset tar shards by index (`WebDatasetRecords`, CapFilt's reader) against
streaming them (`WebDatasetIterDataset`, the training reader), in one run on the same shards.

Writes `--shards` shards of `--per_shard` samples ({key}.jpg of `--image_kb` random bytes, .txt,
.json: img2dataset's layout) into a temporary folder, then measures, records/s (raw records, no
image decode; files in the page cache, so this is the readers' CPU cost, not the disk's):
  scan      : the header scan that builds the index (once per shard; cached in CapFilt's workdir)
  cached    : building the reader again from the cached index files
  stream    : WebDatasetIterDataset over all shards, in order
  by index  : WebDatasetRecords[i] for every i in order, and in a random order

    python benchmarks/webdataset_index.py [--shards 4] [--per_shard 5000] [--image_kb 40]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile
import time

import numpy as np

from blip_jax.data.sources import WebDatasetIterDataset, WebDatasetRecords


def write_shards(folder: str, shards: int, per_shard: int, image_bytes: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for s in range(shards):
        path = os.path.join(folder, f"{s:05d}.tar")
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                meta = {"key": key, "caption": f"caption {key}", "status": "success"}
                for ext, payload in (("jpg", rng.bytes(image_bytes)), ("txt", meta["caption"].encode()),
                                     ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        paths.append(path)
    return paths


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--per_shard", type=int, default=5000)
    p.add_argument("--image_kb", type=int, default=40)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_shards(tmp, a.shards, a.per_shard, a.image_kb * 1024)
        n = a.shards * a.per_shard
        index_dir = os.path.join(tmp, "index")
        scan, recs = timed(lambda: WebDatasetRecords(paths, index_dir=index_dir, num_threads=1))
        cached, _ = timed(lambda: WebDatasetRecords(paths, index_dir=index_dir))
        stream, count = timed(lambda: sum(1 for _ in WebDatasetIterDataset(paths, shuffle_shards=False)))
        in_order, _ = timed(lambda: [recs[i] for i in range(n)])
        order = np.random.default_rng(1).permutation(n)
        shuffled, _ = timed(lambda: [recs[int(i)] for i in order])
        assert count == len(recs) == n
        print(f"{a.shards} shards x {a.per_shard} samples, {a.image_kb} KB images, "
              f"{sum(os.path.getsize(x) for x in paths) / 1e6:.0f} MB")
        print(f"scan (index build) : {n / scan:9.0f} records/s  ({scan:.2f} s)")
        print(f"cached index load  : {n / cached:9.0f} records/s  ({cached:.3f} s)")
        print(f"stream             : {n / stream:9.0f} records/s")
        print(f"by index, in order : {n / in_order:9.0f} records/s  ({stream / in_order:.2f}x the stream)")
        print(f"by index, shuffled : {n / shuffled:9.0f} records/s  ({stream / shuffled:.2f}x the stream)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
