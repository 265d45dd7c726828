"""Orbax checkpoints of the train state, the data-iterator position and the config.

Layout (one orbax ``CheckpointManager`` over ``workdir/checkpoints``)::

    workdir/checkpoints/<step>/state/    the train-state pytree (tensorstore; every host writes its shards)
    workdir/checkpoints/<step>/data/     process_<i>-of-<n>.json: each host's iterator state
    workdir/checkpoints/<step>/config/   the run's config as JSON (primary host)
    workdir/checkpoints_best/<metric>/<step>/state/   optional, :meth:`Checkpointer.save_best`

Why it is safe to rerun the same command after a crash: orbax writes a step into
``<step>.orbax-checkpoint-tmp-<timestamp>`` and renames it to ``<step>`` only once every host
has finished (on object stores it writes ``commit_success.txt`` last instead). ``latest_step``
and the restore only see finalised steps; the leftovers of a save that died half-way are never
picked up, and they are deleted when the next run opens the manager (``cleanup_tmp_directories``).

Async saves: :meth:`Checkpointer.save` returns once the arrays have been copied to host memory,
and the files are written in a background thread, so the step after it can donate the state's
buffers. :meth:`Checkpointer.wait` blocks until the write is finalised; :meth:`close` waits too.

The data iterator: grain iterators (``grain.DatasetIterator``, ``grain.DataLoaderIterator``) are
saved with grain's own orbax handler (``grain.checkpoint.CheckpointSave/Restore``); any other
object with ``get_state() -> dict | bytes`` and ``set_state(state)`` (a wrapper of ours, a test
stand-in) goes through :class:`IteratorStateHandler`, which writes the same
``process_<i>-of-<n>.json`` files. Both read the state when ``save`` is called, not later in the
background thread, so the checkpoint holds the position that matches the saved train state.
Restoring needs the same process count (and, for grain, the same worker layout) as the save.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)

STATE, DATA, CONFIG = "state", "data", "config"


# --------------------------------------------------------------------------------------------
# Generic iterator-state handler (same file layout as grain's handler)
# --------------------------------------------------------------------------------------------


def _process_file(directory: epath.Path) -> epath.Path:
    return epath.Path(directory) / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


class IteratorStateHandler(ocp.CheckpointHandler):
    """Orbax handler for any iterator with ``get_state()`` / ``set_state()``; one JSON file per host.

    The save args carry a *snapshot* of the state (taken in :meth:`Checkpointer.save`), so an
    iterator that keeps running while the background write happens cannot change what is saved.
    """

    def save(self, directory: epath.Path, args: IteratorStateSave) -> None:
        state = args.state
        text = state.decode() if isinstance(state, bytes) else json.dumps(state, indent=1)
        _process_file(directory).write_text(text)

    def restore(self, directory: epath.Path, args: IteratorStateRestore | None = None) -> Any:
        filename = _process_file(directory)
        if not filename.exists():
            raise FileNotFoundError(
                f"{filename} is missing: the checkpoint was written by a different number of processes"
            )
        text = filename.read_text()
        item = None if args is None else args.item
        if item is None:
            return json.loads(text)
        state = json.loads(text) if not getattr(args, "as_bytes", False) else text.encode()
        item.set_state(state)
        return item

    def metadata(self, directory: epath.Path) -> None:
        del directory
        return None

    def structure(self, directory: epath.Path) -> None:
        del directory
        return None


@ocp.args.register_with_handler(IteratorStateHandler, for_save=True)
@dataclasses.dataclass
class IteratorStateSave(ocp.args.CheckpointArgs):
    """``state``: the value of ``iterator.get_state()`` (JSON-able, or bytes written as text)."""

    state: Any


@ocp.args.register_with_handler(IteratorStateHandler, for_restore=True)
@dataclasses.dataclass
class IteratorStateRestore(ocp.args.CheckpointArgs):
    """``item``: iterator whose ``set_state`` receives the saved state; ``as_bytes`` for byte states."""

    item: Any = None
    as_bytes: bool = False


def _is_grain_iterator(it: Any) -> bool:
    import grain

    return isinstance(it, (grain.DatasetIterator, grain.DataLoaderIterator))


def _iterator_save_args(it: Any) -> ocp.args.CheckpointArgs:
    if _is_grain_iterator(it):
        import grain

        # grain's handler calls get_state() inside save(); orbax runs non-async handlers
        # synchronously in CheckpointManager.save, i.e. before the loop advances the iterator.
        return grain.checkpoint.CheckpointSave(it)
    if hasattr(it, "get_state") and hasattr(it, "set_state"):
        return IteratorStateSave(it.get_state())
    raise TypeError(f"data_iterator {type(it).__name__} has no get_state()/set_state()")


def _iterator_restore_args(it: Any) -> ocp.args.CheckpointArgs:
    if _is_grain_iterator(it):
        import grain

        return grain.checkpoint.CheckpointRestore(it)
    return IteratorStateRestore(it, as_bytes=isinstance(it.get_state(), bytes))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def config_to_json(config: Any) -> dict:
    """A ConfigDict / dataclass / dict as a JSON-able dict (non-JSON values via ``str``)."""
    if isinstance(config, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
        return json.loads(config.to_json_best_effort())
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    return json.loads(json.dumps(config, default=str))


def config_changes(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """Leaves that differ between two `config_to_json` dicts: ["data.batch_size: 8 -> 4", ...]."""
    out = []
    for key in sorted(set(saved) | set(now), key=str):
        name = f"{prefix}{key}"
        a, b = saved.get(key, "<absent>"), now.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def abstract_like(tree: Any) -> Any:
    """Concrete arrays -> ``jax.ShapeDtypeStruct`` with the same shape, dtype and sharding.

    ``jax.ShapeDtypeStruct`` leaves pass through; this is how ``restore_latest`` learns where
    every restored array must live (a leaf without a sharding is restored as orbax saved it).
    """

    def one(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree_util.tree_map(one, tree)


# --------------------------------------------------------------------------------------------
# The checkpointer the loop calls
# --------------------------------------------------------------------------------------------


class Checkpointer:
    """Periodic async checkpoints in ``workdir/checkpoints``, keeping the last ``max_to_keep``.

    Every host must call :meth:`save` / :meth:`restore_latest` / :meth:`wait` at the same steps
    (orbax synchronises the hosts inside them).

    Args:
        workdir: run directory (local path or any ``etils.epath`` URL, e.g. ``gs://``).
        save_interval_steps: :meth:`save` writes when ``step % save_interval_steps == 0``
            (or ``force=True``).
        max_to_keep: newest finalised checkpoints kept; older ones are deleted (None keeps all).
        keep_period: additionally keep every step that is a multiple of this (e.g. per epoch).
        async_save: write in a background thread (orbax ``enable_async_checkpointing``).
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        save_interval_steps: int = 1000,
        max_to_keep: int | None = 3,
        keep_period: int | None = None,
        async_save: bool = True,
    ):
        workdir = os.fspath(workdir)
        # orbax's tensorstore writer refuses relative paths: a relative workdir is the cwd's.
        self.workdir = epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))
        self.directory = self.workdir / "checkpoints"
        self._async = async_save
        options = ocp.CheckpointManagerOptions(
            # Only the interval: orbax's default policy also saves the very first step of a fresh
            # run (a wasted multi-GB write) and polls jax's preemption service; preemption is ours
            # (`preemption.py` + `save(..., force=True)`).
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(max(1, int(save_interval_steps))),
            max_to_keep=max_to_keep,
            keep_period=keep_period,
            create=True,
            # Leftover `<step>.orbax-checkpoint-tmp-*` folders of a killed run are removed on open.
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._best: dict[str, tuple[ocp.CheckpointManager, str]] = {}

    @classmethod
    def from_config(cls, workdir: str | os.PathLike, cfg: ml_collections.ConfigDict) -> Checkpointer:
        """Reads ``cfg.checkpoint.{every_steps, keep, keep_period, async_save}`` (each optional)."""
        c = cfg.get("checkpoint", None) or {}
        return cls(
            workdir,
            save_interval_steps=int(c.get("every_steps", 1000)),
            max_to_keep=c.get("keep", 3),
            keep_period=c.get("keep_period", None) or None,
            async_save=bool(c.get("async_save", True)),
        )

    # ---- queries -------------------------------------------------------------------------

    def latest_step(self) -> int | None:
        """Newest finalised step (never a half-written one), or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Finalised steps, ascending."""
        return sorted(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Whether :meth:`save` at ``step`` without ``force`` would write (to skip a host sync otherwise)."""
        return step not in self._manager.all_steps() and self._manager.should_save(step)

    # ---- save / restore ------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Any,
        data_iterator: Any = None,
        config: Any = None,
        force: bool = False,
    ) -> bool:
        """Save ``state`` (+ iterator position + config) at ``step`` if the interval says so.

        Args:
            step: global step the state has *completed* (the resumed run starts at ``step``).
            state: pytree of ``jax.Array`` (sharded or not), numpy arrays and scalars; an
                ``nnx.State`` works. Must not be donated before this call returns.
            data_iterator: iterator whose next batch is the one step ``step`` will consume.
            config: ``ml_collections.ConfigDict`` / dict / dataclass, stored as JSON.
            force: save even off the interval (preemption, end of training).

        Returns:
            True if a save was started; False if skipped (off-interval, or ``step`` exists).
        """
        step = int(step)
        if step in self._manager.all_steps():
            # Re-saving a step orbax already finalised raises; happens after a resume + force-save.
            return False
        if not force and not self._manager.should_save(step):
            return False
        items: dict[str, ocp.args.CheckpointArgs] = {STATE: ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items[DATA] = _iterator_save_args(data_iterator)
        if config is not None:
            items[CONFIG] = ocp.args.JsonSave(config_to_json(config))
        saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
        if saved:
            log.info("checkpoint: %s step %d to %s", "saving" if self._async else "saved", step, self.directory)
        return saved

    def restore_latest(self, abstract_state: Any, data_iterator: Any = None) -> tuple[Any, int] | None:
        """Restore the newest finalised checkpoint, or None when there is none.

        Args:
            abstract_state: pytree with the structure of the saved state whose leaves are
                ``jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))`` (or
                concrete arrays, whose shape/dtype/sharding are used): each array is read
                straight into that sharding, so a sharded state restores onto the mesh.
            data_iterator: restored in place (its ``set_state``) when given and saved.

        Returns:
            ``(state, step)``: ``state`` has ``abstract_state``'s structure (an ``nnx.State``
            target gives an ``nnx.State``).
        """
        step = self.latest_step()
        if step is None:
            return None
        return self.restore(step, abstract_state, data_iterator), step

    def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
        """Restore a given finalised ``step`` (see :meth:`restore_latest`); returns the state."""
        items: dict[str, ocp.args.CheckpointArgs] = {STATE: ocp.args.StandardRestore(abstract_like(abstract_state))}
        if data_iterator is not None:
            if self._has_item(step, DATA):
                items[DATA] = _iterator_restore_args(data_iterator)
            else:
                log.warning("checkpoint %d has no data-iterator state; the iterator starts from its beginning", step)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        log.info("checkpoint: restored step %d from %s", step, self.directory)
        return restored[STATE]

    def restore_config(self, step: int | None = None) -> dict | None:
        """The config JSON saved with ``step`` (default: latest), or None."""
        step = self.latest_step() if step is None else step
        if step is None or not self._has_item(step, CONFIG):
            return None
        return self._manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]

    def _has_item(self, step: int, name: str) -> bool:
        return (self.directory / str(step) / name).exists()

    # ---- best checkpoint (for evaluation-driven selection) --------------------------------

    def save_best(self, step: int, state: Any, metric_name: str, value: float, mode: str = "max") -> bool:
        """Keep one checkpoint of ``state`` with the best ``metric_name`` so far (``mode`` max/min).

        Writes to ``workdir/checkpoints_best/<metric_name>/<step>/`` only when ``value`` improves
        on the best recorded there (also across restarts: orbax keeps the metric with the step).

        Returns:
            True if ``value`` was a new best and a save started.
        """
        mgr, mode = self._best_manager(metric_name, mode)
        best = self.best_value(metric_name)
        value = float(value)
        if best is not None and not (value > best if mode == "max" else value < best):
            return False
        if int(step) in mgr.all_steps():
            return False
        return mgr.save(
            int(step),
            args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state)}),
            metrics={metric_name: value},
            force=True,
        )

    def _best_manager(self, metric_name: str, mode: str) -> tuple[ocp.CheckpointManager, str]:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if metric_name not in self._best:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=1,
                # orbax keeps the best step by this metric (stored with each step, so it survives restarts).
                best_fn=lambda m: float(m[metric_name]),
                best_mode=mode,
                keep_checkpoints_without_metrics=False,
                create=True,
                cleanup_tmp_directories=True,
                enable_async_checkpointing=self._async,
            )
            mgr = ocp.CheckpointManager(self.workdir / "checkpoints_best" / metric_name, options=options)
            self._best[metric_name] = (mgr, mode)
        return self._best[metric_name]

    def best_value(self, metric_name: str) -> float | None:
        """Best recorded value of ``metric_name`` (after :meth:`save_best` was called for it)."""
        if metric_name not in self._best:
            return None
        mgr, _ = self._best[metric_name]
        mgr.wait_until_finished()
        step = mgr.best_step()
        metrics = None if step is None else mgr.metrics(step)
        return None if not metrics else float(metrics[metric_name])

    def restore_best(self, metric_name: str, abstract_state: Any, mode: str = "max") -> tuple[Any, int] | None:
        """``(state, step)`` of the best checkpoint for ``metric_name``, or None."""
        if metric_name not in self._best and not (self.workdir / "checkpoints_best" / metric_name).exists():
            return None
        mgr, _ = self._best_manager(metric_name, mode)
        mgr.wait_until_finished()
        step = mgr.best_step()
        if step is None:
            return None
        args = ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_like(abstract_state))})
        return mgr.restore(step, args=args)[STATE], step

    # ---- lifecycle -----------------------------------------------------------------------

    def wait(self) -> None:
        """Block until every started save is finalised (renamed into place)."""
        self._manager.wait_until_finished()
        for mgr, _ in self._best.values():
            mgr.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release orbax's threads."""
        self.wait()
        self._manager.close()
        for mgr, _ in self._best.values():
            mgr.close()
        self._best.clear()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = [
    "Checkpointer",
    "IteratorStateHandler",
    "IteratorStateRestore",
    "IteratorStateSave",
    "abstract_like",
    "config_changes",
    "config_to_json",
]
