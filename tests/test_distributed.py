"""Cluster detection, preemption flag, and a real 2-process jax.distributed run on localhost (CPU, gloo)."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from blip_jax.train import distributed
from blip_jax.train.preemption import PreemptionHandler

_CLUSTER_VARS = (
    "BLIP_JAX_DISTRIBUTED",
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_STEP_TASKS_PER_NODE",
    "SLURM_TASKS_PER_NODE",
    "SLURM_NTASKS_PER_NODE",
    "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
    "MEGASCALE_COORDINATOR_ADDRESS",
)


@pytest.fixture
def clean_env(monkeypatch):
    for var in _CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_detect_cluster(clean_env):
    assert distributed.detect_cluster() is None
    assert distributed.maybe_initialize_distributed() is False  # nothing detected: no-op
    clean_env.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
    clean_env.setenv("JAX_NUM_PROCESSES", "1")
    clean_env.setenv("JAX_PROCESS_ID", "0")
    assert distributed.detect_cluster() is None  # a single process needs no runtime
    clean_env.setenv("JAX_NUM_PROCESSES", "4")
    assert distributed.detect_cluster() == "env"
    clean_env.setenv("BLIP_JAX_DISTRIBUTED", "0")
    assert distributed.detect_cluster() is None
    for var in _CLUSTER_VARS:
        clean_env.delenv(var, raising=False)
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}
    for k, v in {**slurm, "SLURM_LOCALID": "0"}.items():
        clean_env.setenv(k, v)
    assert distributed.detect_cluster() is None  # sbatch shell / single task
    clean_env.setenv("SLURM_NTASKS", "16")
    assert distributed.detect_cluster() == "slurm"
    for var in _CLUSTER_VARS:
        clean_env.delenv(var, raising=False)
    clean_env.setenv("TPU_WORKER_HOSTNAMES", "t1k-0")
    assert distributed.detect_cluster() is None  # one TPU VM worker
    clean_env.setenv("TPU_WORKER_HOSTNAMES", "t1k-0,t1k-1,t1k-2,t1k-3")
    assert distributed.detect_cluster() == "tpu"
    clean_env.delenv("TPU_WORKER_HOSTNAMES")
    clean_env.setenv("BLIP_JAX_DISTRIBUTED", "1")
    assert distributed.detect_cluster() == "tpu"


@pytest.mark.parametrize(
    "spec, node, expected",
    [("8(x2)", "1", 8), ("2(x3),1", "3", 1), ("2(x3),1", "0", 2), ("4", "0", 4), ("bogus", "0", None)],
)
def test_slurm_tasks_per_node(clean_env, spec, node, expected):
    clean_env.setenv("SLURM_STEP_TASKS_PER_NODE", spec)
    clean_env.setenv("SLURM_NODEID", node)
    assert distributed._slurm_tasks_on_this_node() == expected


def test_local_gpu_ids_from_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert distributed._local_gpu_ids() == [0, 1, 2, 3]  # CUDA renumbers visible devices from 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert distributed._local_gpu_ids() is None


def test_sigterm_sets_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionHandler() as handler:
        assert not handler.should_stop(0) and handler.reason is None
        signal.raise_signal(signal.SIGTERM)
        assert handler.stop_requested
        assert handler.should_stop(1) and handler.reason == "received SIGTERM"
        assert handler.should_stop(2)  # stays set
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_outer_handler_hears_the_inner_ones_signal():
    """`blip-jax pipeline` holds a handler around a train stage's own: both must see a SIGTERM."""
    with PreemptionHandler() as outer:
        with PreemptionHandler() as inner:
            signal.raise_signal(signal.SIGTERM)
            assert inner.stop_requested
        assert outer.stop_requested and outer.reason == "received SIGTERM"


def test_second_sigint_interrupts_at_once():
    with PreemptionHandler() as handler:
        signal.raise_signal(signal.SIGINT)
        assert handler.should_stop() and handler.reason == "received SIGINT"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


