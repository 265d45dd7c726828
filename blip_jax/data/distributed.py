"""Per-process batches -> global jax.Arrays sharded over the mesh's data axes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def data_sharding(mesh, data_axes: Sequence[str] = ("data", "fsdp")):
    """NamedSharding splitting the leading (batch) dim over the data axes present in `mesh`."""
    import jax

    axes = tuple(a for a in data_axes if a in mesh.axis_names)
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axes if axes else None))


def make_global_batch(local_batch: dict[str, np.ndarray], mesh, data_axes: Sequence[str] = ("data", "fsdp")):
    """dict of per-process numpy arrays (B_local, ...) -> dict of global jax.Arrays
    (B_local * process_count, ...), batch dim sharded over `data_axes` (those in the mesh).

    Non-numeric leaves (raw strings kept for inspection) are dropped. Every process must call
    this with the same keys and shapes (the eval pipeline pads for exactly that reason)."""
    import jax

    sharding = data_sharding(mesh, data_axes)
    out = {}
    for k, v in local_batch.items():
        v = np.asarray(v)
        if v.dtype.kind not in "biuf":
            continue
        out[k] = jax.make_array_from_process_local_data(sharding, v)
    return out
