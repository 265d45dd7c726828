"""CapFilt: the filter's scores against the retrieval model's own forward, the captioner, the
decision rule, the report's numbers, and `blip-jax capfilt` end to end (resume, bad images,
config changes, both output formats, the merge of several processes' parts)."""

from __future__ import annotations

import io
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from blip_jax import BlipForConditionalGeneration, BlipForImageTextRetrieval
from blip_jax.capfilt import bootstrap, cli
from blip_jax.capfilt.bootstrap import FilterConfig, decide
from blip_jax.capfilt.captioner import Captioner, SamplingConfig
from blip_jax.capfilt.filter import Filter
from blip_jax.capfilt.report import format_report, load_noise_labels, summarize
from blip_jax.configuration import BlipConfig, BlipTextConfig, BlipVisionConfig
from blip_jax.data import annotations as ann
from blip_jax.data.synthetic import generate_embedded_dataset
from blip_jax.processing.tokenization import WordPieceTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs/capfilt_tiny.py")


def _tiny_models(data_dir: str, out_dir: str | None = None):
    """Tiny random captioner + filter over the embedded vocabulary (saved to out_dir if given)."""
    tok = WordPieceTokenizer.from_vocab_file(os.path.join(data_dir, "vocab.txt"))
    tc = BlipTextConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id,
                        enc_token_id=tok.enc_token_id, use_enc_token_for_itm=True, initializer_range=0.2)
    vc = BlipVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=48, initializer_range=0.2)
    cfg = BlipConfig.from_text_vision_configs(tc, vc, image_text_hidden_size=16)
    captioner = BlipForConditionalGeneration(cfg, rngs=nnx.Rngs(1))
    filt = BlipForImageTextRetrieval(cfg, rngs=nnx.Rngs(2))
    if out_dir:
        captioner.save_pretrained(os.path.join(out_dir, "captioning"))
        filt.save_pretrained(os.path.join(out_dir, "retrieval"))
    return tok, captioner, filt


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("capfilt")
    data = str(root / "data")
    generate_embedded_dataset(data, num_web=14, num_corrupt=4, num_coco_train=4, num_coco_val=4, num_coco_test=4,
                              image_size=32, vg_questions=2, questions_per_image=2)
    tok, captioner, filt = _tiny_models(data, str(root / "export"))
    return dict(root=root, data=data, export=str(root / "export"), tok=tok, captioner=captioner, filter=filt)


def test_filter_probabilities_equal_the_retrieval_forward(world):
    """Folded, padded scoring of 1-3 texts per image == the model's public ITM forward per pair."""
    tok, model = world["tok"], world["filter"]
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
    texts = [["a red circle", "Two BLUE squares!"], ["click here to buy"],
             ["a green triangle at the top left", "image", "a yellow disc in the middle"]]
    got = Filter(model, tok, max_len=16).match_probabilities(pixels, texts)
    for i, row in enumerate(texts):
        assert got[i].shape == (len(row),)
        for j, text in enumerate(row):
            from blip_jax.data.pipelines import tokenize
            from blip_jax.data.text import pre_caption

            ids, mask = tokenize(tok, [pre_caption(text, 30)], 16)
            out = model(pixel_values=pixels[i:i + 1], input_ids=ids, attention_mask=mask, use_itm_head=True)
            want = jax.nn.softmax(np.asarray(out.itm_score, np.float64), axis=-1)[0, 1]
            np.testing.assert_allclose(got[i][j], want, atol=2e-6)
    spread = np.ptp(np.concatenate(got))
    assert spread > 1e-3  # the random filter does tell the texts apart: the check above is not vacuous


