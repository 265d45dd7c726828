"""Training metrics: console progress bar, TensorBoard events, ``metrics.jsonl``; peak FLOP/s and MFU.

:class:`MetricWriter` writes the same scalars to three places, on the primary process only:

* the console: a tqdm bar over ``total_steps`` with the key losses and the ETA (on a terminal),
  or one plain line per logged step when stderr is not a terminal (SLURM / nohup logs, where
  carriage-return redraws turn into megabytes of noise);
* TensorBoard event files in ``workdir/tensorboard`` (tensorboardX ``SummaryWriter``);
* ``workdir/metrics.jsonl``: one JSON object per logged step, ``{"step": int, "<name>": float, ...}``.
  A resumed run (``initial_step > 0``) first drops lines with ``step > initial_step`` (logged after
  the checkpoint it resumes from, and about to be logged again), then appends. Non-finite values
  are written as the ``NaN`` / ``Infinity`` literals Python's ``json`` reads back.

The peak FLOP/s table lives here and only here (:data:`PEAK_FLOPS`, :func:`peak_flops_per_device`);
:func:`mfu` divides achieved FLOP/s by it.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# --------------------------------------------------------------------------------------------
# Peak FLOP/s per device (dense, no sparsity), from the vendors' data sheets.
# --------------------------------------------------------------------------------------------
#
# "bf16" also covers fp16. "fp32" is what a float32 matmul actually runs at under JAX's default
# precision: on NVIDIA Ampere/Hopper XLA uses TF32 tensor cores for f32 dots (so the TF32 peak),
# on TPU the MXU runs f32 operands as one bf16 pass (so the bf16 peak). With
# jax_default_matmul_precision="highest" the real ceiling is lower than these numbers. (Checked
# on an H100 SXM, jax 0.11.2: an 8192^3 f32 matmul ran at 385 TFLOP/s by default, i.e. TF32, and
# at 50 TFLOP/s with precision "highest"; bf16 at 686 TFLOP/s, 69 % of the 989 listed.)
# Matched against jax's `device.device_kind` (lower-cased substring), first match wins: more
# specific names come first ("h100 pcie" before "h100", "v5 lite" before "v5").
PEAK_FLOPS: tuple[tuple[tuple[str, ...], dict[str, float]], ...] = (
    (("h100 pcie",), {"bf16": 756e12, "fp32": 378e12}),
    (("h100 nvl",), {"bf16": 835e12, "fp32": 418e12}),
    # H100 SXM ("NVIDIA H100 80GB HBM3"), H200 and GH200 share the SXM compute peak.
    (("h100", "h200", "gh200"), {"bf16": 989e12, "fp32": 494e12}),
    (("a100",), {"bf16": 312e12, "fp32": 156e12}),
    (("tpu v6 lite", "tpu v6e"), {"bf16": 918e12, "fp32": 918e12}),
    (("tpu v5 lite", "tpu v5e", "tpu v5litepod"), {"bf16": 197e12, "fp32": 197e12}),
    (("tpu v5p", "tpu v5"), {"bf16": 459e12, "fp32": 459e12}),
    (("tpu v4",), {"bf16": 275e12, "fp32": 275e12}),
)

_DTYPE_CLASS = {
    "bfloat16": "bf16",
    "bf16": "bf16",
    "float16": "bf16",
    "fp16": "bf16",
    "half": "bf16",
    "float32": "fp32",
    "fp32": "fp32",
    "tf32": "fp32",
    "float": "fp32",
}


def _dtype_class(dtype: Any) -> str | None:
    name = dtype if isinstance(dtype, str) else str(jnp.dtype(dtype))
    return _DTYPE_CLASS.get(name.strip().lower())


def peak_flops_per_device(device_kind: str, dtype: Any = "bfloat16") -> float | None:
    """Dense peak FLOP/s of one device for matmuls in ``dtype``, or None when unknown (CPU, new chips).

    Args:
        device_kind: ``jax.devices()[0].device_kind``, e.g. ``"NVIDIA H100 80GB HBM3"``, ``"TPU v5 lite"``.
        dtype: compute dtype of the matmuls: ``"bfloat16"`` / ``"float16"`` / ``"float32"`` (also a
            numpy/jax dtype). float32 means TF32 on NVIDIA GPUs and one bf16 pass on TPUs (see table).

    Returns:
        FLOP/s (e.g. ``989e12`` for H100 SXM bf16), or None: the caller then measures a matmul
        peak (:func:`measure_matmul_flops`) or reports no MFU.
    """
    kind = device_kind.strip().lower()
    cls = _dtype_class(dtype)
    if cls is None or "cpu" in kind:
        return None
    for patterns, peaks in PEAK_FLOPS:
        if any(p in kind for p in patterns):
            return peaks[cls]
    return None


def mfu(
    flops_per_step: float, step_time_s: float, num_devices: int, device_kind: str, dtype: Any = "bfloat16"
) -> float | None:
    """Model FLOPs utilisation: ``flops_per_step / step_time_s / (num_devices * peak)``.

    Args:
        flops_per_step: analytic FLOPs of one global training step (forward + backward, all devices).
        step_time_s: wall time of one step.
        num_devices: devices the step runs on (``jax.device_count()``).
        device_kind, dtype: see :func:`peak_flops_per_device`.

    Returns:
        A fraction in [0, 1] for realistic inputs, or None when the peak is unknown.
    """
    peak = peak_flops_per_device(device_kind, dtype)
    if peak is None or step_time_s <= 0 or num_devices <= 0:
        return None
    return flops_per_step / step_time_s / (num_devices * peak)


def measure_matmul_flops(dtype: Any = "float32", size: int = 1024, repeats: int = 5, device=None) -> float:
    """Achieved FLOP/s of a jitted ``size x size`` matmul on one device: a stand-in peak for CPUs.

    Returns:
        Best of ``repeats`` timings, as FLOP/s (``2 * size**3 / seconds``).
    """
    device = device or jax.local_devices()[0]
    # Random operands: all-ones / zeros inputs toggle fewer bits and run faster than real data on GPUs.
    a = jax.device_put(jax.random.normal(jax.random.key(0), (size, size), jnp.float32).astype(dtype), device)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()  # compile outside the timing
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------

# Shown in the console (in this order) when present; everything else goes to TB / JSONL only.
DEFAULT_CONSOLE_KEYS = ("loss", "loss_ita", "loss_itm", "loss_lm", "lr", "grad_norm", "images_per_s", "mfu")


def _to_float(value: Any) -> float:
    return float(np.asarray(value).item())


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    a = abs(value)
    return f"{value:.3e}" if a != 0 and (a < 1e-3 or a >= 1e5) else f"{value:.4g}"


def _truncate_jsonl(path: str, max_step: int) -> None:
    """Drop lines with ``step > max_step`` (written after the checkpoint being resumed)."""
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line).get("step", -1) > max_step:
                continue
        except (json.JSONDecodeError, AttributeError):
            continue  # a line cut short by a crash
        keep.append(line if line.endswith("\n") else line + "\n")
    if len(keep) != len(lines):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(tmp, path)  # atomic: a crash here leaves the old or the new file, never half


class MetricWriter:
    """Console + TensorBoard + ``metrics.jsonl`` writer; no-op on non-primary processes.

    Args:
        workdir: run directory; creates ``workdir/tensorboard`` and ``workdir/metrics.jsonl``.
        total_steps: steps of the whole run (progress bar length, ETA).
        is_primary: default ``jax.process_index() == 0``.
        initial_step: step the run (re)starts from: the bar starts there and JSONL lines beyond
            it are dropped.
        console: ``"bar"`` (tqdm), ``"lines"`` (one line per write), ``"none"``, or ``"auto"``
            (bar when stderr is a terminal, else lines).
        console_keys: scalars shown on the console, in order.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        total_steps: int,
        is_primary: bool | None = None,
        *,
        initial_step: int = 0,
        console: str = "auto",
        console_keys: tuple[str, ...] = DEFAULT_CONSOLE_KEYS,
    ):
        self.workdir = os.fspath(workdir)
        self.total_steps = int(total_steps)
        self.is_primary = jax.process_index() == 0 if is_primary is None else bool(is_primary)
        self.console_keys = tuple(console_keys)
        self.jsonl_path = os.path.join(self.workdir, "metrics.jsonl")
        self._bar = None
        self._tb = None
        self._jsonl = None
        self._start = (time.monotonic(), int(initial_step))
        if console == "auto":
            console = "bar" if sys.stderr.isatty() else "lines"
        if console not in ("bar", "lines", "none"):
            raise ValueError(f"console must be bar | lines | none | auto, got {console!r}")
        self.console = console
        if not self.is_primary:
            return
        os.makedirs(self.workdir, exist_ok=True)
        if initial_step > 0 and os.path.exists(self.jsonl_path):
            _truncate_jsonl(self.jsonl_path, int(initial_step))
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")  # kept open; closed in close()
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(self.workdir, "tensorboard"), flush_secs=30)
        if console == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total_steps, initial=int(initial_step), dynamic_ncols=True, unit="step")

    def eta_seconds(self, step: int) -> float | None:
        """Seconds left at the average rate since this writer started, or None before any progress."""
        t0, s0 = self._start
        done = step - s0
        if done <= 0:
            return None
        return (time.monotonic() - t0) / done * max(0, self.total_steps - step)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Log ``scalars`` (Python / numpy / jax scalars; one device fetch for all) at ``step``."""
        if not self.is_primary:
            return
        step = int(step)
        host = jax.device_get(dict(scalars))  # one transfer for every device scalar
        values = {k: _to_float(v) for k, v in host.items()}
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()
        for k, v in values.items():
            self._tb.add_scalar(k, v, step)
        shown = [f"{k} {_fmt(values[k])}" for k in self.console_keys if k in values]
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix_str(" ".join(shown), refresh=True)
        elif self.console == "lines":
            eta = self.eta_seconds(step)
            eta_s = "?" if eta is None else str(datetime.timedelta(seconds=int(eta)))
            pct = 100.0 * step / max(1, self.total_steps)
            print(f"step {step}/{self.total_steps} ({pct:.1f}%) {' '.join(shown)} | ETA {eta_s}", flush=True)

    def write_text(self, step: int, key: str, text: str) -> None:
        """A text sample (e.g. generated captions): TensorBoard text + console."""
        if not self.is_primary:
            return
        self._tb.add_text(key, text, int(step))
        msg = f"[{key} @ {int(step)}] {text}"
        if self._bar is not None:
            self._bar.write(msg)
        elif self.console == "lines":
            print(msg, flush=True)

    def flush(self) -> None:
        if self.is_primary:
            self._jsonl.flush()
            self._tb.flush()

    def close(self) -> None:
        """Flush and close everything (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = [
    "DEFAULT_CONSOLE_KEYS",
    "PEAK_FLOPS",
    "MetricWriter",
    "measure_matmul_flops",
    "mfu",
    "peak_flops_per_device",
]
