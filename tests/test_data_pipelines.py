"""grain pipelines on the embedded dataset: bad inputs, checkpoint/restore, sharding, eval, mixing."""

import collections
import io
import json
import os

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from blip_jax.data import pipelines as P
from blip_jax.data.synthetic import generate_embedded_dataset


class FakeTokenizer:
    """Same call signature as blip_jax.processing.tokenization.BlipTokenizer.__call__."""

    pad_token_id, cls_token_id, sep_token_id = 0, 2, 3

    def __call__(self, text, padding=False, truncation=False, max_length=None, return_tensors=None):
        texts = [text] if isinstance(text, str) else text
        ids = np.zeros((len(texts), max_length), np.int32)
        for i, t in enumerate(texts):
            toks = [2] + [5 + sum(map(ord, w)) % 500 for w in t.split()][: max_length - 2] + [3]
            ids[i, : len(toks)] = toks
        return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int32)}


@pytest.fixture(scope="module")
def emb(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("emb"))
    generate_embedded_dataset(out, seed=1, image_size=40, num_web=48, num_coco_train=16, num_coco_val=10,
                              num_coco_test=4, vg_questions=8, shard_size=16)
    return out


def _opts(**kw):
    base = dict(batch_size=4, seed=0, shard_index=0, shard_count=1, num_threads=2, prefetch_buffer_size=8)
    base.update(kw)
    return P.LoaderOptions(**base)


def _karpathy(emb, split="train"):
    return dict(name="coco", format="coco_karpathy", split=split, image_root=f"{emb}/images",
                paths=[f"{emb}/annotations/coco_karpathy_{split}.json"])