def test_captioner_samples_reproducibly_without_the_prompt(world):
    tok, model = world["tok"], world["captioner"]
    pixels = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    cap = Captioner(model, tok, SamplingConfig(num_captions=3, max_length=12, min_length=3))
    a = cap(pixels, jax.random.key(0))
    assert [len(r) for r in a] == [3, 3]
    assert a == cap(pixels, jax.random.key(0))
    assert a != cap(pixels, jax.random.key(1))
    ids = model.generate(pixels, input_ids=cap.prompt_ids, do_sample=True, rng=jax.random.key(0), top_p=0.9,
                         top_k=50, repetition_penalty=1.1, max_length=12, min_length=3, num_return_sequences=3)
    decoded = tok.batch_decode(np.asarray(ids).tolist(), skip_special_tokens=True)
    assert all(d.startswith("a picture of") for d in decoded)
    assert [t for row in a for t in row] == [d[len("a picture of "):].strip() for d in decoded]
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig.from_dict({"top_p": 0.0})
    with pytest.raises(ValueError, match="unknown fields"):
        SamplingConfig.from_dict({"top_q": 0.5})


def test_decide_rule():
    rec = {"index": 7, "image_key": "web/a.jpg", "image_path": "/x/web/a.jpg", "captions": ["good", "bad", None]}
    row = decide(rec, [0.9, 0.5, None], ["syn one", "syn two"], [0.51, 0.2], FilterConfig(threshold=0.5))
    assert [t["keep"] for t in row["web"]] == [True, False, False]  # p == threshold is dropped; None never kept
    assert [t["keep"] for t in row["synthetic"]] == [True, False]
    assert bootstrap.kept_texts(row) == ["good", "syn one"]
    row = decide(rec, [0.9, 0.5, None], ["s"], [0.1], FilterConfig(filter_web=False, filter_synthetic=True))
    assert bootstrap.kept_texts(row) == ["good", "bad"]
    with pytest.raises(ValueError, match="threshold"):
        FilterConfig.from_dict({"threshold": 1.0})


def test_report_numbers():
    rows = [
        {"index": 0, "image_key": "a", "web": [{"text": "clean a", "p_match": 0.9, "keep": True}],
         "synthetic": [{"text": "s0", "p_match": 0.8, "keep": True}]},
        {"index": 1, "image_key": "b", "web": [{"text": "junk b", "p_match": 0.1, "keep": False}],
         "synthetic": [{"text": "s1", "p_match": 0.3, "keep": False}]},
        {"index": 2, "image_key": "c", "web": [{"text": "clean c", "p_match": 0.2, "keep": False}],
         "synthetic": [{"text": "s2", "p_match": 0.7, "keep": True}]},
        {"index": 3, "image_key": "d", "web": [{"text": "other d", "p_match": 0.6, "keep": True}],
         "synthetic": []},
        {"index": 4, "image_key": "e", "image": None, "skipped": True},
    ]
    labels = {("a", "clean a"): "clean", ("b", "junk b"): "junk", ("c", "clean c"): "clean",
              ("d", "other d"): "other_image"}
    r = summarize(rows, {"decode_error": 1}, labels)
    assert (r["records"], r["records_processed"], r["images_kept"], r["images_without_text"]) == (5, 4, 3, 1)
    assert r["web"]["texts"] == 4 and r["web"]["kept"] == 2 and r["synthetic"]["kept"] == 2 and r["texts_kept"] == 4
    assert r["web"]["p_match"]["p50"] == pytest.approx(0.4)
    n = r["noise"]
    assert n["clean"] == {"texts": 2, "kept": 1, "kept_fraction": 0.5}
    assert n["clean_kept_fraction"] == 0.5
    assert n["noisy_removed_fraction"] == 0.5  # junk removed, other_image kept
    assert n["removal_precision"] == 0.5  # removed: junk b (noisy), clean c (clean)
    assert n["auc_clean_vs_noisy"] == 0.75  # clean {0.9, 0.2} above noisy {0.1, 0.6} in 3 of 4 pairs
    sweep = r["web"]["threshold_sweep"]
    assert sweep["0.5"] == {"web_kept": 0.5, "clean_kept": 0.5, "noisy_removed": 0.5}
    assert sweep["0.1"] == {"web_kept": 0.75, "clean_kept": 1.0, "noisy_removed": 0.5}  # p == 0.1 is dropped
    assert "records_skipped_unaccounted" not in r
    assert summarize(rows, {})["records_skipped_unaccounted"] == 1


