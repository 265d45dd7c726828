"""BLIP objectives against plain numpy references, the encoder/decoder sharing structure, and the
sharded train step against the single-device step."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from blip_jax.models.pretrain import BlipPretrain, enqueue, init_queues
from blip_jax.train import objectives as obj
from tests.sharded_step_check import tiny_config


def np_log_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def np_softmax(x, axis=-1):
    return np.exp(np_log_softmax(x, axis))


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    f = [unit(rng.normal(size=(4, 8))).astype(np.float32) for _ in range(4)]
    queues = {"image": unit(rng.normal(size=(6, 8))).astype(np.float32),
              "text": unit(rng.normal(size=(6, 8))).astype(np.float32),
              "idx": np.array([7, -1, 2, -1, 5, 9], np.int32), "ptr": np.int32(0)}
    return f, queues


def np_itc(img, txt, img_m, txt_m, queues, temp, alpha, ids=None):
    img_all = np.concatenate([img_m, queues["image"]])
    txt_all = np.concatenate([txt_m, queues["text"]])
    if ids is None:
        pos = np.eye(4, 10)
    else:
        pos = (ids[:, None] == np.concatenate([ids, queues["idx"]])[None]).astype(np.float64)
    pos = pos / pos.sum(1, keepdims=True)
    t_i2t = alpha * np_softmax(img_m @ txt_all.T / temp) + (1 - alpha) * pos
    t_t2i = alpha * np_softmax(txt_m @ img_all.T / temp) + (1 - alpha) * pos
    l_i2t = -(np_log_softmax(img @ txt_all.T / temp) * t_i2t).sum(1).mean()
    l_t2i = -(np_log_softmax(txt @ img_all.T / temp) * t_t2i).sum(1).mean()
    return (l_i2t + l_t2i) / 2


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_itc_matches_numpy(feats, alpha):
    (img, txt, img_m, txt_m), queues = feats
    loss, sim_i2t, _ = obj.itc_loss(img, txt, img_m, txt_m, queues, 0.07, alpha)
    assert sim_i2t.shape == (4, 10)
    np.testing.assert_allclose(float(loss), np_itc(img, txt, img_m, txt_m, queues, 0.07, alpha), rtol=1e-5)


def test_itc_with_image_ids_matches_numpy(feats):
    (img, txt, img_m, txt_m), queues = feats
    ids = np.array([7, 3, 7, 9], np.int32)  # two captions of image 7; image 7 and 9 also in the queue
    loss, _, _ = obj.itc_loss(img, txt, img_m, txt_m, queues, 0.05, 0.4, jnp.asarray(ids))
    np.testing.assert_allclose(float(loss), np_itc(img, txt, img_m, txt_m, queues, 0.05, 0.4, ids), rtol=1e-5)


def test_itm_loss_matches_numpy_with_injected_negatives():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(9, 2)).astype(np.float32)
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0], np.int32)
    weights = np.array([1, 1, 1, 1, 0, 1, 1, 1, 0], np.float32)  # two negatives had no valid candidate
    nll = -np_log_softmax(logits)[np.arange(9), labels]
    want = (nll * weights).sum() / weights.sum()
    np.testing.assert_allclose(float(obj.itm_loss(logits, labels, weights)), want, rtol=1e-6)


def test_lm_loss_matches_numpy_label_smoothing():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32)
    ids = np.array([[101, 4, 5, 102, 0], [101, 6, 102, 0, 0]], np.int32)
    mask = (ids > 0).astype(np.int32)
    dec, labels = obj.lm_targets(jnp.asarray(ids), jnp.asarray(mask), bos_token_id=7)
    assert dec[:, 0].tolist() == [7, 7]
    labels = np.asarray(labels)
    assert labels.tolist() == [[7, 4, 5, 102, -100], [7, 6, 102, -100, -100]]
    labels = np.where(labels > 10, 3, labels)  # keep ids inside the toy vocabulary
    lp = np_log_softmax(logits[:, :-1])
    tgt = labels[:, 1:]
    valid = tgt != -100
    nll = -np.take_along_axis(lp, np.where(valid, tgt, 0)[..., None], -1)[..., 0]
    smooth = -lp.mean(-1)
    want = ((0.9 * nll + 0.1 * smooth) * valid).sum() / valid.sum()
    np.testing.assert_allclose(float(obj.lm_loss(logits, jnp.asarray(labels), 0.1)), want, rtol=1e-5)


def test_lm_targets_mask_prompt_tokens():
    ids = jnp.array([[101, 1037, 3861, 1997, 5, 6, 102, 0]])
    mask = (ids > 0).astype(jnp.int32)
    _, labels = obj.lm_targets(ids, mask, 30522, prompt_length=4)
    assert np.asarray(labels).tolist() == [[-100, -100, -100, -100, 5, 6, 102, -100]]


def test_negative_sampling_follows_weights_and_excludes_positives():
    sim = jnp.array([[5.0, 4.0, -9.0], [0.0, 5.0, 0.0], [3.0, 0.0, 5.0]])
    w = obj.negative_weights(sim, jnp.eye(3, dtype=bool))
    keys = jax.random.split(jax.random.key(0), 2000)
    idx = np.stack([np.asarray(obj.sample_negatives(k, w)[0]) for k in keys[:400]])
    assert not np.any(idx == np.arange(3))  # never the positive
    p0 = np.asarray(w[0] / w[0].sum())
    np.testing.assert_allclose(np.mean(idx[:, 0] == 1), p0[1], atol=0.03)


def test_negative_sampling_is_nan_safe():
    # batch of one: no candidate at all; all-equal similarities; NaN similarities.
    one = obj.negative_weights(jnp.zeros((1, 1)), jnp.eye(1, dtype=bool))
    idx, valid = obj.sample_negatives(jax.random.key(0), one)
    assert idx.tolist() == [0] and valid.tolist() == [False]
    idx, valid = obj.sample_negatives(jax.random.key(1), obj.negative_weights(jnp.ones((4, 4)), jnp.eye(4, dtype=bool)))
    assert valid.all() and not np.any(np.asarray(idx) == np.arange(4))
    sim = jnp.full((3, 3), jnp.nan)
    idx, valid = obj.sample_negatives(jax.random.key(2), obj.negative_weights(sim, jnp.eye(3, dtype=bool)))
    assert valid.all() and not np.any(np.asarray(idx) == np.arange(3))
    # same-image exclusion: images 0 and 1 are the same picture, so 0's only negative is 2.
    negs = obj.hard_negative_batch(jax.random.key(3), jnp.zeros((3, 5)), jnp.zeros((3, 5)), jnp.array([4, 4, 8]))
    assert negs["image_for_text"][0] == 2 and negs["text_for_image"][1] == 2


def np_negative_probs(sim, exclude, eps):
    """Normalised sampling probabilities of BLIP's ITM negatives: softmax(sim) + eps, excluded zeroed."""
    w = np_softmax(sim.astype(np.float64)) + eps
    w[exclude] = 0.0
    return w / w.sum(1, keepdims=True)