def _equal_batches(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


# ------------------------------------------------------------------------------------------ bad input
def test_every_bad_input_is_skipped_and_counted(emb, tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    good = open(f"{emb}/images/coco/COCO_synth_000000000001.jpg", "rb").read()
    (root / "good.jpg").write_bytes(good)
    (root / "zero.jpg").write_bytes(b"")
    (root / "trunc.jpg").write_bytes(good[: len(good) // 3])
    (root / "garbage.jpg").write_bytes(b"GIF89a but not really" * 20)
    big = io.BytesIO()
    Image.new("L", (9000, 9000)).save(big, "PNG")  # 81 MP: over the configured limit below
    (root / "huge.png").write_bytes(big.getvalue())
    entries = [{"image": "good.jpg", "caption": "a good one"}, {"image": "zero.jpg", "caption": "x"},
               {"image": "missing.jpg", "caption": "x"}, {"image": "trunc.jpg", "caption": "x"},
               {"image": "garbage.jpg", "caption": "x"}, {"image": "huge.png", "caption": "x"},
               {"image": "good.jpg", "caption": None}, {"image": "good.jpg", "caption": 17},
               {"image": "good.jpg", "caption": " ... "}, {"image": "good.jpg", "caption": ["", "fine caption"]}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(e) for e in entries) + '\n{"image": "good.jpg", "capt\n')
    spec = dict(name="bad", format="blip_json", paths=[str(tmp_path / "a.jsonl")], image_root=str(root))
    proc = P.ImageTextProcessor(P.TrainImageTransform(24, max_pixels=50_000_000), FakeTokenizer(), max_len=8)
    pipe = P.train_pipeline([spec], proc, _opts(batch_size=2, host_prefetch=0), num_epochs=1, shuffle=False)
    it = iter(pipe)
    batch = next(it)
    assert batch["pixel_values"].shape == (2, 24, 24, 3)
    assert batch["index"].tolist() == [0, 9]  # the only usable records
    with pytest.raises(StopIteration):
        next(it)
    assert it.skip_counts == {"empty_image": 1, "missing_image": 1, "truncated_image": 1, "decode_error": 1,
                              "image_too_large": 1, "bad_caption": 2, "empty_caption": 1, "bad_json": 1,
                              "dropped_caption": 1}  # the "" of record 9's list; the record is kept
    metrics = P.data_metrics(it.skip_counts)
    assert metrics["data/skipped/total"] == 9 and metrics["data/skipped/bad_caption"] == 2


def test_web_shard_bad_samples_counted_in_pretraining(emb, tmp_path):
    import tarfile

    with tarfile.open(tmp_path / "z.tar", "w") as tar:
        for name, payload in (("a.jpg", b""), ("a.txt", b"empty image"), ("b.jpg", b"xx"), ("b.json", b"{oops")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    spec = dict(name="web", format="webdataset", paths=[f"{emb}/shards/web-00000.tar", str(tmp_path / "z.tar")])
    pipe = P.pretrain_pipeline([spec], FakeTokenizer(), _opts(batch_size=8, host_prefetch=0), image_size=24,
                               num_epochs=1)
    it = iter(pipe)
    batches = list(it)
    assert sum(b["pixel_values"].shape[0] for b in batches) == 16
    assert it.skip_counts == {"empty_image": 1, "bad_json": 1}


def test_web_stream_shuffled_in_windows_each_epoch_and_restorable(emb):
    """Streamed shards are shuffled within windows (here 5 records), anew each epoch, and an
    iterator restored mid-window goes on exactly."""
    spec = dict(name="web", format="webdataset", paths=[f"{emb}/shards/web-00000.tar"])  # 16 samples

    def build(window, **kw):
        return P.pretrain_pipeline([spec], FakeTokenizer(), _opts(batch_size=4, shuffle_window=window, **kw),
                                   image_size=24, num_epochs=2)

    plain = np.concatenate([b["index"] for b in build(0, host_prefetch=0)])
    assert plain.tolist() == list(range(16)) * 2  # shard order
    idx = np.concatenate([b["index"] for b in build(5, host_prefetch=0)])
    assert sorted(idx) == sorted(plain)
    for w in range(7):  # each window is a permutation of the same stretch of the stream (epochs run on)
        assert sorted(idx[5 * w:5 * w + 5]) == sorted(plain[5 * w:5 * w + 5])
    assert idx[:16].tolist() != plain[:16].tolist() and idx[16:].tolist() != idx[:16].tolist()

    it = iter(build(5))
    next(it)
    state = it.get_state()  # 4 records in: inside the first window
    expected = [next(it) for _ in range(3)]
    it2 = iter(build(5))
    it2.set_state(state)
    for a in expected:
        _equal_batches(a, next(it2))


def test_streamed_shards_have_epochs(emb):
    """Streamed shards count toward the epoch (schedules and ramps are per epoch), the same on
    every process: the global count divided evenly."""
    web = dict(name="web", format="webdataset", paths=[f"{emb}/shards/*.tar"])  # 3 shards of 16
    coco = dict(name="coco", format="blip_json", paths=[f"{emb}/annotations/pretrain_coco.json"],
                image_root=f"{emb}/images")
    n_coco = len(P.open_source(P.DatasetSpec.from_any(coco))[0])
    assert P.pretrain_pipeline([web], FakeTokenizer(), _opts(batch_size=4), image_size=24).steps_per_epoch == 12
    for index in (0, 1):
        pipe = P.pretrain_pipeline([web, coco], FakeTokenizer(), _opts(shard_index=index, shard_count=2),
                                   image_size=24)
        assert pipe.num_examples == 48 // 2 + n_coco // 2
    stated = P.pretrain_pipeline([dict(web, num_records=1000)], FakeTokenizer(), _opts(batch_size=10), image_size=24)
    assert stated.steps_per_epoch == 100


def test_web_shards_by_index_shuffle_globally(emb):
    """random_access: the shards are read by index and shuffled like a map-style source: every
    sample once per epoch, across shards, in a new order each epoch."""
    spec = dict(name="web", format="webdataset", paths=[f"{emb}/shards/*.tar"], random_access=True)
    pipe = P.pretrain_pipeline([spec], FakeTokenizer(), _opts(batch_size=8, host_prefetch=0), image_size=24,
                               num_epochs=2)
    assert pipe.num_examples == 48
    idx = np.concatenate([b["index"] for b in pipe])  # global sample positions over the 3 shards
    assert sorted(idx[:48]) == sorted(idx[48:]) == list(range(48))
    assert idx[:48].tolist() != idx[48:].tolist()
    assert {i // 16 for i in idx[:8]} != {idx[0] // 16}  # the first batch already mixes shards


# ------------------------------------------------------------------------------------------ checkpointing
def test_orbax_checkpoint_restore_mid_epoch_continues_exactly(emb, tmp_path):
    def build():
        return P.retrieval_train_pipeline(_karpathy(emb), FakeTokenizer(), _opts(seed=3), image_size=24)

    it = iter(build())
    for _ in range(5):  # 20 of 80 records: mid-epoch
        next(it)
    mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
    save, _ = P.checkpoint_args(it)
    mngr.save(5, args=ocp.args.Composite(data=save))
    mngr.wait_until_finished()
    expected = [next(it) for _ in range(3)]

    it2 = iter(build())
    _, restore = P.checkpoint_args(it2)
    mngr.restore(5, args=ocp.args.Composite(data=restore))
    got = [next(it2) for _ in range(3)]
    for a, b in zip(expected, got):
        _equal_batches(a, b)
    assert os.path.exists(tmp_path / "ckpt" / "5" / "data" / "process_0-of-1.json")
    mngr.close()


def test_state_restore_with_worker_processes_and_mixture(emb):
    specs = [dict(name="web", format="blip_json", paths=[f"{emb}/annotations/pretrain_web.json"],
                  image_root=f"{emb}/images", weight=3.0),
             dict(name="coco", format="blip_json", paths=[f"{emb}/annotations/pretrain_coco.json"],
                  image_root=f"{emb}/images", weight=1.0)]

    def build():
        return P.pretrain_pipeline(specs, FakeTokenizer(), _opts(num_workers=2, seed=5), image_size=24)

    it = iter(build())
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    it.close()
    it2 = iter(build())
    it2.set_state(state)
    for a in expected:
        _equal_batches(a, next(it2))
    it2.close()


# ------------------------------------------------------------------------------------------ determinism
def test_deterministic_given_seed(emb):
    def first(seed):
        it = iter(P.retrieval_train_pipeline(_karpathy(emb), FakeTokenizer(), _opts(seed=seed), image_size=24))
        return [next(it) for _ in range(2)]

    a, b, c = first(1), first(1), first(2)
    for x, y in zip(a, b):
        _equal_batches(x, y)
    assert not np.array_equal(a[0]["index"], c[0]["index"])


def test_epochs_cover_all_records_reshuffled(emb):
    it = iter(P.caption_train_pipeline(_karpathy(emb), FakeTokenizer(), _opts(batch_size=8, seed=0, host_prefetch=0),
                                       image_size=24, num_epochs=2))
    idx = np.concatenate([b["index"] for b in it])
    assert len(idx) == 160
    assert sorted(idx[:80]) == list(range(80)) and sorted(idx[80:]) == list(range(80))
    assert not np.array_equal(idx[:80], idx[80:])


def test_mixture_follows_weights(emb):
    specs = [dict(name="web", format="blip_json", paths=[f"{emb}/annotations/pretrain_web.json"],
                  image_root=f"{emb}/images", weight=3.0),
             dict(name="coco", format="blip_json", paths=[f"{emb}/annotations/pretrain_coco.json"],
                  image_root=f"{emb}/images", weight=1.0)]
    it = iter(P.pretrain_pipeline(specs, FakeTokenizer(), _opts(batch_size=8), image_size=16, randaugment=False))
    web_paths = {json.dumps(e["image"]) for e in json.load(open(f"{emb}/annotations/pretrain_web.json"))}
    assert len(web_paths) == 48
    # image_id is per source; count by source via the index range (web has 48, coco 16 records)
    batches = [next(it) for _ in range(8)]
    # web ids go up to 47, coco ids up to 15: ids >= 16 can only be web, so compare against expectation
    ids = np.concatenate([b["image_id"] for b in batches])
    assert len(ids) == 64 and (ids >= 16).sum() >= 30  # 3/4 web: E[#ids >= 16] = 48 * 32/48 = 32


def test_caption_prompt_and_vqa_batches(emb):
    seen = []

    class Recording(FakeTokenizer):
        def __call__(self, text, **kw):
            seen.extend([text] if isinstance(text, str) else text)
            return super().__call__(text, **kw)

    it = iter(P.caption_train_pipeline(_karpathy(emb), Recording(), _opts(num_threads=1, host_prefetch=0),
                                       image_size=16, max_len=12))
    b = next(it)
    assert b["input_ids"].shape == (4, 12) and all(t.startswith("a picture of ") for t in seen)
    vqa = dict(name="vqa", format="vqa", paths=[f"{emb}/annotations/vqa_train.json", f"{emb}/annotations/vg_qa.json"],
               image_root=f"{emb}/images", vg_image_root=f"{emb}/images/web")
    b = next(iter(P.vqa_train_pipeline(vqa, FakeTokenizer(), _opts(), image_size=16, max_answers=4)))
    assert b["answer_input_ids"].shape == (4, 4, 10) and b["answer_weights"].shape == (4, 4)
    w = b["answer_weights"]
    assert np.all((np.abs(w.sum(1) - 1) < 1e-5) | (np.abs(w.sum(1) - 0.2) < 1e-5))
    assert np.all((b["answer_attention_mask"].sum(-1) > 0) == (w > 0))


# ------------------------------------------------------------------------------------------ sharding / eval
def test_two_processes_see_disjoint_complete_halves(emb):
    seen = []
    for proc in range(2):
        it = iter(P.retrieval_train_pipeline(_karpathy(emb), FakeTokenizer(),
                                             _opts(batch_size=8, shard_index=proc, shard_count=2, host_prefetch=0),
                                             image_size=16, num_epochs=1))
        seen.append(set(np.concatenate([b["index"] for b in it]).tolist()))
    assert not (seen[0] & seen[1]) and seen[0] | seen[1] == set(range(80)) and len(seen[0]) == 40


def test_eval_every_sample_once_padded_and_aligned(emb, tmp_path):
    spec = _karpathy(emb, "val")
    per_proc = []
    for proc in range(2):
        p = P.eval_pipeline(spec, _opts(batch_size=4, shard_index=proc, shard_count=2), image_size=16)
        batches = list(p)
        assert len(batches) == 2  # ceil(ceil(10 / 2) / 4) on every process
        per_proc.append(np.concatenate([b["index"][b["mask"] == 1] for b in batches]))
        assert batches[-1]["mask"].tolist() == [1, 0, 0, 0]
        assert (batches[-1]["pixel_values"][1:] == 0).all()
    assert sorted(np.concatenate(per_proc).tolist()) == list(range(10))
    texts, txt2img, img2txt = P.retrieval_eval_texts(P.ann.load_coco_karpathy(spec["paths"][0], split="val"))
    assert len(texts) == 50 and txt2img[7] == 1 and img2txt[1] == [5, 6, 7, 8, 9]
    # a broken eval image is skipped and counted; the rest stay aligned by index
    recs = P.ann.load_coco_karpathy(spec["paths"][0], f"{emb}/images", split="val")
    recs[3]["image_path"] = str(tmp_path / "nope.jpg")
    it = iter(P.eval_pipeline(list(recs), _opts(batch_size=4), image_size=16))
    idx = np.concatenate([b["index"][b["mask"] == 1] for b in it])
    assert idx.tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9] and it.skip_counts == {"missing_image": 1}


def test_eval_vqa_questions(emb):
    spec = dict(name="vqa", format="vqa", split="test", paths=[f"{emb}/annotations/vqa_test.json"],
                image_root=f"{emb}/images")
    batches = list(P.eval_pipeline(spec, _opts(batch_size=8), image_size=16, tokenizer=FakeTokenizer(), vqa=True))
    qids = np.concatenate([b["question_id"][b["mask"] == 1] for b in batches])
    truth = [e["question_id"] for e in json.load(open(spec["paths"][0]))]
    assert qids.tolist() == truth and batches[0]["question_input_ids"].shape == (8, 35)


def test_array_record_pipeline_matches_json(emb, tmp_path):
    from blip_jax.data.convert import write_array_record

    recs = P.ann.load_coco_karpathy(f"{emb}/annotations/coco_karpathy_train.json", f"{emb}/images")
    write_array_record(recs, str(tmp_path), "coco", records_per_shard=30)
    ar = dict(name="coco", format="array_record", paths=[str(tmp_path / "*.array_record")])
    a = next(iter(P.retrieval_train_pipeline(ar, FakeTokenizer(), _opts(), image_size=16)))
    b = next(iter(P.retrieval_train_pipeline(_karpathy(emb), FakeTokenizer(), _opts(), image_size=16)))
    _equal_batches(a, b)


def test_dataset_spec_validation():
    # tfds-free sanity that DatasetSpec validates formats early
    with pytest.raises(ValueError, match="format must be one of"):
        P.DatasetSpec(name="x", format="csv", paths=["a"])
    c = collections.Counter(P.DatasetSpec.from_any(dict(name="x", format="tfds", paths="coco")).paths)
    assert c == {"coco": 1}
    assert isinstance(grain.IterDataset, type)


def test_an_empty_dataset_is_named(emb, tmp_path):
    """A mixture member without records (e.g. a CapFilt run that kept nothing) is named, instead of
    grain's 'All datasets must have positive length for mixing'."""
    empty = tmp_path / "bootstrapped.json"
    empty.write_text("[]")
    specs = [dict(name="capfilt", format="blip_json", paths=[str(empty)]),
             dict(name="web", format="blip_json", paths=[f"{emb}/annotations/pretrain_web.json"],
                  image_root=f"{emb}/images")]
    with pytest.raises(ValueError, match=r"dataset 'capfilt' \(.*bootstrapped.json\) has no records"):
        P.pretrain_pipeline(specs, FakeTokenizer(), _opts(), max_len=16)


@pytest.mark.parametrize("exact", [False, True])
def test_exact_crops_config_reaches_the_train_transform(monkeypatch, exact):
    from blip_jax.config_loader import load_config
    from blip_jax.train import tasks

    path = os.path.join(os.path.dirname(__file__), "..", "configs", "pretrain_tiny.py")
    assert load_config(path).data.exact_crops is False  # the default
    cfg = load_config(path, [f"--config.data.exact_crops={exact}"])  # as on the command line
    seen = {}

    def fake_train_pipeline(datasets, proc, opts, num_epochs=None):
        seen["transform"] = proc.image_transform
        return None

    monkeypatch.setattr(P, "train_pipeline", fake_train_pipeline)
    tasks.build_pipeline(cfg, tokenizer=None, specs=[], per_process_batch=4)
    assert seen["transform"].fast_decode is (not exact)