def test_report_against_the_scenes():
    """With the images' scenes the report says which web and synthetic texts were true of their
    image, and how many of the kept ones are (the bootstrapped data's precision)."""
    red = {"objects": [{"shape": "circle", "color": "red", "size": "small", "row": "top", "col": "left"}]}
    blue = {"objects": [{"shape": "square", "color": "blue", "size": "large", "row": "middle", "col": "center"}]}
    rows = [
        {"index": 0, "image_key": "a", "web": [{"text": "a red disc", "p_match": 0.9, "keep": True}],
         "synthetic": [{"text": "a red square", "p_match": 0.8, "keep": True},
                       {"text": "a small red circle", "p_match": 0.7, "keep": True}]},
        {"index": 1, "image_key": "b", "web": [{"text": "image", "p_match": 0.1, "keep": False}],
         "synthetic": [{"text": "a blue box in the center", "p_match": 0.3, "keep": False}]},
        {"index": 2, "image_key": "c", "web": [{"text": "a red circle", "p_match": 0.6, "keep": True}],
         "synthetic": [{"text": "a blue square", "p_match": 0.2, "keep": False}]},
        {"index": 3, "image_key": "nowhere", "web": [{"text": "a red circle", "p_match": 0.6, "keep": True}],
         "synthetic": []},
    ]
    r = summarize(rows, {}, scenes={"a": red, "b": blue, "c": blue})
    t = r["truth"]
    assert t["web"] == {"texts": 3, "true": 1, "kept": 2, "kept_true": 1, "true_fraction": 0.3333,
                        "kept_true_fraction": 0.5, "true_kept_fraction": 1.0}
    assert t["synthetic"] == {"texts": 4, "true": 3, "kept": 2, "kept_true": 1, "true_fraction": 0.75,
                              "kept_true_fraction": 0.5, "true_kept_fraction": 0.3333}
    assert t["kept_true_fraction"] == 0.5 and t["records_without_scene"] == 1
    assert "true of their scene: web texts 33.3%, synthetic 75.0%; kept texts 50.0%" in format_report(r)
    assert "truth" not in summarize(rows, {})


def test_score_histogram_equals_the_full_lists():
    """The report's constant-memory histograms give what the lists of values give: np.quantile,
    fractions above thresholds, and the pairwise AUC with ties counting half."""
    from blip_jax.capfilt.report import ScoreHistogram

    rng = np.random.default_rng(0)
    pos = np.round(rng.beta(4, 2, 300), 6)
    neg = np.round(np.concatenate([rng.beta(2, 4, 197), pos[:3]]), 6)  # a few exact ties
    hp, hn = ScoreHistogram(), ScoreHistogram()
    hp._FLUSH = 64  # exercise the buffered adds
    for v in pos:
        hp.add(float(v))
    for v in neg:
        hn.add(float(v))
    assert len(hp) == 300 and len(hn) == 200
    assert hp.quantiles() == {f"p{int(q * 100)}": round(float(np.quantile(pos, q)), 4) for q in (0.1, 0.5, 0.9)}
    for t in (0.1, 0.35, 0.5, float(pos[0])):
        assert hp.fraction_above(t) == pytest.approx(np.mean(pos > t), abs=1e-12)
    pairwise = np.mean((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None]))
    assert ScoreHistogram.auc(hp, hn) == pytest.approx(pairwise, abs=1e-12)
    empty = ScoreHistogram()
    assert ScoreHistogram.auc(empty, hn) is None and empty.quantiles() == {}
    tie, half = ScoreHistogram(), ScoreHistogram()
    for v in (0.5, 0.7):
        tie.add(v)
    half.add(0.5)
    assert ScoreHistogram.auc(tie, half) == 0.75  # a tie counts half


