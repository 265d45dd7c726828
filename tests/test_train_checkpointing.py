"""Checkpointer: round trip with a grain iterator, exact resume, keep-last-k, half-written steps, shardings."""

import json
import os
import subprocess
import sys
import textwrap

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from blip_jax.train.checkpointing import Checkpointer


def _grain_iter():
    return iter(grain.MapDataset.range(100).batch(4).to_iter_dataset())


class _CountingIterator:
    """Non-grain stand-in: yields arange batches; its state is a dict."""

    def __init__(self):
        self.pos = 0

    def __next__(self):
        self.pos += 1
        return np.arange(3) + 10 * self.pos

    def get_state(self):
        return {"pos": self.pos}

    def set_state(self, state):
        self.pos = state["pos"]


def _toy_state(seed=0):
    return {
        "params": nnx.state(nnx.Linear(3, 2, rngs=nnx.Rngs(seed))),
        "w16": jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3) + seed,
        "step": jnp.int32(0),
        "rng": jax.random.key(seed),
    }


@jax.jit
def _train_step(state, batch):
    """A stand-in step whose result depends on the exact batch sequence."""
    total = jnp.sum(batch).astype(jnp.float32)
    params = jax.tree_util.tree_map(lambda p: p * 0.5 + total * 1e-3, state["params"])
    rng, _ = jax.random.split(state["rng"])
    return {"params": params, "w16": state["w16"] + 1, "step": state["step"] + 1, "rng": rng}


def _flat(state):
    leaves = jax.tree_util.tree_leaves(state)
    return [np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x) for x in leaves]


def _assert_same(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(_flat(a), _flat(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def test_round_trip_and_exact_resume(tmp_path):
    cfg = ml_collections.ConfigDict({"lr": 3e-4, "schedule": {"type": "blip_step"}, "sizes": (1, 2)})
    ckpt = Checkpointer(tmp_path, save_interval_steps=5, max_to_keep=2)
    state, it = _toy_state(), _grain_iter()
    saved_at, batches_after = None, []
    for step in range(1, 9):
        state = _train_step(state, jnp.asarray(next(it)))
        if ckpt.save(step, state, data_iterator=it, config=cfg):
            saved_at = step
            state_at_save = jax.tree_util.tree_map(lambda x: x, state)
        elif saved_at is not None:
            batches_after.append(state)
    assert saved_at == 5
    ckpt.close()

    # A fresh process would do exactly this: new iterator, abstract state, restore, continue.
    ckpt2 = Checkpointer(tmp_path, save_interval_steps=5, max_to_keep=2)
    assert ckpt2.latest_step() == 5
    it2 = _grain_iter()
    abstract = jax.eval_shape(_toy_state)
    restored, step = ckpt2.restore_latest(abstract, data_iterator=it2)
    assert step == 5
    assert isinstance(restored["params"], nnx.State)
    _assert_same(restored, state_at_save)
    np.testing.assert_array_equal(next(it2), [20, 21, 22, 23])  # 6th batch of range(100).batch(4)
    # Continuing from the restore reproduces steps 6..8 bit for bit (the 6th batch was consumed above).
    resumed = _train_step(restored, jnp.arange(20, 24))
    _assert_same(resumed, batches_after[0])
    for expected in batches_after[1:]:
        resumed = _train_step(resumed, jnp.asarray(next(it2)))
        _assert_same(resumed, expected)
    assert ckpt2.restore_config()["schedule"] == {"type": "blip_step"}
    assert ckpt2.restore_config()["sizes"] == [1, 2]
    ckpt2.close()


def test_non_grain_iterator_and_process_files(tmp_path):
    ckpt = Checkpointer(tmp_path, save_interval_steps=1, async_save=False)
    it = _CountingIterator()
    next(it), next(it), next(it)
    assert ckpt.save(3, {"x": jnp.ones(2)}, data_iterator=it)
    next(it)  # advancing after save must not change what was saved
    ckpt.wait()
    files = os.listdir(tmp_path / "checkpoints" / "3" / "data")
    assert "process_0-of-1.json" in files
    assert json.loads((tmp_path / "checkpoints" / "3" / "data" / "process_0-of-1.json").read_text()) == {"pos": 3}
    it2 = _CountingIterator()
    state, step = ckpt.restore_latest({"x": jax.ShapeDtypeStruct((2,), jnp.float32)}, data_iterator=it2)
    assert step == 3 and it2.pos == 3
    np.testing.assert_array_equal(next(it2), [40, 41, 42])
    ckpt.close()


def test_keep_last_k_interval_and_force(tmp_path):
    ckpt = Checkpointer(tmp_path, save_interval_steps=2, max_to_keep=2)
    results = {s: ckpt.save(s, {"v": jnp.float32(s)}) for s in range(1, 8)}
    assert [s for s, ok in results.items() if ok] == [2, 4, 6]
    assert ckpt.should_save(8) and not ckpt.should_save(9)
    assert ckpt.save(7, {"v": jnp.float32(7)}, force=True)  # preemption save off the interval
    assert not ckpt.save(7, {"v": jnp.float32(7)}, force=True)  # already there: skipped, not an error
    ckpt.wait()
    assert ckpt.all_steps() == [6, 7]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["6", "7"]
    state, step = ckpt.restore_latest({"v": jax.ShapeDtypeStruct((), jnp.float32)})
    assert step == 7 and float(state["v"]) == 7.0
    ckpt.close()


def test_relative_workdir(tmp_path, monkeypatch):
    """`--workdir workdir/tiny`, as the README's first command: orbax takes absolute paths only."""
    monkeypatch.chdir(tmp_path)
    ckpt = Checkpointer("runs/a", save_interval_steps=1, async_save=False)
    assert ckpt.save(1, _toy_state())
    ckpt.wait()
    assert os.path.isdir(tmp_path / "runs/a/checkpoints/1")
    state, step = ckpt.restore_latest(jax.tree.map(lambda x: x, _toy_state()))
    assert step == 1
    _assert_same(state, _toy_state())
    ckpt.close()


def test_half_written_checkpoint_is_never_picked_up(tmp_path):
    ckpt = Checkpointer(tmp_path, save_interval_steps=1)
    ckpt.save(10, {"v": jnp.float32(10)})
    ckpt.close()
    # What a save killed mid-write leaves behind: orbax's temporary folder, never renamed.
    tmp = tmp_path / "checkpoints" / "20.orbax-checkpoint-tmp-1712345678901234"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "garbage").write_bytes(b"\x00" * 10)
    ckpt = Checkpointer(tmp_path)
    assert ckpt.latest_step() == 10 and ckpt.all_steps() == [10]
    state, step = ckpt.restore_latest({"v": jax.ShapeDtypeStruct((), jnp.float32)})
    assert (step, float(state["v"])) == (10, 10.0)
    assert ckpt.save(11, {"v": jnp.float32(11)}, force=True)
    ckpt.wait()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "11"]  # the leftover is gone
    # A folder that appears while the manager is open (a save in flight elsewhere) is not listed.
    (tmp_path / "checkpoints" / "30.orbax-checkpoint-tmp-1").mkdir()
    ckpt._manager.reload()
    assert ckpt.latest_step() == 11
    ckpt.close()
    with Checkpointer(tmp_path / "empty") as empty:
        assert empty.restore_latest({"v": jax.ShapeDtypeStruct((), jnp.float32)}) is None


def test_restore_onto_mesh_shardings(tmp_path):
    mesh = jax.make_mesh((1,), ("data",))
    sharding = jax.NamedSharding(mesh, jax.P("data", None))
    replicated = jax.NamedSharding(mesh, jax.P())
    ckpt = Checkpointer(tmp_path, save_interval_steps=1)
    value = jnp.arange(8.0).reshape(4, 2)  # saved from a plain single-device array
    ckpt.save(1, {"w": value, "b": jnp.ones(3)})
    ckpt.wait()
    abstract = {
        "w": jax.ShapeDtypeStruct((4, 2), jnp.float32, sharding=sharding),
        "b": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=replicated),
    }
    state, _ = ckpt.restore_latest(abstract)
    assert state["w"].sharding == sharding and state["b"].sharding == replicated
    np.testing.assert_array_equal(state["w"], value)
    # Concrete arrays as the target work too (their shardings are used).
    state2, _ = ckpt.restore_latest({"w": jax.device_put(jnp.zeros((4, 2)), sharding), "b": jnp.zeros(3)})
    assert state2["w"].sharding == sharding
    ckpt.close()


