"""`blip-jax pipeline` with configs/pipeline_tiny.py:smoke: every stage of the recipe runs
(pretrain, two fine-tunes, CapFilt, pretraining on its output, two evaluations), the bootstrapped
stage really trains on CapFilt's output, a rerun skips finished stages, and a finished stage whose
command line changed stops the pipeline."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from blip_jax.cli import main as blip_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs/pipeline_tiny.py")
STAGES = ("pretrain", "caption", "retrieval", "capfilt", "bootstrapped", "eval_pretrain", "eval_bootstrapped")


@pytest.mark.skipif(shutil.which("java") is None, reason="the caption evaluations need Java")
def test_smoke_pipeline_runs_every_stage_and_resumes(tmp_path, capsys):
    work = tmp_path / "pipeline"
    assert blip_jax(["pipeline", "--config", f"{CONFIG}:smoke", "--workdir", str(work)]) == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        done = json.loads((work / stage / "STAGE_DONE").read_text())
        assert done["argv"][0] in ("train", "capfilt", "eval") and done["argv"][-1] == str(work / stage)
    assert "eval_pretrain" in out and "eval_bootstrapped" in out and "CapFilt (capfilt)" in out
    # The bootstrapped stage trained on exactly what CapFilt kept (its config names that file).
    report = json.loads((work / "capfilt" / "report.json").read_text())
    boot = json.loads((work / "capfilt" / "bootstrapped.json").read_text())
    assert len(boot) == report["texts_kept"] > 0
    ckpt = max((d for d in (work / "bootstrapped" / "checkpoints").iterdir() if d.name.isdigit()),
               key=lambda d: int(d.name))  # the final step; its saved config:
    datasets = json.loads((ckpt / "config" / "metadata").read_text())["data"]["datasets"]
    assert datasets[0]["name"] == "capfilt" and datasets[0]["paths"] == [str(work / "capfilt" / "bootstrapped.json")]
    assert datasets[1] == "coco"
    for stage in ("eval_pretrain", "eval_bootstrapped"):
        metrics = json.loads((work / stage / "eval_metrics.json").read_text())
        assert 0 <= metrics["retrieval/r_mean"] <= 100 and metrics["caption/num_images"] > 0

    # A rerun skips every finished stage; a changed stage command stops with exit code 2.
    assert blip_jax(["pipeline", "--config", f"{CONFIG}:smoke", "--workdir", str(work)]) == 0
    assert "stage seconds" not in capsys.readouterr().out  # nothing ran
    assert blip_jax(["pipeline", "--config", f"{CONFIG}:smoke,threshold=0.3", "--workdir", str(work)]) == 2
    err = capsys.readouterr().err
    assert "stage 'capfilt'" in err and "--config.filtering.threshold=0.3" in err


def test_a_stage_stopped_by_sigterm_is_not_marked_done(tmp_path, monkeypatch, capsys):
    """A train stage that saves and exits 75 (EXIT_PREEMPTED) on SIGTERM must run again on the
    rerun, and the pipeline exits 75 too (its own PreemptionHandler, around the stage's, hears the
    signal; on a host that got none the stage's exit code says it all)."""
    import signal

    import ml_collections

    from blip_jax import cli, pipeline
    from blip_jax.train.preemption import EXIT_PREEMPTED, PreemptionHandler

    ran = []

    def fake_blip_jax(argv, interrupt="", signalled=True):
        name = os.path.basename(argv[-1])
        ran.append(name)
        os.makedirs(argv[-1], exist_ok=True)
        if name == interrupt:
            if signalled:
                with PreemptionHandler():  # as the train loop does
                    signal.raise_signal(signal.SIGTERM)
            return EXIT_PREEMPTED
        return 0

    cfg = ml_collections.ConfigDict(dict(stages=[dict(name=n, command="train", args=["--config", "x.py"])
                                                 for n in ("a", "b", "c")]))
    monkeypatch.setattr(cli, "main", lambda argv: fake_blip_jax(argv, interrupt="b"))
    assert pipeline.run_pipeline(cfg, str(tmp_path)) == EXIT_PREEMPTED == 75
    assert ran == ["a", "b"]
    assert (tmp_path / "a" / pipeline.DONE).exists() and not (tmp_path / "b" / pipeline.DONE).exists()
    assert "stopped (received SIGTERM) during stage 'b'" in capsys.readouterr().err
    # A host whose stage stopped through another host's signal: exit code 75, no signal here.
    monkeypatch.setattr(cli, "main", lambda argv: fake_blip_jax(argv, interrupt="b", signalled=False))
    assert pipeline.run_pipeline(cfg, str(tmp_path)) == 75
    assert ran == ["a", "b", "b"] and not (tmp_path / "b" / pipeline.DONE).exists()
    assert "stopped (stage stopped early) during stage 'b'" in capsys.readouterr().err
    monkeypatch.setattr(cli, "main", lambda argv: fake_blip_jax(argv))
    assert pipeline.run_pipeline(cfg, str(tmp_path)) == 0
    assert ran == ["a", "b", "b", "b", "c"] and all((tmp_path / n / pipeline.DONE).exists() for n in "abc")


def test_a_signal_during_a_stage_that_finishes_stops_after_it(tmp_path, monkeypatch, capsys):
    """An eval stage has no handler of its own: it finishes (exit 0, marked done) and the pipeline
    stops with 75 before the next stage."""
    import signal

    import ml_collections

    from blip_jax import cli, pipeline

    ran = []

    def fake_blip_jax(argv):
        ran.append(os.path.basename(argv[-1]))
        os.makedirs(argv[-1], exist_ok=True)
        if ran[-1] == "a":
            signal.raise_signal(signal.SIGTERM)  # heard by the pipeline's handler only
        return 0

    cfg = ml_collections.ConfigDict(dict(stages=[dict(name=n, command="eval", args=["--config", "x.py"])
                                                 for n in ("a", "b")]))
    monkeypatch.setattr(cli, "main", fake_blip_jax)
    assert pipeline.run_pipeline(cfg, str(tmp_path)) == 75
    assert ran == ["a"] and (tmp_path / "a" / pipeline.DONE).exists()
    assert "stopped (received SIGTERM) after stage 'a'" in capsys.readouterr().err