def _cli(world, workdir, *extra):
    return cli.main(["--config", f"{CONFIG}:smoke", "--workdir", str(workdir),
                     f"--config.data.embedded_dir={world['data']}",
                     f"--config.captioner={world['export']}/captioning",
                     f"--config.filter={world['export']}/retrieval", "--config.batch_size=4",
                     "--config.chunk_batches=1", *extra])


def test_cli_end_to_end_resume_and_changed_config(world, capsys):
    root = world["root"]
    full = root / "full"
    assert _cli(world, full) == 0
    printed = capsys.readouterr().out
    assert "filter vs ground truth" in printed and "bootstrapped dataset" in printed
    rows = [json.loads(line) for line in (full / "decisions.jsonl").read_text().splitlines()]
    entries = json.loads(open(os.path.join(world["data"], "annotations/pretrain_web.json")).read())
    assert [r["index"] for r in rows] == list(range(len(entries))) == list(range(18))
    skipped = [r for r in rows if r.get("skipped")]
    assert [r["image_key"] for r in skipped] == [e["image"] for e in entries[14:]]  # the 4 broken images
    report = json.loads((full / "report.json").read_text())
    assert sum(report["records_skipped"].values()) == 4 and "records_skipped_unaccounted" not in report
    assert report["records_processed"] == 14 and report["web"]["texts"] == 14 and report["synthetic"]["texts"] == 14
    labels = load_noise_labels(os.path.join(world["data"], "annotations/web_noise.json"))
    assert sum(v["texts"] for k, v in report["noise"].items() if isinstance(v, dict)) == 14
    assert "unlabelled" not in report["noise"] and len(labels) == 2 * 14  # by image file and by shard key
    for r in rows:
        if not r.get("skipped"):
            assert [t["text"] for t in r["web"]] == [entries[r["index"]]["caption"]]
            assert all(t["keep"] == (t["p_match"] is not None and t["p_match"] > 0.5)
                       for t in r["web"] + r["synthetic"])
    # The bootstrapped list is what was kept, one entry per kept text (as BLIP's released CapFilt
    # files), and the pretraining loader reads it.
    boot = ann.load_pretrain(str(full / "bootstrapped.json"))
    kept = [r for r in rows if not r.get("skipped") and bootstrap.kept_texts(r)]
    per_text = [(r, t) for r in kept for t in bootstrap.kept_texts(r)]
    assert len(kept) == report["images_kept"] and len(boot) == len(per_text) == report["texts_kept"]
    assert len(per_text) > len(kept)  # some images keep both texts: they appear twice
    assert [b["captions"] for b in boot] == [[t] for _, t in per_text]
    assert [b["image_path"] for b in boot] == [os.path.abspath(r["image"]) for r, _ in per_text]
    assert all(os.path.exists(b["image_path"]) for b in boot)
    spec = json.loads((full / "bootstrapped.spec.json").read_text())
    assert spec["format"] == "blip_json" and report["output"] == spec

    # Interrupted after 2 chunks, then resumed with the same command: the same files.
    part = root / "part"
    assert _cli(world, part, "--max-chunks=2") == 0
    assert not (part / "decisions.jsonl").exists()
    assert len(list((part / "parts").glob("*.meta.json"))) == 2
    assert _cli(world, part) == 0
    for name in ("decisions.jsonl", "bootstrapped.json"):
        assert (part / name).read_text() == (full / name).read_text()

    # A changed setting stops with exit code 2 naming it; a speed knob does not.
    assert _cli(world, part, "--config.filtering.threshold=0.6") == 2
    assert "filtering.threshold: 0.5 -> 0.6" in capsys.readouterr().err
    assert _cli(world, part, "--config.num_threads=1") == 0