def test_save_best_keeps_only_improvements(tmp_path):
    ckpt = Checkpointer(tmp_path)
    assert ckpt.save_best(1, {"v": jnp.float32(1)}, "r_mean", 50.0)
    assert not ckpt.save_best(2, {"v": jnp.float32(2)}, "r_mean", 40.0)
    assert ckpt.save_best(3, {"v": jnp.float32(3)}, "r_mean", 60.0)
    ckpt.close()
    ckpt = Checkpointer(tmp_path)  # the best survives a restart
    state, step = ckpt.restore_best("r_mean", {"v": jax.ShapeDtypeStruct((), jnp.float32)})
    assert (step, float(state["v"])) == (3, 3.0)
    assert ckpt.best_value("r_mean") == 60.0
    assert not ckpt.save_best(4, {"v": jnp.float32(4)}, "r_mean", 55.0)
    assert os.listdir(tmp_path / "checkpoints_best" / "r_mean") == ["3"]
    with pytest.raises(ValueError, match="mode"):
        ckpt.save_best(5, {"v": jnp.float32(5)}, "loss", 1.0, mode="lowest")
    ckpt.close()


_RESHARD_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np
    from blip_jax.train.checkpointing import Checkpointer

    workdir = sys.argv[1]
    value = jnp.arange(32.0).reshape(8, 4)
    fsdp = jax.make_mesh((4,), ("fsdp",))
    saved = jax.device_put(value, jax.NamedSharding(fsdp, jax.P("fsdp", None)))
    with Checkpointer(workdir, save_interval_steps=1) as ckpt:
        ckpt.save(3, {"w": saved})
    # Restore onto a different mesh and layout: (data 2, tensor 2), columns split over tensor.
    mesh = jax.make_mesh((2, 2), ("data", "tensor"))
    target = jax.NamedSharding(mesh, jax.P(None, "tensor"))
    with Checkpointer(workdir) as ckpt:
        state, step = ckpt.restore_latest({"w": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=target)})
    w = state["w"]
    assert step == 3 and w.sharding == target, w.sharding
    assert {s.data.shape for s in w.addressable_shards} == {(8, 2)}
    np.testing.assert_array_equal(np.asarray(w), np.asarray(value))
    print("RESHARD_OK")
    """
)


def test_restore_onto_a_different_multi_device_mesh(tmp_path):
    # A separate process: the fake 4-device CPU platform must be configured before jax starts.
    out = subprocess.run(
        [sys.executable, "-c", _RESHARD_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert "RESHARD_OK" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]
