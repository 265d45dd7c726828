"""MetricWriter outputs (JSONL, TensorBoard, console) and the peak-FLOP/s table."""

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from blip_jax.train import metrics
from blip_jax.train.metrics import MetricWriter, mfu, peak_flops_per_device


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_jsonl_tensorboard_and_resume(tmp_path, capsys):
    w = MetricWriter(tmp_path, total_steps=100, is_primary=True, console="lines")
    w.write_scalars(10, {"loss": jnp.float32(3.5), "lr": 1e-4, "images_per_s": np.float64(250.0)})
    w.write_scalars(20, {"loss": jnp.asarray(2.25), "loss_itm": 0.5})
    w.write_scalars(30, {"loss": 2.0})
    w.write_text(30, "caption", "a dog on a beach")
    w.close()
    w.close()  # idempotent
    rows = _read_jsonl(tmp_path / "metrics.jsonl")
    assert rows == [
        {"step": 10, "loss": 3.5, "lr": 1e-4, "images_per_s": 250.0},
        {"step": 20, "loss": 2.25, "loss_itm": 0.5},
        {"step": 30, "loss": 2.0},
    ]
    events = os.listdir(tmp_path / "tensorboard")
    assert len(events) == 1 and events[0].startswith("events.out.tfevents.")
    assert os.path.getsize(tmp_path / "tensorboard" / events[0]) > 100
    out = capsys.readouterr().out
    assert "step 10/100 (10.0%) loss 3.5 lr 1.000e-04 images_per_s 250 | ETA" in out
    assert "[caption @ 30] a dog on a beach" in out

    # Resume from a checkpoint at step 20: the line for step 30 is dropped, then we append.
    w = MetricWriter(tmp_path, total_steps=100, is_primary=True, initial_step=20, console="none")
    w.write_scalars(30, {"loss": 1.75, "bad": float("nan")})
    w.close()
    rows = _read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert rows[-1]["loss"] == 1.75 and math.isnan(rows[-1]["bad"])


def test_tensorboard_scalars_readable(tmp_path):
    # The event file holds our values: parse it back with tensorboardX's own record reader.
    from tensorboardX.proto import event_pb2

    with MetricWriter(tmp_path, total_steps=10, is_primary=True, console="none") as w:
        w.write_scalars(3, {"loss_ita": 1.25})
    (event_file,) = os.listdir(tmp_path / "tensorboard")
    data = (tmp_path / "tensorboard" / event_file).read_bytes()
    found = []
    pos = 0
    while pos < len(data):  # TFRecord framing: len (8) + crc (4) + payload + crc (4)
        n = int.from_bytes(data[pos : pos + 8], "little")
        ev = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
        pos += 12 + n + 4
        found += [(ev.step, v.tag, v.simple_value) for v in ev.summary.value]
    assert found == [(3, "loss_ita", 1.25)]


def test_non_primary_writes_nothing(tmp_path):
    w = MetricWriter(tmp_path / "run", total_steps=10, is_primary=False)
    w.write_scalars(1, {"loss": 1.0})
    w.write_text(1, "k", "t")
    w.close()
    assert not (tmp_path / "run").exists()


def test_progress_bar_mode(tmp_path):
    w = MetricWriter(tmp_path, total_steps=50, is_primary=True, initial_step=5, console="bar")
    w.write_scalars(15, {"loss": 1.0, "loss_lm": 0.25})
    assert w._bar.n == 15 and w._bar.total == 50
    assert "loss 1 loss_lm 0.25" in w._bar.postfix
    w.close()
    with pytest.raises(ValueError, match="console"):
        MetricWriter(tmp_path, total_steps=1, is_primary=True, console="fancy")


def test_eta(tmp_path, monkeypatch):
    clock = iter([100.0, 110.0])
    monkeypatch.setattr(metrics.time, "monotonic", lambda: next(clock))
    w = MetricWriter(tmp_path, total_steps=1000, is_primary=False, initial_step=200)
    assert w.eta_seconds(300) == pytest.approx(10.0 / 100 * 700)  # 0.1 s/step, 700 steps left