def test_array_record_source_and_output(world, tmp_path):
    """An ArrayRecord source (images as bytes, no files) -> by default caption records over the
    source's images (no image copy), read back as full records; with output_format=array_record a
    standalone set whose records carry the kept texts and the original image bytes."""
    from blip_jax.data import pipelines as pl
    from blip_jax.data.convert import write_array_record
    from blip_jax.data.sources import ArrayRecordRecords

    recs = ann.load_pretrain(os.path.join(world["data"], "annotations/pretrain_web.json"),
                             os.path.join(world["data"], "images"))
    written = write_array_record(recs, str(tmp_path / "src"), "web")
    assert written["num_records"] == 16  # the missing and the empty file are dropped at conversion
    work = tmp_path / "work"
    source = "array_record:" + ",".join(written["files"])
    assert _cli(world, work, f"--config.data.source={source}", "--config.data.noise_labels=") == 0
    report = json.loads((work / "report.json").read_text())
    assert report["output"]["format"] == "capfilt_captions" and "noise" not in report
    assert report["records"] == 16 and sum(report["records_skipped"].values()) == 2  # truncated, garbage
    rows = [json.loads(line) for line in (work / "decisions.jsonl").read_text().splitlines()]
    kept = [r for r in rows if not r.get("skipped") and bootstrap.kept_texts(r)]
    src = ArrayRecordRecords(written["files"])
    overlay, _ = pl.open_source(pl.DatasetSpec.from_any(report["output"]))
    per_text = [(r, t) for r in kept for t in bootstrap.kept_texts(r)]  # one record per kept text
    assert len(overlay) == len(per_text) > 0
    assert all(r["image"] == b"" for r in ArrayRecordRecords(report["output"]["paths"]))  # captions, no images
    for i, (r, t) in enumerate(per_text):
        assert overlay[i]["captions"] == [t] and overlay[i]["image_id"] == r["index"]
        assert overlay[i]["image"] == src[r["index"]]["image"] and overlay[i]["index"] == i

    standalone = tmp_path / "standalone"
    assert _cli(world, standalone, f"--config.data.source={source}", "--config.data.noise_labels=",
                "--config.output_format=array_record") == 0
    report = json.loads((standalone / "report.json").read_text())
    assert report["output"]["format"] == "array_record"
    out = ArrayRecordRecords(report["output"]["paths"])
    assert len(out) == len(per_text)
    for i, (r, t) in enumerate(per_text):
        assert out[i]["captions"] == [t]
        assert out[i]["image"] == src[r["index"]]["image"]


