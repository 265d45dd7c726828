"""End-to-end `blip-jax train` on the embedded dataset: resume after SIGTERM and SIGKILL gives the
same per-step losses as an uninterrupted run (data order included), and the HF export loads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from blip_jax.train.loop import history_from_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "pretrain_tiny.py") + ":smoke"
KEYS = ("loss_ita", "loss_itm", "loss_lm", "grad_norm")


def _cmd(workdir):
    return [sys.executable, "-m", "blip_jax.cli", "train", "--config", CONFIG, "--workdir", str(workdir),
            "--config.data.num_threads=2"]


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


def _run(workdir, timeout=300):
    out = subprocess.run(_cmd(workdir), env=_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def _run_until(workdir, step: int, sig: int, timeout=300) -> int:
    """Start a run, send ``sig`` once metrics.jsonl holds ``step``; returns the exit code."""
    proc = subprocess.Popen(_cmd(workdir), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if os.path.exists(path) and max(history_from_jsonl(path), default=0) >= step:
                proc.send_signal(sig)
                break
            if proc.poll() is not None:
                raise AssertionError(f"run ended before step {step}: {proc.stdout.read().decode()[-3000:]}")
            time.sleep(0.05)
        return proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    out = _run(workdir)
    return workdir, out


def test_uninterrupted_run_logs_every_step_and_exports(reference):
    workdir, out = reference
    hist = history_from_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert sorted(hist) == list(range(1, 9))
    for rec in hist.values():
        assert all(np.isfinite(rec[k]) for k in KEYS)
        assert rec["data/skipped/total"] == 0
        assert rec["images_per_s"] > 0 and rec["mfu"] > 0
    assert "loss_ita" in out.stdout and "change" in out.stdout  # the loss table
    assert os.path.exists(os.path.join(workdir, "tensorboard"))
    from blip_jax.models.blip import BlipForConditionalGeneration, BlipForImageTextRetrieval

    retrieval = BlipForImageTextRetrieval.from_pretrained(os.path.join(workdir, "export", "retrieval"))
    captioner = BlipForConditionalGeneration.from_pretrained(os.path.join(workdir, "export", "captioning"))
    assert retrieval.config.vision_config.image_size == 32
    assert captioner.text_decoder.bert.embeddings.word_embeddings.embedding.shape[0] == \
        retrieval.config.text_config.vocab_size


def test_sigterm_then_sigkill_then_resume_matches_uninterrupted(reference, tmp_path):
    ref_dir, _ = reference
    want = history_from_jsonl(os.path.join(ref_dir, "metrics.jsonl"))
    workdir = tmp_path / "interrupted"
    # SIGTERM: the loop finishes its step, saves it and exits 75 (EXIT_PREEMPTED: rerun to resume).
    assert _run_until(workdir, 3, signal.SIGTERM) == 75
    from blip_jax.train.checkpointing import Checkpointer

    stopped_at = Checkpointer(workdir).latest_step()
    assert stopped_at is not None and stopped_at >= 3
    # SIGKILL after more steps: no chance to save; the rerun resumes from the last interval save.
    assert _run_until(workdir, stopped_at + 2, signal.SIGKILL) == -signal.SIGKILL
    _run(workdir)
    got = history_from_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert sorted(got) == sorted(want)
    for step in want:
        for k in KEYS:
            np.testing.assert_allclose(got[step][k], want[step][k], rtol=1e-5, atol=1e-6, err_msg=f"step {step} {k}")


def test_resume_with_another_config_warns_or_stops_clearly(reference, tmp_path):
    """A changed batch size resumes with a warning naming the change; a changed model stops with
    exit code 2 and the changed fields, not orbax's tree dump."""
    import shutil

    workdir = tmp_path / "changed"
    shutil.copytree(reference[0], workdir)
    out = subprocess.run(_cmd(workdir) + ["--config.total_steps=9", "--config.data.batch_size=4"], env=_env(),
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "differs from the checkpoint's: data.batch_size: 8 -> 4; total_steps: 8 -> 9" in out.stderr
    assert max(history_from_jsonl(os.path.join(workdir, "metrics.jsonl"))) == 9
    out = subprocess.run(_cmd(workdir) + ["--config.total_steps=10", "--config.model.text.num_hidden_layers=2"],
                         env=_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "model.text.num_hidden_layers: 1 -> 2" in out.stderr and "start a new --workdir" in out.stderr
    assert "Traceback" not in out.stderr


def test_streamed_web_shards_train_by_epochs(tmp_path):
    """The paper configs' shape: web data streamed from img2dataset shards and a length in epochs
    (no total_steps). An epoch is the mixture once: 96 web samples (counted from the shards'
    stats files) + 32 COCO entries at batch 8 = 16 steps."""
    cmd = [sys.executable, "-m", "blip_jax.cli", "train", "--config", CONFIG + ",shards", "--workdir", str(tmp_path),
           "--config.data.num_threads=2", "--config.total_steps=0", "--config.num_epochs=1"]
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    hist = history_from_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
    assert sorted(hist) == list(range(1, 17)) and all(np.isfinite(h["loss_ita"]) for h in hist.values())
    assert not os.path.exists(os.path.join(tmp_path, "tar_index"))  # counted from the stats files, no scan


def test_logged_metrics_are_means_over_the_logging_window(reference, tmp_path):
    """Logging every 3 steps logs the mean of the 3 steps' losses (the last window: 2 steps); the
    schedule's lr and the temperature are the logging step's own."""
    ref_dir, _ = reference
    per_step = history_from_jsonl(os.path.join(ref_dir, "metrics.jsonl"))
    workdir = tmp_path / "windowed"
    out = subprocess.run(_cmd(workdir) + ["--config.log_every_steps=3"], env=_env(), capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    got = history_from_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert sorted(got) == [3, 6, 8]
    for step, window in ((3, (1, 2, 3)), (6, (4, 5, 6)), (8, (7, 8))):
        for k in KEYS + ("itm_acc", "itm_pos_acc", "itm_neg_acc"):
            want = np.mean([per_step[s][k] for s in window])
            np.testing.assert_allclose(got[step][k], want, rtol=1e-5, atol=1e-6, err_msg=f"step {step} {k}")
        for k in ("lr", "temp"):
            np.testing.assert_allclose(got[step][k], per_step[step][k], rtol=1e-6, err_msg=f"step {step} {k}")
    for rec in per_step.values():  # one positive and two negatives (all valid here) per image
        assert rec["itm_acc"] == pytest.approx((rec["itm_pos_acc"] + 2 * rec["itm_neg_acc"]) / 3, abs=1e-6)
    # the losses of single steps differ, so the means are not the last step's values by accident
    assert abs(got[3]["loss_lm"] - per_step[3]["loss_lm"]) > 1e-4


@pytest.mark.parametrize("when", ["tokenizer", "model"])
def test_sigterm_during_start_up_stops_cleanly(tmp_path, monkeypatch, capsys, when):
    """The handler goes in right after jax.distributed: a SIGTERM while the data is prepared stops
    before the model is built, without a checkpoint; one while the model is built stops at the
    first step boundary with a checkpoint. Both exit 75, and the rerun resumes / starts."""
    from blip_jax import cli
    from blip_jax.train import loop, tasks
    from blip_jax.train.checkpointing import Checkpointer
    from blip_jax.train.preemption import EXIT_PREEMPTED

    module, name = (loop, "load_tokenizer") if when == "tokenizer" else (tasks, "build_model")
    original = getattr(module, name)

    def signalled(*a, **k):
        signal.raise_signal(signal.SIGTERM)
        return original(*a, **k)

    monkeypatch.setattr(module, name, signalled)
    before = signal.getsignal(signal.SIGTERM)
    argv = ["train", "--config", CONFIG, "--workdir", str(tmp_path), "--config.data.num_threads=2",
            "--config.export_hf=False"]
    assert cli.main(argv) == EXIT_PREEMPTED == 75
    assert "stopped early at step" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is uninstalled
    latest = Checkpointer(tmp_path).latest_step()
    if when == "tokenizer":
        assert latest is None and not os.path.exists(tmp_path / "metrics.jsonl")
    else:
        assert latest == 1 and sorted(history_from_jsonl(os.path.join(tmp_path, "metrics.jsonl"))) == [1]
