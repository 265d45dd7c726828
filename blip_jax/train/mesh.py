"""Device mesh and the logical-axis -> mesh-axis rules that place parameters and batches.

Parameters carry logical axis names in their ``logical_axes`` metadata (see models/layers.py);
a config's ``sharding_rules`` maps each name to a mesh axis (or None = replicated). A dimension
that the mapped mesh axis does not divide stays replicated, so tiny test models run on any mesh.
The batch's leading dimension is split over the data-parallel axes ('data', 'fsdp').
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# FSDP shards the embedding dimension of every weight; tensor parallelism splits heads / MLP /
# vocabulary (Megatron-style column/row pairs: q,k,v and fc1 by output, out and fc2 by input).
DEFAULT_RULES = (("embed", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"))


def make_mesh(shape: dict | Sequence[int] | None = None, devices=None) -> Mesh:
    """Mesh over ('data', 'fsdp', 'tensor'); one entry may be -1 (= the remaining devices)."""
    devices = devices if devices is not None else jax.devices()
    if shape is None:
        shape = {"data": -1, "fsdp": 1, "tensor": 1}
    if isinstance(shape, dict):
        shape = [int(shape.get(a, 1)) for a in MESH_AXES]
    shape = list(shape)
    n = len(devices)
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
    if -1 in shape:
        rest = int(np.prod([s for s in shape if s != -1]))
        if n % rest:
            raise ValueError(f"mesh shape {shape} does not divide {n} devices")
        shape[shape.index(-1)] = n // rest
    if int(np.prod(shape)) != n:
        raise ValueError(f"mesh shape {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, have {n}")
    # Auto axes: shardings are given at the jit boundary and the partitioner propagates them inside.
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(tuple(shape), MESH_AXES, devices=devices, axis_types=auto)


def logical_to_spec(logical_axes, shape, mesh: Mesh, rules) -> P:
    """('embed', 'mlp') + rules -> PartitionSpec('fsdp', 'tensor'), replicating indivisible dims."""
    if not logical_axes:
        return P()
    rules = dict(rules)
    used, spec = set(), []
    for name, dim in zip(logical_axes, shape):
        axis = rules.get(name)
        if axis is None or axis in used or mesh.shape[axis] == 1 or dim % mesh.shape[axis]:
            spec.append(None)
        else:
            spec.append(axis)
            used.add(axis)
    return P(*spec)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(state, mesh: Mesh, rules=DEFAULT_RULES):
    """An nnx.State (or any pytree of Variables / arrays) -> the same tree of NamedShardings."""

    def one(leaf):
        if _is_variable(leaf):
            axes = leaf.get_metadata().get("logical_axes")
            spec = logical_to_spec(axes, leaf.shape, mesh, rules)
            return leaf.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, state, is_leaf=_is_variable)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over the data-parallel axes, the rest replicated."""
    from blip_jax.data.distributed import data_sharding

    return data_sharding(mesh, BATCH_AXES)


def batch_rows_by_process(index_map, batch_size: int) -> dict[int, set[tuple[int, int]]]:
    """``{process_index: {(start, stop) of batch rows held by its devices}}`` from a sharding's
    ``devices_indices_map((batch_size, ...))``."""
    rows: dict[int, set[tuple[int, int]]] = {}
    for device, index in index_map.items():
        start, stop, _ = index[0].indices(batch_size)
        rows.setdefault(int(device.process_index), set()).add((start, stop))
    return rows


def check_batch_split(mesh: Mesh, batch_size: int, sharding: NamedSharding | None = None) -> None:
    """Raise ValueError unless every process's devices hold one distinct, equal slice of the batch.

    Each process loads ``batch_size // process_count`` rows of its own; when a process's devices
    cover more (e.g. the batch axes do not span the processes, ``mesh=dict(data=1, tensor=-1)`` on
    two hosts), replicas of the same rows would receive different data without any error."""
    sharding = sharding or batch_sharding(mesh)
    rows = batch_rows_by_process(sharding.devices_indices_map((batch_size,)), batch_size)
    n = len(rows)
    if n <= 1:
        return
    per_process = batch_size // n
    spans = {}
    for proc, slices in rows.items():
        lo, hi = min(a for a, _ in slices), max(b for _, b in slices)
        covered = set()
        for a, b in slices:
            covered.update(range(a, b))
        if hi - lo != per_process or covered != set(range(lo, hi)):
            spans = None
            break
        spans[proc] = (lo, hi)
    if spans is None or len(set(spans.values())) != n:
        raise ValueError(
            f"the batch axes {BATCH_AXES} of mesh {dict(mesh.shape)} do not split the batch of {batch_size} "
            f"into one distinct slice per process ({n} processes; rows per process: "
            f"{ {p: sorted(s) for p, s in sorted(rows.items())} }): each process loads its own "
            f"{per_process} rows, so make the data-parallel size (data * fsdp) a multiple of the process "
            "count, with each process's devices on a contiguous part of it (e.g. mesh.data=-1)")


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def train_state_shardings(state, tx, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for a (possibly abstract) TrainState: parameters, their EMA and the optimiser
    moments follow the logical rules; everything else (step, rng, queues, counters) is replicated."""
    import optax

    from blip_jax.train.state import TrainState

    params = state_shardings(state.params, mesh, rules)
    rep = replicated(mesh)
    opt = optax.tree_map_params(
        tx, lambda _, s: s, state.opt_state, params, transform_non_params=lambda _: rep,
        is_leaf=_is_variable,
    )
    return TrainState(
        step=rep,
        params=params,
        rest=jax.tree.map(lambda _: rep, state.rest),
        ema=None if state.ema is None else state_shardings(state.ema, mesh, rules),
        queues=None if state.queues is None else jax.tree.map(lambda _: rep, state.queues),
        opt_state=opt,
        rng=rep,
    )