def test_webdataset_shards_read_in_place(world, tmp_path, capsys):
    """img2dataset tar shards as the source, read by index without conversion: the same synthetic
    captions, scores and decisions as the same images read from files, the noise report matched by
    the samples' keys, and an ArrayRecord output holding the shards' image bytes."""
    import tarfile

    from blip_jax.data import pipelines as pl
    from blip_jax.data.sources import WebDatasetRecords

    with tarfile.open(os.path.join(world["data"], "shards", "web-00000.tar")) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    shards = tmp_path / "shards"
    shards.mkdir()
    for s, lo in enumerate((0, 5, 10)):  # 14 samples in 3 shards of 5, 5 and 4 (3 members each)
        with tarfile.open(shards / f"cc-{s:05d}.tar", "w") as tar:
            for m, data in members[3 * lo:3 * (lo + 5)]:
                tar.addfile(m, io.BytesIO(data))
    files, tars = tmp_path / "files", tmp_path / "tars"
    assert _cli(world, files) == 0
    assert _cli(world, tars, f"--config.data.source=webdataset:{shards}/*.tar") == 0
    assert len(list((tars / "tar_index").glob("*.json"))) == 3  # the header scans, kept for reruns

    by_file = [json.loads(line) for line in (files / "decisions.jsonl").read_text().splitlines()]
    by_tar = [json.loads(line) for line in (tars / "decisions.jsonl").read_text().splitlines()]
    assert len(by_tar) == 14 and [r["image_key"] for r in by_tar] == [f"{i:09d}" for i in range(14)]
    for f, t in zip(by_file[:14], by_tar):
        assert f["web"] == t["web"] and f["synthetic"] == t["synthetic"]
    rep_file, rep_tar = (json.loads((d / "report.json").read_text()) for d in (files, tars))
    assert rep_tar["noise"] == rep_file["noise"] and "unlabelled" not in rep_tar["noise"]
    assert rep_tar["source_skips"] == {} and rep_tar["records_skipped"] == {}

    # The bootstrapped set: caption records over the shards' images, which a pretraining mixture
    # reads through the same header index (no rescan, no image copy).
    spec = rep_tar["output"]
    assert spec["format"] == "capfilt_captions" and spec["base"]["index_dir"] == str(tars / "tar_index")
    src = WebDatasetRecords(f"{shards}/*.tar")
    per_text = [(r, t) for r in by_tar for t in bootstrap.kept_texts(r)]
    overlay, _ = pl.open_source(pl.DatasetSpec.from_any(spec))
    assert len(overlay) == len(per_text) > 0
    for i, (r, t) in enumerate(per_text):
        assert overlay[i]["captions"] == [t] and overlay[i]["image"] == src[r["index"]]["image"]
    pipe = pl.pretrain_pipeline([spec], world["tok"], pl.LoaderOptions(batch_size=2, shard_index=0, shard_count=1,
                                                                       num_threads=1, host_prefetch=0),
                                image_size=32, num_epochs=1)
    assert pipe.num_examples == len(per_text)
    assert sum(b["pixel_values"].shape[0] for b in pipe) == len(per_text) // 2 * 2

    # A shard added to the glob shifts the record indices: the rerun refuses to mix the parts.
    with tarfile.open(shards / "cc-00003.tar", "w") as tar:
        for m, data in members[:3]:
            tar.addfile(m, io.BytesIO(data))
    assert _cli(world, tars, f"--config.data.source=webdataset:{shards}/*.tar") == 2
    assert "source_records: 14 -> 15" in capsys.readouterr().err


def test_parts_of_two_processes_merge_in_record_order(world, tmp_path, monkeypatch):
    """Two processes' strided shares, written as each would, merge into one record-ordered file."""
    run = bootstrap.build_run(_config(world), str(tmp_path))
    for p in (0, 1):
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        assert bootstrap.process_chunks(run, str(tmp_path))
    assert len(list((tmp_path / "parts").glob("p00001-of-00002-*.meta.json"))) == 2  # 9 records in chunks of 8
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    report = bootstrap.merge_outputs(run, str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(18))
    assert report["records"] == 18 and sum(report["records_skipped"].values()) == 4


def _config(world):
    import importlib.util

    spec = importlib.util.spec_from_file_location("capfilt_tiny", CONFIG)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("smoke")
    c.data.embedded_dir = world["data"]
    c.captioner = os.path.join(world["export"], "captioning")
    c.filter = os.path.join(world["export"], "retrieval")
    c.batch_size, c.chunk_batches = 4, 2
    return c


