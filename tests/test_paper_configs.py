"""The paper-scale configs (configs/pretrain.py, configs/finetune.py) run end to end on a miniature
copy of the data layouts that data/*.md prepare, with only the model sizes, image sizes and batch
shrunk by command-line overrides: their mixtures, epochs, schedules, initialisation from a
pretraining export, evaluations and best-checkpoint selection are the paper configs' own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from blip_jax.data.synthetic import generate_embedded_dataset
from blip_jax.train.loop import history_from_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_model(variant_evals: str = "", image_size: int = 32) -> list[str]:
    small = [f"--config.model.{tower}.{k}={v}" for tower in ("vision", "text")
             for k, v in (("hidden_size", 32), ("num_hidden_layers", 1), ("num_attention_heads", 4),
                          ("intermediate_size", 64))]
    return [*small, f"--config.model.vision.image_size={image_size}", "--config.model.vision.patch_size=8",
            "--config.model.text.max_position_embeddings=64", "--config.model.image_text_hidden_size=16",
            "--config.model.dtype=float32", "--config.model.remat=False", f"--config.data.image_size={image_size}",
            "--config.data.batch_size=8", "--config.data.num_workers=0", "--config.data.num_threads=2",
            "--config.log_every_steps=1",
            *([f"--config.evals.{variant_evals}.image_size={image_size}"] if variant_evals else [])]


def _train(config: str, workdir, *extra) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "blip_jax.cli", "train", "--config", os.path.join(ROOT, "configs", config),
           "--workdir", str(workdir), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """data/web.md's pretraining root, data/coco.md's COCO root and data/vqa.md's VQA root, filled
    from the embedded dataset, and a 2-epoch run of configs/pretrain.py on the first."""
    tmp = tmp_path_factory.mktemp("paper")
    emb = str(tmp / "emb")
    generate_embedded_dataset(emb, num_web=48, num_coco_train=8, num_coco_val=4, num_coco_test=4, image_size=32,
                              vg_questions=4, questions_per_image=2, shard_size=16)
    pre = tmp / "pretrain"
    (pre / "annotations").mkdir(parents=True)
    coco = json.loads(open(os.path.join(emb, "annotations", "pretrain_coco.json")).read())
    (pre / "annotations" / "coco.json").write_text(json.dumps(coco))
    (pre / "annotations" / "vg.json").write_text(json.dumps(coco[:5]))
    for name in ("coco", "vg"):
        os.symlink(os.path.join(emb, "images"), pre / name)
    for name in ("cc3m", "cc12m", "sbu"):  # img2dataset shards with their _stats.json files
        shutil.copytree(os.path.join(emb, "shards"), pre / name)
    vqa = tmp / "vqa"
    (vqa / "annotations").mkdir(parents=True)
    for src, dst in (("vqa_train", "vqa_train"), ("vqa_train", "vqa_val"), ("vg_qa", "vg_qa"),
                     ("vqa_test", "vqa_test"), ("answer_list", "answer_list")):
        shutil.copy(os.path.join(emb, "annotations", f"{src}.json"), vqa / "annotations" / f"{dst}.json")
    os.symlink(os.path.join(emb, "images"), vqa / "coco_images")
    os.symlink(os.path.join(emb, "images", "web"), vqa / "vg_images")

    # The paper starts from DeiT-B and bert-base-uncased HF folders: tiny random ones here.
    transformers = pytest.importorskip("transformers")
    transformers.DeiTModel(transformers.DeiTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64)).save_pretrained(tmp / "deit")
    vocab = len(open(os.path.join(emb, "vocab.txt"), encoding="utf-8").read().split())
    transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64)).save_pretrained(tmp / "bert")

    run = tmp / "pretrain_run"
    out = _train(f"pretrain.py:vit_b_14m,{pre}", run, *_tiny_model(), f"--config.tokenizer.path={emb}/vocab.txt",
                 f"--config.model.init.vision_hf={tmp / 'deit'}", f"--config.model.init.text_hf={tmp / 'bert'}",
                 "--config.objective.queue_size=32", "--config.num_epochs=2",
                 "--config.optimizer.schedule.warmup_steps=2")
    assert f"initialised the ViT from {tmp / 'deit'}" in out.stderr
    assert f"initialised the text encoder/decoder from {tmp / 'bert'}" in out.stderr
    # emb itself is data/coco.md's layout: images/ and annotations/coco_karpathy_{train,val,test}.json
    return dict(emb=emb, coco=emb, vqa=str(vqa), run=run, coco_entries=len(coco))


def test_pretrain_config_runs_epochs_of_the_mixture(layouts):
    """COCO + VG (BLIP JSON) + CC3M + CC12M + SBU (streamed shards): an epoch is the mixture once,
    (8 + 5 + 3 x 48) / 8 = 19 steps (with 8 COCO entries), and BLIP's step decay multiplies the
    learning rate by 0.9 at the epoch boundary."""
    hist = history_from_jsonl(os.path.join(layouts["run"], "metrics.jsonl"))
    per_epoch = (layouts["coco_entries"] + 5 + 3 * 48) // 8
    assert per_epoch == 19 and sorted(hist) == list(range(1, 2 * per_epoch + 1))
    assert hist[10]["lr"] == pytest.approx(3e-4) and hist[2 * per_epoch]["lr"] == pytest.approx(0.9 * 3e-4)
    assert all(np.isfinite(h["loss_ita"]) and np.isfinite(h["loss_lm"]) for h in hist.values())
    for export in ("retrieval", "captioning", "vqa"):
        assert os.path.exists(os.path.join(layouts["run"], "export", export, "model.safetensors"))


@pytest.mark.parametrize("variant,export,metric,best,num_evals", [
    ("retrieval_coco", "retrieval", "retrieval/r_mean", "retrieval/r_mean", 2),
    ("caption_coco", "captioning", "caption/CIDEr", "caption/CIDEr+caption/Bleu_4", 2),
    ("vqa", "vqa", "vqa/accuracy", "", 1)])
def test_finetune_configs_from_the_pretraining_export(layouts, tmp_path, variant, export, metric, best, num_evals):
    """Each fine-tune starts from the pretraining run's export at a higher resolution (as BLIP goes
    from 224 to 384: here 32 -> 48 pixels, 4x4 -> 6x6 patches, the position table resized),
    evaluates as BLIP's scripts do (retrieval and captioning every epoch, VQA once at the end) and,
    where the config names a best metric, keeps the best checkpoint (captioning: CIDEr + BLEU-4)."""
    task = variant.split("_")[0]
    root = layouts["vqa"] if task == "vqa" else layouts["coco"]
    init = os.path.join(layouts["run"], "export", export)
    out = _train(f"finetune.py:{variant},{root},{init}", tmp_path, *_tiny_model(task, image_size=48),
                 f"--config.tokenizer.path={layouts['emb']}/vocab.txt", "--config.num_epochs=2")
    assert "resized ViT position embeddings from 4x4 to 6x6 patches" in out.stderr
    hist = history_from_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
    evals = sorted(step for step, h in hist.items() if f"eval/{metric}" in h)
    last = max(hist)
    assert len(evals) == num_evals and evals[-1] == last
    assert all(np.isfinite(hist[s][f"eval/{metric}"]) for s in evals)
    if best:
        assert os.listdir(os.path.join(tmp_path, "checkpoints_best", best))
    else:
        assert not os.path.exists(os.path.join(tmp_path, "checkpoints_best"))


def test_best_metric_value():
    from blip_jax.train.loop import best_metric_value

    results = {"caption/CIDEr": 1.25, "caption/Bleu_4": 0.375}
    assert best_metric_value("caption/CIDEr", results) == 1.25
    assert best_metric_value("caption/CIDEr+caption/Bleu_4", results) == 1.625
    assert best_metric_value("caption/CIDEr+caption/SPICE", results) is None  # not all reported
    assert best_metric_value("", results) is None


def test_capfilt_config_reads_a_folder_of_web_shards(layouts, tmp_path):
    """configs/capfilt.py over data/web.md's CC3M folder (img2dataset shards, read in place), with
    the pretraining export as captioner and filter: every sample decided, the kept captions written
    as records over the shards' images that a pretraining mixture reads."""
    from blip_jax.capfilt import cli
    from blip_jax.data import pipelines as pl

    run = layouts["run"]
    folder = os.path.join(os.path.dirname(layouts["emb"]), "pretrain", "cc3m")
    code = cli.main(["--config", os.path.join(ROOT, "configs", f"capfilt.py:{folder}"), "--workdir", str(tmp_path),
                     f"--config.captioner={run}/export/captioning", f"--config.filter={run}/export/retrieval",
                     f"--config.tokenizer.path={layouts['emb']}/vocab.txt", "--config.image_size=32",
                     "--config.batch_size=8", "--config.chunk_batches=2", "--config.num_threads=2",
                     "--config.sampling.max_length=12", "--config.sampling.min_length=3",
                     "--config.filtering.threshold=0.3"])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["records"] == report["records_processed"] == 48 and report["source_skips"] == {}
    assert report["web"]["texts"] == report["synthetic"]["texts"] == 48
    spec = json.loads((tmp_path / "bootstrapped.spec.json").read_text())
    assert spec["format"] == "capfilt_captions" and spec["base"]["paths"] == [os.path.join(folder, "*.tar")]
    assert len(pl.open_source(pl.DatasetSpec.from_any(spec))[0]) == report["texts_kept"]