def sampled_frequencies(negs, key, b):
    """(B, B) frequency of each candidate over the sampled draws (leading axis) of ``negs[key]``."""
    picks = np.asarray(negs[key])
    return np.stack([np.bincount(picks[:, i], minlength=b) for i in range(b)]) / picks.shape[0]


@pytest.fixture
def itm_batch():
    """Online features whose text partners are close; momentum text features noisier (as early in
    training), so that the pretraining and retrieval samplers differ; images 0 and 1 are one image."""
    rng = np.random.default_rng(5)
    img = unit(rng.normal(size=(6, 8)))
    txt = unit(img + 0.4 * rng.normal(size=(6, 8)))
    img_m = unit(img + 0.6 * rng.normal(size=(6, 8)))
    txt_m = unit(txt + 0.6 * rng.normal(size=(6, 8)))
    ids = np.array([0, 0, 1, 2, 3, 4], np.int32)
    return [x.astype(np.float32) for x in (img, txt, img_m, txt_m)], ids


def test_pretraining_itm_negatives_match_numpy(itm_batch):
    """blip_pretrain.py: softmax(in-batch block of ITC's sim_i2t / sim_t2i, online x momentum
    features) + 1e-4, the positive zeroed; the sampled frequencies follow it."""
    (img, txt, img_m, txt_m), _ = itm_batch
    temp, b = 0.1, 6
    queues = {"image": img_m[:2], "text": txt_m[:2], "idx": np.full((2,), -1, np.int32)}
    _, sim_i2t, sim_t2i = obj.itc_loss(img, txt, img_m, txt_m, queues, temp, 0.4)
    p_i2t = np_negative_probs(img @ txt_m.T / temp, np.eye(b, dtype=bool), 1e-4)
    p_t2i = np_negative_probs(txt @ img_m.T / temp, np.eye(b, dtype=bool), 1e-4)
    w = np.asarray(obj.negative_weights(sim_i2t[:, :b], jnp.eye(b, dtype=bool)), np.float64)
    np.testing.assert_allclose(w / w.sum(1, keepdims=True), p_i2t, rtol=1e-4, atol=1e-7)
    keys = jax.random.split(jax.random.key(0), 4000)
    negs = jax.vmap(lambda k: obj.hard_negative_batch(k, sim_i2t, sim_t2i))(keys)
    np.testing.assert_allclose(sampled_frequencies(negs, "text_for_image", b), p_i2t, atol=0.03)
    np.testing.assert_allclose(sampled_frequencies(negs, "image_for_text", b), p_t2i, atol=0.03)