def test_two_local_devices_give_the_same_decisions(world, tmp_path):
    """Batches split over 2 (simulated) devices of one process: the same captions and decisions."""
    import subprocess
    import sys

    one = tmp_path / "one"
    assert _cli(world, one) == 0
    two = tmp_path / "two"
    args = ["--config", f"{CONFIG}:smoke", "--workdir", str(two), f"--config.data.embedded_dir={world['data']}",
            f"--config.captioner={world['export']}/captioning", f"--config.filter={world['export']}/retrieval",
            "--config.batch_size=4", "--config.chunk_batches=1"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    code = ("import sys, jax; from blip_jax.capfilt import cli; assert jax.local_device_count() == 2; "
            f"sys.exit(cli.main({args!r}))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = [json.loads(line) for line in (one / "decisions.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (two / "decisions.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 18
    for x, y in zip(a, b):
        assert x.get("skipped") == y.get("skipped")
        for kind in ("web", "synthetic"):
            assert [t["text"] for t in x.get(kind, [])] == [t["text"] for t in y.get(kind, [])]
            assert [t["keep"] for t in x.get(kind, [])] == [t["keep"] for t in y.get(kind, [])]
            np.testing.assert_allclose([t["p_match"] or 0 for t in x.get(kind, [])],
                                       [t["p_match"] or 0 for t in y.get(kind, [])], atol=1e-5)


def test_two_processes_on_localhost(world, tmp_path):
    """A real 2-process run (jax.distributed on localhost): each process writes its strided share,
    process 0 merges after both are done; the filter's scores equal the 1-process run's."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = tmp_path / "two"
    args = ["--config", f"{CONFIG}:smoke", "--workdir", str(work), f"--config.data.embedded_dir={world['data']}",
            f"--config.captioner={world['export']}/captioning", f"--config.filter={world['export']}/retrieval",
            "--config.batch_size=4", "--config.chunk_batches=1"]
    code = f"import sys; from blip_jax.capfilt import cli; sys.exit(cli.main({args!r}))"
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_", "TPU_", "MEGASCALE_"))}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=dict(keep, JAX_PLATFORMS="cpu", XLA_FLAGS="",
                                                  JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                                  JAX_PROCESS_ID=str(pid)))
             for pid in range(2)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    errors = " ".join(err for _, err in outs).lower()
    if any(p.returncode for p in procs) and "gloo" in errors and "not" in errors:
        pytest.skip(f"gloo CPU collectives unavailable in this jaxlib: {errors[-500:]}")
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-2000:] + err[-4000:]
    assert "bootstrapped dataset" in outs[0][0] and "bootstrapped dataset" not in outs[1][0]  # process 0 merged
    parts = sorted(f.name for f in (work / "parts").glob("*.meta.json"))
    assert parts == [f"p0000{p}-of-00002-c000000{c}.meta.json" for p in (0, 1) for c in (0, 1, 2)]  # 9 each, 4 a chunk
    rows = [json.loads(line) for line in (work / "decisions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(18))
    one = tmp_path / "one"
    assert _cli(world, one) == 0
    single = [json.loads(line) for line in (one / "decisions.jsonl").read_text().splitlines()]
    for a, b in zip(rows, single):
        assert a.get("skipped") == b.get("skipped")
        np.testing.assert_allclose([t["p_match"] or 0 for t in a.get("web", [])],
                                   [t["p_match"] or 0 for t in b.get("web", [])], atol=1e-5)
    report = json.loads((work / "report.json").read_text())
    assert report["records"] == 18 and sum(report["records_skipped"].values()) == 4


def test_a_stop_request_finishes_the_chunk_in_progress(world, tmp_path):
    """SIGTERM (here the handler's flag, set while the first chunk is captioned): the chunk is
    finished and written, the run returns without merging, and the rerun completes."""
    from blip_jax.train.preemption import PreemptionHandler

    run = bootstrap.build_run(_config(world), str(tmp_path))
    stop = PreemptionHandler()
    captioner = run.captioner

    def captioning_then_signal(pixels, key):
        stop.request_stop("received SIGTERM")
        return captioner(pixels, key)

    run.captioner = captioning_then_signal
    assert bootstrap.run_capfilt(run, str(tmp_path), stop=stop) is None
    assert [f.name for f in (tmp_path / "parts").glob("*.meta.json")] == ["p00000-of-00001-c0000000.meta.json"]
    assert not (tmp_path / "decisions.jsonl").exists()
    run.captioner = captioner
    report = bootstrap.run_capfilt(run, str(tmp_path), stop=PreemptionHandler())
    assert report["records"] == 18 and len(list((tmp_path / "parts").glob("*.meta.json"))) == 3
