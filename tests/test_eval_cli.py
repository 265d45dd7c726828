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


def test_eval_config_overrides_reach_the_models(tmp_path, monkeypatch):
    """An eval entry's use_enc_token_for_itm reaches the model `blip-jax eval` loads (its text
    config, hence whether [ENC] replaces [CLS]), and the VQA entry's label_smoothing (or, without
    it, the model's) is what rank inference scores with."""
    import jax
    import numpy as np

    from blip_jax.evaluation import vqa
    from blip_jax.train.mesh import make_mesh

    data, ckpt = _tiny_export(tmp_path)  # saved with use_enc_token_for_itm=True, label_smoothing 0.0
    cfg = tmp_path / "eval_cfg.py"
    cfg.write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('eval_tiny', {os.path.join(ROOT, 'configs/eval_tiny.py')!r})\n"
        "mod = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(mod)\n\n\n"
        "def get_config(arg=''):\n"
        "    c = mod.get_config('smoke')\n"
        "    c.evals.retrieval.use_enc_token_for_itm = False\n"
        "    c.evals.vqa.use_enc_token_for_itm = False\n"
        "    c.evals.vqa.label_smoothing = 0.1\n"
        "    return c\n")
    captured = {}
    real_run_evals = cli.run_evals

    def fake_run_evals(config_evals, models, tokenizer, mesh, workdir, **kw):
        captured.update(evals=config_evals, models=models, tokenizer=tokenizer)
        os.makedirs(workdir, exist_ok=True)
        return {}

    monkeypatch.setattr(cli, "run_evals", fake_run_evals)
    assert cli.main(["--config", str(cfg), "--checkpoint", str(ckpt), "--workdir", str(tmp_path / "eval"),
                     f"--config.data.embedded_dir={data}"]) == 0
    models = captured["models"]
    assert models["retrieval"].config.text_config.use_enc_token_for_itm is False
    assert models["vqa"].config.text_config.use_enc_token_for_itm is False
    assert models["caption"].config.text_config.use_enc_token_for_itm is True  # no override: the checkpoint's
    # behaviour: the question keeps its [CLS]; the checkpoint's own setting swaps it for [ENC]
    own = BlipForQuestionAnswering.from_pretrained(str(ckpt / "vqa"))
    tc = own.config.text_config
    rng = np.random.default_rng(0)
    img = own.vision_model(rng.normal(size=(2, 32, 32, 3)).astype(np.float32)).last_hidden_state
    ids = np.asarray(captured["tokenizer"](["what colour is the circle"] * 2, return_tensors="np")["input_ids"],
                     np.int32)
    assert ids[0, 0] != tc.enc_token_id
    q_over, q_own = (np.asarray(m.encode_question(ids, img)) for m in (models["vqa"], own))
    assert np.abs(q_over - q_own).max() > 1e-3
    enc_ids = ids.copy()
    enc_ids[:, 0] = tc.enc_token_id
    np.testing.assert_allclose(np.asarray(models["vqa"].encode_question(enc_ids, img)), q_own, atol=1e-6)

    # the CLI path hands the entry's label smoothing (else the model's) to rank inference
    seen = []
    real_rank = vqa.rank_answers
    monkeypatch.setattr(vqa, "rank_answers", lambda *a: seen.append(a[6]) or real_rank(*a))
    mesh = make_mesh(devices=jax.devices()[:1])
    evals = {"vqa": dict(captured["evals"].vqa)}
    for value, want in ((0.1, 0.1), (None, 0.0), (0.0, 0.0)):
        evals["vqa"]["label_smoothing"] = value
        real_run_evals(evals, models, captured["tokenizer"], mesh, str(tmp_path / "eval2"), data_root=str(data))
        assert seen[-1] == want
    models["vqa"].config.text_config.label_smoothing = 0.1
    evals["vqa"]["label_smoothing"] = None
    real_run_evals(evals, models, captured["tokenizer"], mesh, str(tmp_path / "eval2"), data_root=str(data))
    assert seen[-1] == 0.1
    # an entry that contradicts a model built elsewhere (the training loop's) is an error, not ignored
    evals["vqa"]["use_enc_token_for_itm"] = True
    with pytest.raises(ValueError, match="use_enc_token_for_itm"):
        real_run_evals(evals, models, captured["tokenizer"], mesh, str(tmp_path / "eval2"), data_root=str(data))
    with pytest.raises(ValueError, match="disagrees"):
        cli.text_config_overrides({"a": {"type": "retrieval", "use_enc_token_for_itm": True},
                                   "b": {"type": "retrieval", "use_enc_token_for_itm": False}})
    assert cli.text_config_overrides({"a": {"type": "vqa", "use_enc_token_for_itm": None},
                                      "b": {"type": "retrieval", "use_enc_token_for_itm": True}}) == \
        {"retrieval": {"use_enc_token_for_itm": True}}