_WORKER = textwrap.dedent(
    """
    import json, signal, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.experimental import multihost_utils
    from blip_jax.train.distributed import maybe_initialize_distributed
    from blip_jax.train.preemption import PreemptionHandler

    multi = maybe_initialize_distributed(initialization_timeout=60)
    again = maybe_initialize_distributed()  # idempotent
    pid = jax.process_index()
    gathered = multihost_utils.process_allgather(np.array([10 * pid + 1], np.int32), tiled=True)
    # A jitted reduction over an array whose shards live in different processes.
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    x = jax.make_array_from_process_local_data(
        jax.NamedSharding(mesh, jax.P("data")), np.array([pid + 1.0, 10.0 * (pid + 1)], np.float32)
    )
    total = jax.jit(jnp.sum, out_shardings=jax.NamedSharding(mesh, jax.P()))(x)
    outer = PreemptionHandler().install()  # `blip-jax pipeline`'s, around a train stage's
    handler = PreemptionHandler().install()
    before = handler.should_stop(0)
    if pid == 1:
        signal.raise_signal(signal.SIGTERM)  # only process 1 is preempted ...
    after = handler.should_stop(1)  # ... and both agree to stop
    handler.uninstall()
    outer_heard = outer.stop_requested  # the agreed stop reaches the outer handler on process 0 too
    outer.uninstall()
    # The batch must split into one slice per process: a tensor axis across the processes (dp=1)
    # would give both replicas of the batch different rows.
    from blip_jax.train import mesh as mesh_lib
    try:
        mesh_lib.check_batch_split(mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": -1}), 4)
        bad_mesh_error = ""
    except ValueError as e:
        bad_mesh_error = str(e)
    mesh_lib.check_batch_split(mesh_lib.make_mesh({"data": -1}), 4)  # one row block per process: fine
    # A checkpoint written by both processes: shards of `x` and one iterator file per process.
    import grain
    from blip_jax.train.checkpointing import Checkpointer
    it = iter(grain.MapDataset.range(10 * pid, 10 * pid + 10).to_iter_dataset())
    next(it)
    with Checkpointer(sys.argv[1], save_interval_steps=1) as ckpt:
        ckpt.save(1, {"x": x}, data_iterator=it)
    next(it)
    it2 = iter(grain.MapDataset.range(10 * pid, 10 * pid + 10).to_iter_dataset())
    with Checkpointer(sys.argv[1]) as ckpt:
        restored, _ = ckpt.restore_latest({"x": x}, data_iterator=it2)
    gather = lambda a: np.asarray(multihost_utils.process_allgather(a, tiled=True))
    ckpt_ok = bool((gather(restored["x"]) == gather(x)).all()) and restored["x"].sharding == x.sharding
    print("RESULT " + json.dumps({
        "ckpt_ok": ckpt_ok, "next_after_restore": int(next(it2)),
        "multi": multi, "again": again, "pid": pid, "count": jax.process_count(),
        "devices": jax.device_count(), "gathered": gathered.tolist(), "total": float(total),
        "before": before, "after": after, "reason": handler.reason, "outer_heard": outer_heard,
        "bad_mesh_error": bad_mesh_error,
    }), flush=True)
    """
)


def _tagged_json(text: str, tag: str) -> dict:
    """The JSON object printed after ``tag``: Gloo's C++ logging writes to the same stdout without
    a newline of its own ("...}[Gloo] Rank 0 is connected to 1 peer ranks"), so read the object
    itself, not the rest of the line."""
    start = text.index(tag + " ") + len(tag) + 1
    obj, _ = json.JSONDecoder().raw_decode(text, start)
    return obj


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(code: str, *args: str, cwd: str | None = None, timeout: float = 60) -> list[tuple]:
    """`python -c code *args` as processes 0 and 1 of a 2-process jax.distributed job on localhost
    (CPU, gloo) -> [(returncode, stdout, stderr)] for each; skips the test when this jaxlib has no
    gloo CPU collectives."""
    port = _free_port()
    procs = []
    for pid in range(2):
        env = {k: v for k, v in os.environ.items() if k not in _CLUSTER_VARS and k != "XLA_FLAGS"}
        env.update(JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=cwd))
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            outputs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    errors = " ".join(err for _, _, err in outputs).lower()
    if any(rc != 0 for rc, _, _ in outputs) and "gloo" in errors and "not" in errors:
        pytest.skip(f"gloo CPU collectives unavailable in this jaxlib: {errors[-500:]}")
    return outputs