@pytest.mark.parametrize(
    "kind, dtype, expected",
    [
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
        ("NVIDIA H100 80GB HBM3", jnp.float32, 494e12),  # TF32 tensor cores
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA H200", "bfloat16", 989e12),
        ("NVIDIA H200", "float16", 989e12),
        ("NVIDIA A100-SXM4-80GB", jnp.bfloat16, 312e12),
        ("NVIDIA A100-SXM4-40GB", "float32", 156e12),
        ("TPU v4", "bfloat16", 275e12),
        ("TPU v5 lite", "bfloat16", 197e12),
        ("TPU v5e", "bfloat16", 197e12),
        ("TPU v5p", "bfloat16", 459e12),
        ("TPU v5", "bfloat16", 459e12),
        ("TPU v6 lite", "bfloat16", 918e12),
        ("TPU v4", "float32", 275e12),  # one bf16 MXU pass at default precision
        ("cpu", "float32", None),
        ("NVIDIA H20", "bfloat16", None),
        ("NVIDIA H100 80GB HBM3", "int8", None),
    ],
)
def test_peak_table(kind, dtype, expected):
    assert peak_flops_per_device(kind, dtype) == expected


def test_mfu():
    # 8 H100s at 989 TFLOP/s each; a 3.956e15-FLOP step in 1 s is 50 % of 7.912e15.
    assert mfu(3.956e15, 1.0, 8, "NVIDIA H100 80GB HBM3", "bfloat16") == pytest.approx(0.5)
    assert mfu(1e12, 0.5, 1, "TPU v5 lite") == pytest.approx(2e12 / 197e12)
    assert mfu(1e12, 1.0, 1, "cpu", "float32") is None
    assert mfu(1e12, 0.0, 1, "TPU v4") is None


def test_measure_matmul_flops():
    flops = metrics.measure_matmul_flops("float32", size=128, repeats=2)
    assert 1e6 < flops < 1e14  # a CPU core does MFLOP/s to a few hundred GFLOP/s