def test_retrieval_itm_negatives_match_numpy(itm_batch):
    """blip_retrieval.py: softmax(ONLINE image x ONLINE text features / temp), no + 1e-4, every
    same-image pair zeroed; sampled frequencies follow it, and differ from the pretraining rule."""
    (img, txt, img_m, txt_m), ids = itm_batch
    temp, b = 0.1, 6
    same = ids[:, None] == ids[None, :]
    p_i2t = np_negative_probs(img @ txt.T / temp, same, 0.0)
    p_t2i = np_negative_probs(txt @ img.T / temp, same, 0.0)
    sim_i2t, sim_t2i = obj.retrieval_similarities(img, txt, temp)
    np.testing.assert_allclose(np.asarray(sim_i2t), img @ txt.T / temp, rtol=1e-5, atol=1e-5)
    for sim, want in ((sim_i2t, p_i2t), (sim_t2i, p_t2i)):
        w = np.asarray(obj.negative_weights(sim, jnp.asarray(same), 0.0), np.float64)
        np.testing.assert_allclose(w / w.sum(1, keepdims=True), want, rtol=1e-4, atol=1e-7)
    keys = jax.random.split(jax.random.key(1), 4000)
    negs = jax.vmap(lambda k: obj.retrieval_negative_batch(k, img, txt, temp, jnp.asarray(ids)))(keys)
    assert np.asarray(negs["valid_text_for_image"]).all() and np.asarray(negs["valid_image_for_text"]).all()
    f_i2t = sampled_frequencies(negs, "text_for_image", b)
    f_t2i = sampled_frequencies(negs, "image_for_text", b)
    assert f_i2t[same].sum() == 0 and f_t2i[same].sum() == 0  # never a caption of the same image
    np.testing.assert_allclose(f_i2t, p_i2t, atol=0.03)
    np.testing.assert_allclose(f_t2i, p_t2i, atol=0.03)
    # The pretraining rule (online x momentum, + 1e-4) on this batch is a different distribution.
    p_pre = np_negative_probs(img @ txt_m.T / temp, same, 1e-4)
    assert np.abs(p_pre - p_i2t).max() > 0.1


@pytest.mark.parametrize("use_ids,mode,sampler", [(False, "online", "hard_negative_batch"),
                                                  (True, "online", "retrieval_negative_batch"),
                                                  (True, "itc", "hard_negative_batch")])
