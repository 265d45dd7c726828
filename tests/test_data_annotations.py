"""Nothing dropped silently: VQA votes, caption-list entries, retrieval queries; loader errors name the file."""

import collections
import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from blip_jax.data import annotations as ann
from blip_jax.data import pipelines as P
from blip_jax.data.records import AnnotationError


def _write(path, obj):
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return str(path)


def test_vqa_weights_divide_by_all_votes_and_bad_votes_are_counted(tmp_path, caplog):
    # the original BLIP (data/vqa_dataset.py): weight = count / len(answers), all answers
    dropped = collections.Counter()
    answers, weights = ann.vqa_answers_and_weights(["yes", None, "yes", "", "no"], "vqa", dropped)
    assert answers == ["yes", "no"] and weights == [2 / 5, 1 / 5] and dropped == {"dropped_answer": 2}
    assert ann.vqa_answers_and_weights(["a", "a", "b", "a"], "vqa") == (["a", "b"], [0.75, 0.25])
    p = _write(tmp_path / "q.json", [
        {"question_id": 1, "question": "q?", "answer": ["yes", None, "yes", "", "no"], "image": "i.jpg"},
        {"question_id": 2, "question": "q?", "answer": ["x", 7], "image": "i.jpg"},
        {"question_id": 3, "question": "q?", "answer": ["x"], "image": "i.jpg"}])
    with caplog.at_level(logging.WARNING, "blip_jax.data.annotations"):
        recs = ann.load_vqa(p)
    assert recs[0]["answer_weights"] == [0.4, 0.2] and recs[1]["answer_weights"] == [0.5]
    assert recs.skips == {"dropped_answer": 3}
    assert f"{p}:1: entry 0: dropped 2 answers" in caplog.text
    assert ann.load_vqa(_write(tmp_path / "ok.json", [{"question_id": 3, "question": "q", "answer": "x",
                                                      "image": "i"}])).skips == {}


def test_invalid_captions_in_a_caption_list_are_counted(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(buf, "PNG")
    (tmp_path / "a.png").write_bytes(buf.getvalue())
    p = _write(tmp_path / "p.json", [{"image": "a.png", "caption": ["a dog", None, "...", "a cat"]},
                                     {"image": "a.png", "caption": ["fine"]}])
    proc = P.ImageTextProcessor(lambda image, rng, where: np.zeros((4, 4, 3), np.float32))
    opts = P.LoaderOptions(batch_size=1, shard_index=0, shard_count=1, num_threads=1, host_prefetch=0,
                           prefetch_buffer_size=1)
    spec = dict(name="pt", format="blip_json", paths=[p], image_root=str(tmp_path))
    it = iter(P.train_pipeline([spec], proc, opts, num_epochs=1, shuffle=False))
    batches = list(it)
    assert [str(b["caption"][0]) for b in batches][1] == "fine" and len(batches) == 2
    assert it.skip_counts == {"dropped_caption": 2}  # per visit: the record itself is kept
    metrics = P.data_metrics(it.skip_counts)
    assert metrics["data/skipped/dropped_caption"] == 2 and metrics["data/skipped/total"] == 0


def test_retrieval_eval_texts_count_and_name_empty_queries(tmp_path, caplog):
    p = _write(tmp_path / "test.json", [{"image": "a.jpg", "caption": ["A dog.", None, "!!!"]},
                                        {"image": "b.jpg", "caption": ["x", "y"]}])
    recs = ann.load_coco_karpathy(p, split="test")
    skips = collections.Counter()
    with caplog.at_level(logging.WARNING, "blip_jax.data.pipelines"):
        texts, txt2img, img2txt = P.retrieval_eval_texts(recs, skips=skips)
    assert texts == ["a dog", "", "", "x", "y"] and txt2img.tolist() == [0, 0, 0, 1, 1]
    assert img2txt == [[0, 1, 2], [3, 4]]
    assert skips == {"bad_caption": 1, "empty_caption": 1}
    assert f"{p}: entry 0 caption 1 (None)" in caplog.text and "2 of 5 texts are empty queries" in caplog.text


def test_answer_list_errors_name_the_file_and_bom_files_load(tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(AnnotationError, match="nope.json: answer list not found"):
        ann.load_answer_list(missing)
    (tmp_path / "bad8.json").write_bytes(b'["\xff"]')
    with pytest.raises(AnnotationError, match="bad8.json: not UTF-8"):
        ann.load_answer_list(str(tmp_path / "bad8.json"))
    # a UTF-8 byte-order mark (Windows editors) is not "found not a list"
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([{"image": "a.jpg", "caption": "x"}]).encode())
    assert ann.load_pretrain(str(tmp_path / "bom.json"))[0]["captions"] == ["x"]
    (tmp_path / "al.json").write_bytes(b'\xef\xbb\xbf["yes", "no"]')
    assert ann.load_answer_list(str(tmp_path / "al.json")) == ["yes", "no"]
    (tmp_path / "b.jsonl").write_bytes(b'\xef\xbb\xbf{"image": "a.jpg", "caption": "x"}\n')
    recs = ann.load_pretrain(str(tmp_path / "b.jsonl"))
    assert len(recs) == 1 and recs.skips == {}