def test_two_processes_on_localhost_agree(tmp_path):
    outputs = run_two_processes(_WORKER, str(tmp_path))
    results = []
    for rc, out, err in outputs:
        assert rc == 0, out[-2000:] + err[-4000:]
        results.append(_tagged_json(out, "RESULT"))
    assert sorted(r["pid"] for r in results) == [0, 1]
    for r in results:
        assert r["multi"] and r["again"] and r["count"] == 2 and r["devices"] == 2
        assert r["gathered"] == [1, 11]
        assert r["total"] == 1.0 + 10.0 + 2.0 + 20.0
        assert r["before"] is False and r["after"] is True and r["outer_heard"] is True
        assert "do not split the batch of 4 into one distinct slice per process" in r["bad_mesh_error"]
        assert r["ckpt_ok"] and r["next_after_restore"] == 10 * r["pid"] + 1
    reasons = {r["pid"]: r["reason"] for r in results}
    assert reasons[1] == "received SIGTERM"
    assert reasons[0] == "another host stopped (processes [1])"
    assert sorted(f for f in os.listdir(tmp_path / "checkpoints" / "1" / "data") if f.endswith(".json")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]


_FAKE_BLIP_JAX = """#!{python}
# Stands in for `blip-jax`: checks the arguments the launcher passes, joins the job, all-gathers.
import json, sys
import jax, numpy as np
from jax.experimental import multihost_utils
from blip_jax.train.distributed import maybe_initialize_distributed

assert sys.argv[1:] == ["train", "--config", "c.py", "--workdir", "w"], sys.argv
maybe_initialize_distributed(initialization_timeout=60)
ids = multihost_utils.process_allgather(np.array([jax.process_index()]), tiled=True)
print("FAKE " + json.dumps({{"pid": jax.process_index(), "ids": ids.tolist(), "local": jax.local_device_count()}}))
"""