def test_step_picks_the_itm_sampler_of_its_stage(monkeypatch, use_ids, mode, sampler):
    """Pretraining samples from ITC's similarities; retrieval fine-tuning from the online image and
    text features and the current temperature (objective.retrieval_itm_negatives 'online', the
    paper configs) or, with 'itc', as pretraining (the tiny configs' recorded runs)."""
    from blip_jax.train.step import ObjectiveConfig, blip_losses

    model = BlipPretrain(tiny_config(), rngs=nnx.Rngs(0))  # no dropout: training features = eval features
    rng = np.random.default_rng(0)
    batch = {"pixel_values": rng.normal(size=(4, 16, 16, 3)).astype(np.float32),
             "input_ids": rng.integers(3, 90, (4, 12)).astype(np.int32),
             "attention_mask": np.ones((4, 12), np.int32), "image_id": np.array([3, 3, 5, 8], np.int32)}
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    feat_m = [jnp.asarray(unit(rng.normal(size=(4, 16))), jnp.float32) for _ in range(2)]
    seen = {}

    def spy(name):
        real = getattr(obj, name)

        def fn(*args):
            seen[name] = [np.asarray(a) if a is not None else None for a in args[1:]]
            return real(*args)
        return fn

    for name in ("hard_negative_batch", "retrieval_negative_batch"):
        monkeypatch.setattr(obj, name, spy(name))
    ocfg = ObjectiveConfig(bos_token_id=94, enc_token_id=95, use_image_ids=use_ids, retrieval_itm_negatives=mode,
                           lm_weight=0.0)
    queues = init_queues(jax.random.key(0), 8, 16)
    _, (metrics, _, _) = blip_losses(model, batch, *feat_m, queues, jax.random.key(1), 0.4, ocfg)
    assert list(seen) == [sampler] and np.isfinite(float(metrics["loss_itm"]))
    args = seen[sampler]
    if sampler == "retrieval_negative_batch":
        _, image_feat = model.encode_image(batch["pixel_values"])
        text_feat = model.encode_text(batch["input_ids"], batch["attention_mask"])
        np.testing.assert_allclose(args[0], np.asarray(image_feat), atol=1e-6)
        np.testing.assert_allclose(args[1], np.asarray(text_feat), atol=1e-6)
        assert float(args[2]) == pytest.approx(0.07) and args[3].tolist() == [3, 3, 5, 8]
    else:
        assert args[0].shape == (4, 4 + 8)  # ITC's sim_i2t: the batch's momentum keys, then the queue
        assert (args[2] is not None) == use_ids


def test_queue_wraps_for_any_batch_size():
    q = init_queues(jax.random.key(0), 5, 3)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(q["image"]), axis=1), 1.0, rtol=1e-5)
    feats = jnp.arange(12.0).reshape(4, 3)
    q = enqueue(q, feats, feats, jnp.array([1, 2, 3, 4]))
    q = enqueue(q, feats + 100, feats + 100, jnp.array([5, 6, 7, 8]))  # 8 writes into 5 slots
    assert int(q["ptr"]) == 3
    assert np.asarray(q["idx"]).tolist() == [6, 7, 8, 4, 5]
    np.testing.assert_allclose(np.asarray(q["image"][3]), [9, 10, 11])


def test_decoder_shares_all_but_self_attention_with_encoder():
    model = BlipPretrain(tiny_config(), rngs=nnx.Rngs(0))
    enc, dec = model.text_encoder, model.text_decoder.bert
    assert dec.embeddings is enc.embeddings
    for e, d in zip(enc.layers, dec.layers):
        assert d.crossattention is e.crossattention and d.mlp is e.mlp
        assert d.mlp_norm is e.mlp_norm and d.crossattention_norm is e.crossattention_norm
        assert d.attention is not e.attention and d.attention_norm is not e.attention_norm
    # One array per shared parameter in the split state, and gradients of both roles land in it.
    params = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(params))
    fc1 = [p for p in flat if p[-3:] == ("mlp", "fc1", "kernel") and 0 in p and "vision_model" not in p]
    assert len(fc1) == 1
    self_q = [p for p in flat if p[-3:] == ("attention", "query", "kernel") and 0 in p and "vision_model" not in p]
    assert len(self_q) == 2
    graphdef, params = nnx.split(model, nnx.Param)
    ids = jnp.array([[1, 5, 6, 7]])
    img = jnp.ones((1, 17, 32))

    def dec_loss(p):
        return nnx.merge(graphdef, p).lm_logits(ids, jnp.ones_like(ids), img).sum()

    g = dict(nnx.to_flat_state(jax.grad(dec_loss)(params)))
    assert float(jnp.abs(g[fc1[0]][...]).sum()) > 0  # the decoder's loss reaches the shared FFN