@pytest.mark.parametrize("itm, lm", [(True, True), (False, False)])
def test_pretrain_step_flops_match_xla_cost_analysis(itm, lm):
    """The MFU numerator: analytic matmul FLOPs of the compiled pretraining step must agree with
    XLA's own count (which adds the few percent of element-wise work) - a double-counted or
    missing projection (e.g. image keys/values shared by ITM and LM) would move it far out."""
    import jax
    import optax
    from flax import nnx

    from blip_jax.configuration import BlipConfig, BlipTextConfig, BlipVisionConfig
    from blip_jax.models.pretrain import BlipPretrain
    from blip_jax.train import flops as flops_lib
    from blip_jax.train.state import create_train_state, split_model
    from blip_jax.train.step import ObjectiveConfig, make_train_step

    tc = BlipTextConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=512, max_position_embeddings=32, bos_token_id=510, enc_token_id=511)
    vc = BlipVisionConfig(image_size=64, patch_size=8, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=512)
    cfg = BlipConfig.from_text_vision_configs(tc, vc, image_text_hidden_size=64)
    gd, params, rest, mgd, ema = split_model(BlipPretrain(cfg, rngs=nnx.Rngs(0)))
    tx = optax.sgd(1e-3)
    state = create_train_state(params, rest, ema, tx, jax.random.key(0), 64, 64)
    b, length = 8, 16
    batch = {"pixel_values": jnp.zeros((b, 64, 64, 3)), "input_ids": jnp.ones((b, length), jnp.int32),
             "attention_mask": jnp.ones((b, length), jnp.int32)}
    ocfg = ObjectiveConfig(bos_token_id=510, enc_token_id=511, itm_weight=float(itm), lm_weight=float(lm))
    cost = jax.jit(make_train_step(gd, mgd, tx, lambda s: 1e-3, ocfg)).lower(state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    analytic = flops_lib.pretrain_step_flops(cfg, b, length, itm=itm, lm=lm)
    assert 0.9 <= analytic / cost["flops"] <= 1.0, (analytic, cost["flops"])


@pytest.mark.parametrize("k", [4, 10])
def test_vqa_step_flops_match_xla_cost_analysis(k):
    """The VQA answer decoder folds a question's K answers onto that question's cross-attention
    keys/values (`layers.Attention`): they count once per question, not K times (counting them per
    answer gave analytic/XLA 1.042 at K=4 and 1.095 at K=10)."""
    import jax
    import optax
    from flax import nnx

    from blip_jax.configuration import BlipConfig, BlipTextConfig, BlipVisionConfig
    from blip_jax.models.blip import BlipForQuestionAnswering
    from blip_jax.train import flops as flops_lib
    from blip_jax.train import tasks
    from blip_jax.train.state import create_train_state
    from blip_jax.train.step import make_supervised_step

    tc = BlipTextConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=512, max_position_embeddings=32, bos_token_id=510, enc_token_id=511)
    vc = BlipVisionConfig(image_size=64, patch_size=8, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=512)
    cfg = BlipConfig.from_text_vision_configs(tc, vc, image_text_hidden_size=64)
    gd, params, rest = nnx.split(BlipForQuestionAnswering(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    tx = optax.sgd(1e-3)
    state = create_train_state(params, rest, None, tx, jax.random.key(0))
    b, lq, la = 8, 16, 8
    batch = {"pixel_values": jnp.zeros((b, 64, 64, 3)), "question_input_ids": jnp.ones((b, lq), jnp.int32),
             "question_attention_mask": jnp.ones((b, lq), jnp.int32),
             "answer_input_ids": jnp.ones((b, k, la), jnp.int32),
             "answer_attention_mask": jnp.ones((b, k, la), jnp.int32), "answer_weights": jnp.ones((b, k))}

    def loss_fn(m, bb):
        return tasks.vqa_loss(m, bb, 0.1, 510, 511)

    step = make_supervised_step(gd, tx, lambda s: 1e-3, loss_fn)
    cost = jax.jit(step).lower(state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    analytic = flops_lib.vqa_step_flops(cfg, b, lq, (k, la), 64)
    # XLA adds element-wise work, so the matmul count sits a little below it (0.993 at K=1).
    assert 0.98 <= analytic / cost["flops"] <= 1.0, (analytic, cost["flops"])


def test_window_sums_and_means_across_a_resume():
    """The jitted step sums the metrics of each logging window (restarting at multiples of the
    window) and `window_means` divides by the steps each sum holds, also after a resume mid-window."""
    import dataclasses

    import jax

    from blip_jax.train.state import TrainState
    from blip_jax.train.step import WINDOW_STEPS, jit_step, window_means

    def step_fn(state, batch):
        s = state.step.astype(jnp.float32)
        return dataclasses.replace(state, step=state.step + 1), {"loss": s * s, "lr": s + 0.5}

    def run(start, end, window):
        state = TrainState(step=jnp.asarray(start, jnp.int32), params={}, rest={}, ema=None, queues=None,
                           opt_state=None, rng=None)
        buffer = {"loss": jnp.zeros(()), "lr": jnp.zeros(()), WINDOW_STEPS: jnp.zeros((), jnp.int32)}
        f = jit_step(step_fn, metrics_window=window)
        logged = {}
        for step in range(start + 1, end + 1):
            state, buffer = f(state, None, buffer)
            if step % window == 0 or step == end:
                logged[step] = window_means({k: float(v) for k, v in jax.device_get(buffer).items()})
        return logged

    per_step = {s + 1: float(s * s) for s in range(11)}  # step k ran with state.step k - 1
    for start, want_windows in ((0, {3: [1, 2, 3], 6: [4, 5, 6], 9: [7, 8, 9], 11: [10, 11]}),
                                (4, {6: [5, 6], 9: [7, 8, 9], 11: [10, 11]})):
        got = run(start, 11, 3)
        assert sorted(got) == sorted(want_windows)
        for step, window in want_windows.items():
            assert got[step]["loss"] == pytest.approx(np.mean([per_step[s] for s in window]))
            assert got[step]["lr"] == pytest.approx(step - 1 + 0.5)  # as of the logging step
    assert run(0, 2, 1) == {1: {"loss": 0.0, "lr": 0.5}, 2: {"loss": 1.0, "lr": 1.5}}