@pytest.mark.parametrize("variant", ["retrieval_coco", "retrieval_flickr", "caption_coco", "vqa"])
def test_eval_config_on_each_layout(layouts, tmp_path, variant):
    """configs/eval.py (the paper's protocols) over each data layout, with the pretraining export as
    the checkpoint: the metrics the protocol reports, in range."""
    from blip_jax.evaluation import cli

    kind = variant.split("_")[0]
    root = {"vqa": layouts["vqa"], "retrieval_flickr": str(tmp_path / "flickr30k")}.get(variant, layouts["coco"])
    if variant == "retrieval_flickr":  # BLIP's flickr30k_{split}.json have the COCO Karpathy layout
        os.makedirs(os.path.join(root, "annotations"))
        os.symlink(os.path.join(layouts["coco"], "images"), os.path.join(root, "images"))
        shutil.copy(os.path.join(layouts["coco"], "annotations", "coco_karpathy_test.json"),
                    os.path.join(root, "annotations", "flickr30k_test.json"))
    code = cli.main(["--config", os.path.join(ROOT, "configs", f"eval.py:{variant},{root}"),
                     "--checkpoint", os.path.join(layouts["run"], "export"), "--workdir", str(tmp_path / "eval"),
                     f"--config.tokenizer.path={layouts['emb']}/vocab.txt", f"--config.evals.{kind}.image_size=32"])
    assert code == 0
    metrics = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    expected = {"retrieval": ("txt_r1", "img_r10", "r_mean"), "caption": ("Bleu_4", "CIDEr", "METEOR"),
                "vqa": ("accuracy",)}[kind]
    for name in expected:
        assert 0.0 <= metrics[f"{kind}/{name}"] <= 100.0
    if kind == "retrieval":
        assert metrics["retrieval/img_r10"] == 100.0  # 4 test images: every image is in the top 10
