"""Multi-host start-up: call ``jax.distributed.initialize()`` when a cluster is detected.

Call :func:`maybe_initialize_distributed` first thing in a job, before anything touches a jax
device (jax refuses to initialise the distributed runtime once a backend exists), and before
installing the preemption handler (jax's own preemption notifier takes SIGTERM when
``initialize`` runs; ``preemption.py`` takes it back afterwards).

Clusters recognised, in this order:

1. ``BLIP_JAX_DISTRIBUTED=0`` in the environment: never initialise (debugging one host of a pod).
2. ``JAX_COORDINATOR_ADDRESS`` (``host:port``), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` all
   set (``launch/local_multiprocess.sh`` and any hand-rolled launcher): initialise with them;
   ``JAX_LOCAL_DEVICE_IDS`` (read by jax itself) picks this process's devices.
3. SLURM with more than one task in the step (``srun``): jax's SLURM detection supplies the
   coordinator (first node), process count and id. jax then gives each process *one* GPU (its
   ``SLURM_LOCALID``); when a node runs a single task we pass all of the node's GPUs instead.
4. Cloud TPU pods (``TPU_WORKER_HOSTNAMES`` or ``TPU_PROCESS_ADDRESSES`` listing several
   workers), or ``BLIP_JAX_DISTRIBUTED=1`` (what the TPU VM recipe sets, since plain TPU VMs
   expose their topology only through the metadata server that jax queries itself):
   ``jax.distributed.initialize()`` with auto-detection.

Multislice (``MEGASCALE_COORDINATOR_ADDRESS``) is refused with a clear error: the mesh
(``mesh.make_mesh``, ``jax.make_mesh``) cannot be built over devices of several slices.

CPU: when the platform is CPU (``JAX_PLATFORMS=cpu``, or ``platform="cpu"``), cross-process
collectives need an implementation; we select gloo (TCP) before initialising, so that a
localhost multi-process run (tests, ``local_multiprocess.sh --cpu``) can psum across processes.
"""

from __future__ import annotations

import logging
import os
import re

import jax

log = logging.getLogger(__name__)

_ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _int_env(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name, "").strip()
    try:
        return int(value)
    except ValueError:
        return default


def detect_cluster() -> str | None:
    """``"env"`` | ``"slurm"`` | ``"tpu"`` for a multi-process job, else None (single process)."""
    force = os.environ.get("BLIP_JAX_DISTRIBUTED", "").strip().lower()
    if force in ("0", "false", "no", "off"):
        return None
    if all(os.environ.get(v) for v in _ENV_VARS):
        return "env" if (_int_env("JAX_NUM_PROCESSES") or 1) > 1 else None
    slurm_keys = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if all(k in os.environ for k in slurm_keys) and (_int_env("SLURM_NTASKS") or 1) > 1:
        return "slurm"
    workers = os.environ.get("TPU_PROCESS_ADDRESSES") or os.environ.get("TPU_WORKER_HOSTNAMES") or ""
    if "," in workers or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    if force in ("1", "true", "yes", "on"):
        return "tpu"  # explicit opt-in: let jax's own detection (TPU metadata server, ...) do the rest
    return None


def _slurm_tasks_on_this_node() -> int | None:
    """Tasks of this job step on this node, from ``SLURM_STEP_TASKS_PER_NODE`` (e.g. ``"8(x2),4"``)."""
    spec = os.environ.get("SLURM_STEP_TASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE")
    node = _int_env("SLURM_NODEID", 0) or 0
    if spec:
        counts: list[int] = []
        for part in spec.split(","):
            m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
            if not m:
                return None
            counts += [int(m.group(1))] * int(m.group(2) or 1)
        return counts[node] if node < len(counts) else None
    return _int_env("SLURM_NTASKS_PER_NODE")


def _local_gpu_ids() -> list[int] | None:
    """Indices of this node's visible NVIDIA GPUs without initialising CUDA (None if unknown)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        n = len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])
        return list(range(n)) if n else None
    try:
        n = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return None
    return list(range(n)) if n else None


def _platform() -> str:
    platforms = os.environ.get("JAX_PLATFORMS") or (jax.config.jax_platforms or "")
    return platforms.split(",")[0].strip().lower()


def maybe_initialize_distributed(*, platform: str | None = None, initialization_timeout: int = 300) -> bool:
    """Initialise jax's distributed runtime if this process is part of a detected cluster.

    Idempotent: a second call (or one after the caller initialised jax.distributed itself) only
    reports the state.

    Args:
        platform: ``"cpu"`` / ``"gpu"`` / ``"tpu"`` if known; default: first of ``JAX_PLATFORMS``.
        initialization_timeout: seconds to wait for all processes to connect.

    Returns:
        True when the job runs multi-process (``jax.process_count() > 1`` after this call).
    """
    if jax.distributed.is_initialized():
        return True
    kind = detect_cluster()
    if kind is None:
        return False
    if os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        raise RuntimeError("multislice TPU jobs (MEGASCALE_COORDINATOR_ADDRESS is set) are not supported: "
                           "blip_jax.train.mesh builds its mesh with jax.make_mesh, which cannot span several "
                           "slices; run on one slice")
    platform = (platform or _platform()).lower()
    if platform == "cpu":
        # Cross-process collectives on the CPU backend need an explicit implementation.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict = {"initialization_timeout": initialization_timeout}
    if kind == "env":
        kwargs.update(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=_int_env("JAX_NUM_PROCESSES"),
            process_id=_int_env("JAX_PROCESS_ID"),
        )
    elif kind == "slurm" and platform != "cpu" and not os.environ.get("JAX_LOCAL_DEVICE_IDS"):
        # jax assumes one GPU per SLURM task; a lone task on a node should drive all of its GPUs.
        if _slurm_tasks_on_this_node() == 1 and (gpus := _local_gpu_ids()):
            kwargs["local_device_ids"] = gpus
    log.info("jax.distributed.initialize (%s cluster): %s", kind, {k: v for k, v in kwargs.items()})
    jax.distributed.initialize(**kwargs)
    log.info(
        "process %d of %d; %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return jax.process_count() > 1


def is_primary() -> bool:
    """True on the process that writes logs, metrics and JSON files (process 0)."""
    return jax.process_index() == 0


__all__ = ["detect_cluster", "is_primary", "maybe_initialize_distributed"]
