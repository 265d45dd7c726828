"""The training loop's guards and bookkeeping, in-process on the smoke config with a stand-in for
the evaluators (the loop's own logic is under test, not the evaluations): no evaluation or best
checkpoint of a diverged model, train-step timing without eval/save time, and data/skipped counts
summed over processes."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smoke_config(**overrides):
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    try:
        from pretrain_tiny import get_config
    finally:
        sys.path.pop(0)
    cfg = get_config("smoke")
    cfg.data.num_threads = 2
    cfg.export_hf = False
    for k, v in overrides.items():
        node = cfg
        *parents, last = k.split(".")
        for p in parents:
            node = node[p]
        node[last] = v
    return cfg


@pytest.fixture
def fake_evals(monkeypatch):
    """run_evals replaced by one that records its steps, sleeps `sleep` seconds and returns a score."""
    from blip_jax.evaluation import cli as evcli

    calls = {"steps": [], "sleep": 0.0}

    def run_evals(config_evals, models, tokenizer, mesh, workdir, *, step=None, data_root=None, names=None):
        calls["steps"].append(step)
        time.sleep(calls["sleep"])
        return {"fake/score": 50.0 + step, "fake/seconds": calls["sleep"]}

    monkeypatch.setattr(evcli, "run_evals", run_evals)
    return calls


def test_diverged_model_is_not_evaluated_nor_saved_as_best(tmp_path, fake_evals):
    """lr 1e30: the parameters are inf after step 1 and the losses NaN from step 2. Logging every 4
    steps, evaluating every 3: step 3 is an eval step but not a log step. The loop must stop there
    with the divergence error, before the evaluation and save_best (which used to keep a best
    checkpoint whose 74 parameter leaves were all non-finite)."""
    from blip_jax.train.loop import TrainingDiverged, train

    cfg = _smoke_config(**{"optimizer.lr": 1e30, "total_steps": 8, "log_every_steps": 4,
                           "checkpoint.every_steps": 100, "best_metric": "fake/score"})
    cfg.evals.fake = dict(type="retrieval", every_n_steps=3)
    with pytest.raises(TrainingDiverged, match=r"^step 3: non-finite metrics") as err:
        train(cfg, str(tmp_path))
    assert "loss" in str(err.value)
    assert fake_evals["steps"] == []  # never evaluated
    best = tmp_path / "checkpoints_best"
    assert not best.exists() or not any(p.is_file() for p in best.rglob("*"))
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_step_time_excludes_evals_and_saves(tmp_path, fake_evals):
    """Log every 2 steps, a 1.5 s evaluation at steps 2, 4 and 6 (just after their logs, so inside the
    next windows) and a checkpoint save every 2 steps: step_time_s must not carry the 0.75 s per
    step that an eval would add to a 2-step window; the pause is logged as paused_s instead."""
    from blip_jax.train.loop import train

    fake_evals["sleep"] = 1.5
    cfg = _smoke_config(**{"total_steps": 8, "log_every_steps": 2, "checkpoint.every_steps": 2,
                           "best_metric": "fake/score"})
    cfg.evals.fake = dict(type="retrieval", every_n_steps=2)
    t0 = time.perf_counter()
    res = train(cfg, str(tmp_path))
    wall = time.perf_counter() - t0
    assert fake_evals["steps"] == [2, 4, 6, 8]
    logs = {h["step"]: h for h in res.history if "step_time_s" in h}
    assert sorted(logs) == [2, 4, 6, 8]
    for step in (4, 6, 8):  # windows that hold the previous log step's eval and save
        assert logs[step]["paused_s"] >= 1.5, logs[step]
        assert logs[step]["step_time_s"] < 0.75, logs[step]  # 1.5 s of eval over 2 steps would be >= 0.75
        assert logs[step]["images_per_s"] == pytest.approx(cfg.data.batch_size / logs[step]["step_time_s"])
    assert logs[2]["paused_s"] < 1.5  # the first window: nothing evaluated yet
    # the time left for steps is the run's, less the four pauses
    assert sum(2 * h["step_time_s"] for h in logs.values()) < wall - 4 * 1.5
    evals = [h for h in res.history if "eval/fake/seconds" in h]
    assert [h["eval/fake/seconds"] for h in evals] == [1.5] * 4  # eval time logged on its own
    assert (tmp_path / "checkpoints_best" / "fake" / "score" / "8").exists()  # the best (50 + 8) is kept


def test_step_timer_subtracts_pauses():
    from blip_jax.train.loop import StepTimer

    now = [100.0]
    timer = StepTimer(10, clock=lambda: now[0])
    now[0] += 4.0  # 4 s of steps 11-14
    with timer.paused():
        now[0] += 30.0  # an eval
    now[0] += 2.0  # steps 15, 16
    assert timer.window(16) == (pytest.approx(1.0), pytest.approx(30.0))
    now[0] += 1.5
    assert timer.window(17) == (pytest.approx(1.5), 0.0)  # the pause belongs to its window only


class _Counting:
    def __init__(self, counts):
        self.skip_counts = counts


def test_skip_counts_summed_over_processes():
    from blip_jax.data.records import SKIP_REASONS
    from blip_jax.train.loop import combine_skip_counts, global_data_metrics

    a, b = SKIP_REASONS[0], SKIP_REASONS[1]
    p0 = {a: 2, "dropped_caption": 5}
    p1 = {a: 1, b: 4}

    def vec(c):
        return np.array([c.get(r, 0) for r in SKIP_REASONS], np.int32)

    assert combine_skip_counts(np.stack([vec(p0), vec(p1)])) == {a: 3, b: 4, "dropped_caption": 5}

    def gather(v):  # what process_allgather returns on process 0 of two: one row per process
        np.testing.assert_array_equal(v, vec(p0))
        return np.stack([v, vec(p1)])

    got = global_data_metrics(_Counting(p0), gather=gather)
    assert got == {f"data/skipped/{a}": 3, f"data/skipped/{b}": 4, "data/skipped/dropped_caption": 5,
                   "data/skipped/total": 7}  # dropped captions are parts of kept records, not skips
    # One process: its own counts, as data_metrics gives them.
    from blip_jax.data.pipelines import data_metrics

    assert global_data_metrics(_Counting(p0)) == data_metrics(p0)
    assert global_data_metrics(_Counting({})) == {"data/skipped/total": 0}


_WORKER = """
import json
import jax
from blip_jax.data.records import SKIP_REASONS
from blip_jax.train.distributed import maybe_initialize_distributed
from blip_jax.train.loop import global_data_metrics

class It:
    pass

maybe_initialize_distributed(initialization_timeout=60)
it = It()
pid = jax.process_index()
it.skip_counts = {SKIP_REASONS[0]: 2, "dropped_caption": 5} if pid == 0 else {SKIP_REASONS[0]: 1, SKIP_REASONS[1]: 4}
print("RESULT " + json.dumps(global_data_metrics(it)), flush=True)
"""


def test_skip_counts_summed_over_two_real_processes():
    """Two jax.distributed processes on localhost (CPU, gloo), each with its own iterator counts:
    both get the global sums (every process reaches the log step; only the primary writes)."""
    from blip_jax.data.records import SKIP_REASONS
    from tests.test_distributed import _tagged_json, run_two_processes

    outputs = run_two_processes(_WORKER, cwd=ROOT)
    a, b = SKIP_REASONS[0], SKIP_REASONS[1]
    want = {f"data/skipped/{a}": 3, f"data/skipped/{b}": 4, "data/skipped/dropped_caption": 5,
            "data/skipped/total": 7}
    for rc, out, err in outputs:
        assert rc == 0, out[-2000:] + err[-4000:]
        assert _tagged_json(out, "RESULT") == want
