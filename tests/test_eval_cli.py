"""`blip-jax eval` end to end on the embedded dataset with tiny HF-format checkpoints: every evaluator
runs, sees each sample once, and writes results + metrics JSON."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from flax import nnx

from blip_jax import BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipForQuestionAnswering
from blip_jax.configuration import BlipConfig, BlipTextConfig, BlipVisionConfig
from blip_jax.data.synthetic import generate_embedded_dataset, scene_truth_metrics
from blip_jax.evaluation import cli
from blip_jax.processing.tokenization import WordPieceTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_export(tmp_path):
    """Embedded dataset (smoke sizes) + tiny random HF-format exports -> (data folder, export folder)."""
    data = tmp_path / "data"
    generate_embedded_dataset(str(data), num_web=8, num_coco_train=4, num_coco_val=4, num_coco_test=6,
                              image_size=32, vg_questions=2, questions_per_image=2)
    tok = WordPieceTokenizer.from_vocab_file(str(data / "vocab.txt"))
    tc = BlipTextConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id,
                        enc_token_id=tok.enc_token_id, use_enc_token_for_itm=True)
    vc = BlipVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=48, initializer_range=0.2)
    cfg = BlipConfig.from_text_vision_configs(tc, vc, image_text_hidden_size=16)
    ckpt = tmp_path / "export"
    for sub, cls in (("retrieval", BlipForImageTextRetrieval), ("captioning", BlipForConditionalGeneration),
                     ("vqa", BlipForQuestionAnswering)):
        cls(cfg, rngs=nnx.Rngs(0)).save_pretrained(str(ckpt / sub))
    return data, ckpt


def test_eval_cli_all_evaluators(tmp_path):
    data, ckpt = _tiny_export(tmp_path)
    work = tmp_path / "eval"
    skip_caption = shutil.which("java") is None
    args = ["--config", os.path.join(ROOT, "configs/eval_tiny.py:smoke"), "--checkpoint", str(ckpt),
            "--workdir", str(work), f"--config.data.embedded_dir={data}", "--config.evals.retrieval.k_test=4"]
    if skip_caption:
        pytest.skip("caption metrics need Java")
    assert cli.main(args) == 0
    metrics = json.loads((work / "eval_metrics.json").read_text())
    assert metrics["retrieval/num_images"] == 6 and metrics["retrieval/num_texts"] == 30
    assert 0 <= metrics["retrieval/txt_r1"] <= metrics["retrieval/txt_r10"] <= 100
    assert metrics["caption/num_images"] == 6 and 0 <= metrics["caption/CIDEr"]
    assert metrics["vqa/num_questions"] == 12 and 0 <= metrics["vqa/accuracy"] <= 100
    caps = json.loads((work / "caption_results.json").read_text())
    test = json.loads((data / "annotations/coco_karpathy_test.json").read_text())
    assert sorted(c["image_id"] for c in caps) == sorted(int(e["image"].split("_")[-1][:-4]) for e in test)
    assert all(isinstance(c["caption"], str) and not c["caption"].startswith("a picture of") for c in caps)
    # the embedded world's ground truth: each caption checked against its image's scene
    scenes = json.loads((data / "scenes.json").read_text())
    by_id = {int(e["image"].split("_")[-1][:-4]): scenes[e["image"]] for e in test}
    want = scene_truth_metrics((c["caption"], by_id[c["image_id"]]) for c in caps)
    assert want["scene_checked"] == 6
    assert {k: metrics[f"caption/{k}"] for k in want} == want
    answers = json.loads((work / "vqa_results.json").read_text())
    qids = [e["question_id"] for e in json.loads((data / "annotations/vqa_test.json").read_text())]
    assert [a["question_id"] for a in answers] == qids
    pool = set(json.loads((data / "annotations/answer_list.json").read_text()))
    assert all(a["answer"] in pool for a in answers)  # rank inference answers from the answer list
    ret = json.loads((work / "retrieval_metrics.json").read_text())
    assert set(ret["timings"]) >= {"embed_images", "embed_texts", "similarity_topk", "rerank_i2t", "rerank_t2i"}
    assert cli.due({"a": {"every_n_steps": 5}, "b": {"every_n_steps": 0}}, 10) == ["a"]


def test_evaluators_identical_on_1_and_8_devices(tmp_path):
    """The same checkpoint evaluated with 1 and with 8 simulated CPU devices: identical retrieval
    metrics, captions and VQA answers (each sample seen once, whatever the sharding)."""
    import subprocess
    import sys

    if shutil.which("java") is None:
        pytest.skip("caption metrics need Java")
    data, ckpt = _tiny_export(tmp_path)
    outputs = {}
    for n in (1, 8):
        work = tmp_path / f"eval{n}"
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        out = subprocess.run([sys.executable, "-m", "blip_jax.cli", "eval", "--config",
                              os.path.join(ROOT, "configs/eval_tiny.py:smoke"), "--checkpoint", str(ckpt),
                              "--workdir", str(work), f"--config.data.embedded_dir={data}",
                              "--config.evals.retrieval.k_test=4"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        outputs[n] = {name: json.loads((work / f"{name}.json").read_text())
                      for name in ("retrieval_metrics", "caption_results", "vqa_results")}
    ret1, ret8 = outputs[1]["retrieval_metrics"], outputs[8]["retrieval_metrics"]
    for key in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean"):
        assert ret1[key] == ret8[key], key
    assert outputs[1]["caption_results"] == outputs[8]["caption_results"]
    assert outputs[1]["vqa_results"] == outputs[8]["vqa_results"]
