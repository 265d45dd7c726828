"""Fine-tuning through the same `blip-jax train` loop, from a pretraining run's HF exports, with
the end-of-training evaluators: captioning, VQA and retrieval on the embedded dataset (smoke sizes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(config: str, workdir, timeout=420):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-m", "blip_jax.cli", "train", "--config", config, "--workdir", str(workdir)],
                         env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pretrain")
    _train(os.path.join(ROOT, "configs", "pretrain_tiny.py") + ":smoke", workdir)
    for sub in ("retrieval", "captioning", "vqa"):
        assert os.path.exists(os.path.join(workdir, "export", sub, "model.safetensors"))
    return workdir


@pytest.mark.parametrize("task,metric", [("caption", "caption/CIDEr"), ("vqa", "vqa/accuracy"),
                                         ("retrieval", "retrieval/r_mean")])
def test_finetune_task_trains_evaluates_and_exports(pretrained, tmp_path, task, metric):
    workdir = tmp_path / task
    config = os.path.join(ROOT, "configs", "finetune_tiny.py") + f":{task}-smoke,{pretrained}"
    out = _train(config, workdir)
    assert "eval at step 4: " in out.stdout
    with open(workdir / "eval" / f"{task}_metrics_step4.json") as f:
        metrics = json.load(f)
    value = metrics.get(metric.split("/", 1)[1])
    assert value is not None and value >= 0.0
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert any(f"eval/{metric}" in r for r in records)
    assert (workdir / "checkpoints_best").exists()  # best-metric checkpoint kept
    sub = {"caption": "captioning", "vqa": "vqa", "retrieval": "retrieval"}[task]
    assert (workdir / "export" / sub / "model.safetensors").exists()