def test_sharded_step_equals_single_device():
    """Meshes (8,1,1), (2,4,1), (2,2,2) of 8 simulated CPU devices vs one device, same global batch."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-m", "tests.sharded_step_check"], env=env, capture_output=True,
                         text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for shape in ("8x1x1", "2x4x1", "2x2x2"):
        assert report[shape]["max_loss_diff"] <= 1e-5, (shape, report[shape])
        assert report[shape]["max_param_diff"] <= 2e-4, (shape, report[shape])
    assert "P('fsdp', 'tensor')" in report["2x2x2"]["specs"]  # really sharded, not replicated


def test_two_processes_match_single_process():
    """2 processes on localhost (jax.distributed, CPU collectives) run 3 steps, each feeding its half
    of the global batch, and agree with the single-process run on the whole batch."""
    import socket

    root = os.path.dirname(os.path.dirname(__file__))
    base = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    single = subprocess.run([sys.executable, "-m", "tests.multiprocess_step_check"], env=base, cwd=root,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    want = json.loads(single.stdout.strip().splitlines()[-1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-m", "tests.multiprocess_step_check"], cwd=root,
                              env={**base, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                                   "JAX_PROCESS_ID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    got = json.loads(outs[0][0].strip().splitlines()[-1])
    assert got["processes"] == 2 and got["devices"] == 2 and want["processes"] == 1
    for a, b in zip(want["losses"], got["losses"]):
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-5, (k, a, b)
    assert abs(want["checksum"] - got["checksum"]) <= 1e-4 * want["checksum"]


def test_momentum_encoders_update_once_per_accumulated_update():
    """With 2 micro-steps per AdamW update, the EMA moves on micro-steps 0 and 2 only, and its
    first move equals the non-accumulated step's; the queues take every micro-batch."""
    import optax

    from blip_jax.train.state import create_train_state, ema_update, momentum_view, split_model
    from blip_jax.train.step import ObjectiveConfig, make_train_step

    gd, params, rest, mgd, ema = split_model(BlipPretrain(tiny_config(), rngs=nnx.Rngs(0)))
    ocfg = ObjectiveConfig(bos_token_id=94, enc_token_id=95, momentum=0.5)
    rng = np.random.default_rng(0)
    batch = {"pixel_values": rng.normal(size=(4, 16, 16, 3)).astype(np.float32),
             "input_ids": rng.integers(3, 90, (4, 12)).astype(np.int32),
             "attention_mask": np.ones((4, 12), np.int32)}

    def ema_leaves(state):
        return [np.asarray(x) for x in jax.tree.leaves(state.ema)]

    def run(accum, steps):
        tx = optax.MultiSteps(optax.adamw(1e-2), accum) if accum > 1 else optax.adamw(1e-2)
        state = create_train_state(params, rest, ema, tx, jax.random.key(0), 40, 16)
        step = jax.jit(make_train_step(gd, mgd, tx, lambda s: 1e-2, ocfg, accum_steps=accum))
        out = [state]
        for _ in range(steps):
            state, _ = step(state, batch)
            out.append(state)
        return out

    acc = run(2, 4)  # acc[i]: the state after i micro-steps; AdamW updates land at micro-steps 1, 3
    moved = [max(float(np.abs(a - b).max()) for a, b in zip(ema_leaves(s1), ema_leaves(s0)))
             for s0, s1 in zip(acc, acc[1:])]
    # Micro-step 3 starts with parameters that differ from their EMA (updated at step 1): a per
    # micro-step EMA would move there. Only micro-step 2, the first after an update, may move it.
    assert moved[2] > 1e-6 and moved[1] == 0.0 and moved[3] == 0.0, moved
    model = nnx.merge(gd, acc[2].params, acc[2].rest)
    expected = ema_update(acc[2].ema, nnx.state(momentum_view(model), nnx.Param), 0.5)
    for a, b in zip(ema_leaves(acc[3]), [np.asarray(x) for x in jax.tree.leaves(expected)]):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert int(acc[4].queues["ptr"]) == (4 * 4) % 40