def test_local_multiprocess_launcher(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    fake = tmp_path / "blip-jax"
    fake.write_text(_FAKE_BLIP_JAX.format(python=sys.executable))
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in _CLUSTER_VARS and k != "XLA_FLAGS"}
    env["BLIP_JAX"] = str(fake)
    cmd = [os.path.join(root, "launch", "local_multiprocess.sh"), "-n", "2", "--cpu", "--cpu-devices", "2"]
    cmd += ["--log-dir", str(tmp_path / "logs"), "--", "--config", "c.py", "--workdir", "w"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    # Process 0 prints to the terminal; process 1 only to its log file.
    assert _tagged_json(out.stdout, "FAKE") == {"pid": 0, "ids": [0, 1], "local": 2}
    log1 = (tmp_path / "logs" / "process_1.log").read_text()
    assert _tagged_json(log1, "FAKE") == {"pid": 1, "ids": [0, 1], "local": 2}


class _Dev:
    def __init__(self, process_index):
        self.process_index = process_index


def test_batch_rows_by_process_and_split_check():
    from blip_jax.train import mesh as mesh_lib

    # 2 processes x 2 devices, batch 8 over all 4 devices: rows 0-3 on process 0, 4-7 on 1.
    good = {_Dev(p): (slice(2 * i, 2 * i + 2),) for i, p in enumerate([0, 0, 1, 1])}
    assert mesh_lib.batch_rows_by_process(good, 8) == {0: {(0, 2), (2, 4)}, 1: {(4, 6), (6, 8)}}
    # dp=2 inside each process, the tensor axis across the processes: each holds the whole batch.
    whole = {_Dev(p): (slice(4 * (i % 2), 4 * (i % 2) + 4),) for i, p in enumerate([0, 0, 1, 1])}
    assert mesh_lib.batch_rows_by_process(whole, 8) == {0: {(0, 4), (4, 8)}, 1: {(0, 4), (4, 8)}}

    class FakeSharding:
        def __init__(self, m):
            self.m = m

        def devices_indices_map(self, shape):
            return self.m

    mesh = mesh_lib.make_mesh({"data": -1})
    mesh_lib.check_batch_split(mesh, 8, FakeSharding(good))
    with pytest.raises(ValueError, match="rows per process: {0: \\[\\(0, 4\\), \\(4, 8\\)\\]"):
        mesh_lib.check_batch_split(mesh, 8, FakeSharding(whole))
    # the same slice on both processes (replicated over the processes) is refused too
    same = {_Dev(p): (slice(0, 4),) for p in (0, 1)}
    with pytest.raises(ValueError, match="one distinct slice per process"):
        mesh_lib.check_batch_split(mesh, 8, FakeSharding(same))
    mesh_lib.check_batch_split(mesh, 8)  # one process: nothing to check


def test_agreed_stop_reaches_the_outer_handler(monkeypatch):
    """Another host's SIGTERM, agreed in the inner (train) handler's all-gather, reaches the outer
    (`blip-jax pipeline`) handler on a host that got no signal."""
    from blip_jax.train import preemption

    monkeypatch.setattr(preemption.jax, "process_count", lambda: 2)
    monkeypatch.setattr(preemption.multihost_utils, "process_allgather", lambda x, tiled=False: np.array([0, 1]))
    with PreemptionHandler() as outer, PreemptionHandler(sync_every=10) as inner:
        assert inner.should_stop(5) is False  # not a sync step
        assert not outer.stop_requested
        assert inner.should_stop(10) is True
        assert inner.reason == "another host stopped (processes [1])"
        assert outer.stop_requested and outer.reason == "another host stopped (processes [1])"


def test_multislice_is_refused(clean_env):
    clean_env.setenv("MEGASCALE_COORDINATOR_ADDRESS", "10.0.0.1:8080")
    assert distributed.detect_cluster() == "tpu"
    with pytest.raises(RuntimeError, match="multislice TPU jobs .* not supported"):
        distributed.maybe_initialize_distributed()


_SBATCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch", "slurm.sbatch")


@pytest.mark.parametrize("srun_code, want_rc, want_calls", [
    (75, 0, ["requeue 123"]),  # stopped by SIGTERM with a checkpoint: requeued
    (0, 0, []),  # finished
    (1, 1, []),  # failed: no requeue, the failure shows
])
def test_slurm_sbatch_requeues_when_train_stopped_early(tmp_path, srun_code, want_rc, want_calls):
    from blip_jax.train.preemption import EXIT_PREEMPTED

    assert EXIT_PREEMPTED == 75
    text = open(_SBATCH).read()
    assert "#SBATCH --signal=TERM@" in text and "#SBATCH --requeue" in text  # TERM to the tasks, not B:
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    calls = tmp_path / "scontrol_calls.txt"
    (fakebin / "srun").write_text(f"#!/bin/bash\necho \"fake srun $*\"\nexit {srun_code}\n")
    (fakebin / "scontrol").write_text(f"#!/bin/bash\necho \"$*\" >> {calls}\n")
    for f in ("srun", "scontrol"):
        (fakebin / f).chmod(0o755)
    env = {**os.environ, "PATH": f"{fakebin}:{os.environ['PATH']}", "SLURM_JOB_ID": "123",
           "SLURM_JOB_NAME": "blip", "WORKDIR": str(tmp_path / "wd")}
    out = subprocess.run(["bash", _SBATCH], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == want_rc, out.stdout + out.stderr
    assert "fake srun --kill-on-bad-exit=1" in out.stdout and "blip-jax train --config" in out.stdout
    assert (calls.read_text().splitlines() if calls.exists() else []) == want_calls