def test_step_with_dropout_and_drop_path():
    """The paper configs' regularisation (text dropout 0.1, ViT drop path 0.1 as ViT-L): the online
    encoders are stochastic in the step, the momentum features deterministic (the EMA forward, as
    evaluated), and the jitted step trains."""
    import optax

    from blip_jax.train.state import create_train_state, split_model
    from blip_jax.train.step import ObjectiveConfig, _momentum_features, blip_losses, make_train_step

    config = tiny_config()
    config.text_config.hidden_dropout_prob = config.text_config.attention_probs_dropout_prob = 0.1
    config.vision_config.drop_path_rate = 0.1
    model = BlipPretrain(config, rngs=nnx.Rngs(0))
    gd, params, rest, mgd, ema = split_model(model)
    rng = np.random.default_rng(0)
    batch = {"pixel_values": rng.normal(size=(4, 16, 16, 3)).astype(np.float32),
             "input_ids": rng.integers(3, 90, (4, 12)).astype(np.int32),
             "attention_mask": np.ones((4, 12), np.int32)}
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    img_m, txt_m = _momentum_features(mgd, ema, batch, model)
    _, want_img = model.encode_image(batch["pixel_values"])
    np.testing.assert_allclose(np.asarray(img_m), np.asarray(want_img), atol=1e-6)  # EMA = online at start
    np.testing.assert_allclose(np.asarray(txt_m), np.asarray(model.encode_text(batch["input_ids"],
                                                                              batch["attention_mask"])), atol=1e-6)
    ocfg = ObjectiveConfig(bos_token_id=94, enc_token_id=95)
    queues = init_queues(jax.random.key(0), 40, 16)
    losses = [float(blip_losses(model, batch, img_m, txt_m, queues, jax.random.key(1), 0.4, ocfg)[0])
              for _ in range(2)]
    assert losses[0] != losses[1]  # fresh dropout masks each call
    tx = optax.adamw(1e-3)
    state = create_train_state(params, rest, ema, tx, jax.random.key(0), 40, 16)
    step = jax.jit(make_train_step(gd, mgd, tx, lambda s: 1e-3, ocfg))
    for _ in range(2):
        state, metrics = step(state, batch)
        assert all(np.isfinite(float(metrics[k])) for k in ("loss_ita", "loss_itm", "loss_lm"))


def test_shared_image_kv_equals_projecting_per_pair():
    """ITM gathers keys/values projected once per image and the decoder reuses them: same logits
    as cross-attending to the (gathered) image states directly."""
    model = BlipPretrain(tiny_config(), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    states = jnp.asarray(rng.normal(size=(3, 17, 32)), jnp.float32)
    ids = jnp.asarray(rng.integers(3, 90, (6, 7)), jnp.int32)
    mask = jnp.asarray((np.arange(7)[None] < rng.integers(3, 8, (6, 1))).astype(np.int32))
    pick = jnp.array([0, 1, 2, 2, 0, 1])
    kv = model.image_kv(states)
    gathered = [tuple(a[pick] for a in layer) for layer in kv]
    np.testing.assert_allclose(model.itm_logits(ids, mask, image_kv=gathered),
                               model.itm_logits(ids, mask, states[pick]), atol=1e-5)
    np.testing.assert_allclose(model.lm_logits(ids[:3], mask[:3], image_kv=kv),
                               model.lm_logits(ids[:3], mask[:3], states), atol=1e-5)


def test_step_outputs_all_reuse_donated_buffers():
    """As the trainer jits it (jit_step), every output of the pretraining step aliases a
    donated input, so no step allocates output memory; the metrics equal the plain step's."""
    import re

    import optax

    from blip_jax.train.state import create_train_state, split_model
    from blip_jax.train.step import (
        ObjectiveConfig,
        initial_metrics_buffer,
        jit_step,
        make_train_step,
        with_metrics_buffer,
    )

    gd, params, rest, mgd, ema = split_model(BlipPretrain(tiny_config(), rngs=nnx.Rngs(0)))
    tx = optax.adamw(1e-3)
    state = create_train_state(params, rest, ema, tx, jax.random.key(0), 40, 16)
    rng = np.random.default_rng(0)
    batch = {"pixel_values": rng.normal(size=(4, 16, 16, 3)).astype(np.float32),
             "input_ids": rng.integers(3, 90, (4, 12)).astype(np.int32),
             "attention_mask": np.ones((4, 12), np.int32)}
    step_fn = make_train_step(gd, mgd, tx, lambda s: 1e-3, ObjectiveConfig(bos_token_id=94, enc_token_id=95))
    _, plain = jax.jit(step_fn)(state, batch)
    buffer = initial_metrics_buffer(step_fn, state, batch)
    compiled = jit_step(step_fn).lower(state, batch, buffer).compile()
    header = compiled.as_text().split("\n", 1)[0]
    aliases = re.findall(r"\{(\d+)\}: \((\d+), \{\}, may-alias\)", header)
    n_out = len(jax.tree.leaves(jax.eval_shape(with_metrics_buffer(step_fn), state, batch, buffer)))
    assert len(aliases) == n_out and len({o for o, _ in aliases}) == n_out
    state, metrics = compiled(state, batch, buffer)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(buffer))  # written in place
    for k in plain:
        np.testing.assert_allclose(metrics[k], plain[k], rtol=1e-5, atol=1e-6)
    state, metrics = compiled(state, batch, metrics)  # the previous metrics are the next buffer
    assert np.isfinite(float(metrics["loss"]))
