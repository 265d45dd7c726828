"""Retrieval evaluation: BLIP itm_eval metric semantics (ties included), the reranked score matrices
against a straightforward per-query computation, and identical results on 1 and 8 devices.

Run as a script (``python -m tests.test_eval_retrieval``) it is the 8-device check: XLA_FLAGS must
set the simulated device count before jax is imported, so the test starts it in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

if __name__ == "__main__":
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from blip_jax.evaluation.retrieval import pooled_auc, retrieval_metrics  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blip_itm_eval(score_i2t, score_t2i, txt2img, img2txt):
    """BLIP's loops, literally (argsort, reversed), with a stable sort so ties are reproducible."""
    ranks = np.zeros(score_i2t.shape[0])
    for i, score in enumerate(score_i2t):
        inds = np.argsort(score, kind="stable")[::-1]
        ranks[i] = min(np.where(inds == t)[0][0] for t in img2txt[i])
    tr = [100.0 * np.mean(ranks < k) for k in (1, 5, 10)]
    ranks = np.zeros(score_t2i.shape[0])
    for i, score in enumerate(score_t2i):
        inds = np.argsort(score, kind="stable")[::-1]
        ranks[i] = np.where(inds == txt2img[i])[0][0]
    ir = [100.0 * np.mean(ranks < k) for k in (1, 5, 10)]
    return tr, ir


def test_pooled_auc_equals_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 200).astype(np.float32)  # many ties
    positive = rng.random(200) < 0.3
    p, n = scores[positive][:, None], scores[~positive][None, :]
    assert pooled_auc(scores, positive) == pytest.approx(np.mean((p > n) + 0.5 * (p == n)), abs=1e-12)
    assert pooled_auc(np.array([3.0, 1.0, 2.0]), np.array([True, False, False])) == 1.0
    assert np.isnan(pooled_auc(np.ones(3), np.zeros(3, bool)))


def test_metrics_hand_worked():
    # 2 images, 4 texts (image 0: texts 0, 1; image 1: texts 2, 3)
    img2txt, txt2img = [[0, 1], [2, 3]], [0, 0, 1, 1]
    s_i2t = np.array([[0.1, 0.9, 0.5, 0.2],   # best own caption (1) at rank 0
                      [0.8, 0.7, 0.6, 0.1]])  # own captions at ranks 2 and 3 -> rank 2
    s_t2i = np.array([[0.2, 0.1], [0.3, 0.4], [0.0, 0.5], [0.9, 0.8]])  # ranks 0, 1, 0, 1
    m = retrieval_metrics(s_i2t, s_t2i, txt2img, img2txt)
    assert m["txt_r1"] == 50.0 and m["txt_r5"] == 100.0 and m["txt_r10"] == 100.0
    assert m["img_r1"] == 50.0 and m["img_r5"] == 100.0
    assert m["txt_r_mean"] == (50 + 100 + 100) / 3 and m["img_r_mean"] == (50 + 100 + 100) / 3
    assert m["r_mean"] == m["txt_r_mean"]


def test_ties_later_index_ranks_first():
    # every score equal: reversed argsort puts the LAST column first
    s = np.zeros((1, 12))
    m = retrieval_metrics(s, np.zeros((12, 1)), [0] * 12, [[11]])
    assert m["txt_r1"] == 100.0  # text 11 is the last index: rank 0
    m = retrieval_metrics(s, np.zeros((12, 1)), [0] * 12, [[0]])
    assert m["txt_r1"] == 0.0 and m["txt_r10"] == 0.0  # text 0 ranks 11th (rank index 11)
    m = retrieval_metrics(s, np.zeros((12, 1)), [0] * 12, [[2]])
    assert m["txt_r5"] == 0.0 and m["txt_r10"] == 100.0  # rank 9
    # -inf outside the top-k ties too: same rule
    s = np.array([[5.0, -np.inf, -np.inf, -np.inf]])
    assert retrieval_metrics(s, np.zeros((4, 1)), [0] * 4, [[1]])["txt_r1"] == 0.0
    r = retrieval_metrics(s, np.zeros((4, 1)), [0] * 4, [[3]])
    assert r["txt_r1"] == 0.0 and r["txt_r5"] == 100.0  # rank 1: right after the finite score


def test_metrics_equal_blip_loops_random_with_ties():
    rng = np.random.default_rng(0)
    n_img, per = 30, 5
    img2txt = [list(range(i * per, (i + 1) * per)) for i in range(n_img)]
    txt2img = np.repeat(np.arange(n_img), per)
    for _ in range(3):
        s_i2t = rng.integers(0, 6, (n_img, n_img * per)).astype(np.float32)  # many ties
        s_t2i = rng.integers(0, 6, (n_img * per, n_img)).astype(np.float32)
        s_i2t[rng.random(s_i2t.shape) < 0.5] = -np.inf
        m = retrieval_metrics(s_i2t, s_t2i, txt2img, img2txt)
        tr, ir = blip_itm_eval(s_i2t, s_t2i, txt2img, img2txt)
        np.testing.assert_allclose([m["txt_r1"], m["txt_r5"], m["txt_r10"]], tr)
        np.testing.assert_allclose([m["img_r1"], m["img_r5"], m["img_r10"]], ir)


# ------------------------------------------------------------------------------- model-level checks


def tiny_model(seed: int = 0):
    from flax import nnx

    from blip_jax import BlipForImageTextRetrieval
    from blip_jax.configuration import BlipConfig, BlipTextConfig, BlipVisionConfig

    tc = BlipTextConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=32, bos_token_id=62, enc_token_id=63,
                        sep_token_id=3, use_enc_token_for_itm=True)
    vc = BlipVisionConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=48, initializer_range=0.2)
    cfg = BlipConfig.from_text_vision_configs(tc, vc, image_text_hidden_size=16)
    model = BlipForImageTextRetrieval(cfg, rngs=nnx.Rngs(seed))
    # make ITM logits matter as much as the similarities
    model.itm_head.kernel[...] = model.itm_head.kernel[...] * 20
    return model


def fake_data(n_img: int = 13, per: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    pixels = rng.normal(size=(n_img, 16, 16, 3)).astype(np.float32)
    n_txt = n_img * per
    lengths = rng.integers(3, 10, n_txt)
    ids = np.zeros((n_txt, 12), np.int32)
    for t, n in enumerate(lengths):
        ids[t, 0], ids[t, 1:n - 1], ids[t, n - 1] = 2, rng.integers(5, 60, n - 2), 3
    mask = (ids != 0).astype(np.int32)
    img2txt = [list(range(i * per, (i + 1) * per)) for i in range(n_img)]
    txt2img = np.repeat(np.arange(n_img), per)
    return pixels, (ids, mask), txt2img, img2txt


def batches(pixels, batch_size: int, order):
    """Padded eval-pipeline-style batches visiting the images in `order`."""
    out = []
    for s in range(0, len(order), batch_size):
        sel = order[s:s + batch_size]
        b = {"pixel_values": np.zeros((batch_size,) + pixels.shape[1:], np.float32),
             "mask": np.zeros(batch_size, np.int32), "index": np.zeros(batch_size, np.int32)}
        b["pixel_values"][: len(sel)], b["mask"][: len(sel)], b["index"][: len(sel)] = pixels[sel], 1, sel
        out.append(b)
    return out


def run_eval(mesh, batch_size, order, k_test, rerank_batch_size, text_batch_size, seed=0, n_img=13):
    from blip_jax.evaluation.retrieval import evaluate_retrieval

    pixels, texts, txt2img, img2txt = fake_data(n_img=n_img, seed=seed)
    return evaluate_retrieval(tiny_model(seed), batches(pixels, batch_size, order), texts, txt2img, img2txt, mesh,
                              k_test=k_test, rerank_batch_size=rerank_batch_size, text_batch_size=text_batch_size)


def test_rerank_matches_per_query_reference():
    import jax
    import jax.numpy as jnp

    from blip_jax.train.mesh import make_mesh

    pixels, (ids, mask), txt2img, img2txt = fake_data()
    k = 7
    out = run_eval(make_mesh(devices=jax.devices()[:1]), 4, np.arange(13)[::-1].copy(), k, 3, 16)
    model = tiny_model()
    st = model.vision_model(pixels).last_hidden_state
    img_f = np.asarray(model.image_features(st))
    txt_f = np.asarray(model.text_features(ids, mask))
    sim = img_f @ txt_f.T
    np.testing.assert_allclose(out.sim_i2t, sim, atol=1e-5)
    ref_i2t = np.full(sim.shape, -np.inf, np.float32)
    for i in range(sim.shape[0]):  # BLIP's loop, one query at a time
        top = np.argsort(-sim[i], kind="stable")[:k]
        logits, _ = model.itm_logits(jnp.asarray(ids[top]), np.repeat(np.asarray(st[i:i + 1]), k, 0), mask[top])
        ref_i2t[i, top] = np.asarray(logits)[:, 1] + sim[i, top]
    ref_t2i = np.full(sim.T.shape, -np.inf, np.float32)
    for t in range(sim.shape[1]):
        top = np.argsort(-sim[:, t], kind="stable")[:k]
        logits, _ = model.itm_logits(jnp.asarray(np.repeat(ids[t:t + 1], k, 0)), np.asarray(st)[top],
                                     np.repeat(mask[t:t + 1], k, 0))
        ref_t2i[t, top] = np.asarray(logits)[:, 1] + sim[top, t]
    assert np.isfinite(out.score_i2t).sum(1).tolist() == [k] * 13
    np.testing.assert_array_equal(np.isfinite(out.score_i2t), np.isfinite(ref_i2t))
    np.testing.assert_array_equal(np.isfinite(out.score_t2i), np.isfinite(ref_t2i))
    np.testing.assert_allclose(out.score_i2t, ref_i2t, atol=1e-4)
    np.testing.assert_allclose(out.score_t2i, ref_t2i, atol=1e-4)
    ref = retrieval_metrics(ref_i2t, ref_t2i, txt2img, img2txt)
    assert out.metrics["txt_r1"] == ref["txt_r1"] and out.metrics["img_r10"] == ref["img_r10"]
    assert {k_: out.metrics[k_] for k_ in ref} == ref
    # the ITM term is really there (and large): scores are not the similarities
    fin = np.isfinite(out.score_i2t)
    assert np.abs(out.score_i2t[fin] - sim[fin]).mean() > 0.5
    # diagnostics: recall from the similarity alone, and ITM / ITC AUCs over the candidates
    itc = retrieval_metrics(sim, sim.T, txt2img, img2txt)
    assert {k_: out.metrics[f"itc_{k_}"] for k_ in itc} == pytest.approx(itc)
    for name, ref, truth in (("i2t", ref_i2t, lambda q, c: c in img2txt[q]),
                             ("t2i", ref_t2i, lambda q, c: txt2img[q] == c)):
        s = sim if name == "i2t" else sim.T
        pos, neg = {"itm": [], "itc": []}, {"itm": [], "itc": []}
        for q, c in zip(*np.nonzero(np.isfinite(ref))):
            for kind, value in (("itm", ref[q, c] - s[q, c]), ("itc", s[q, c])):
                (pos if truth(q, c) else neg)[kind].append(value)
        for kind in ("itm", "itc"):
            p, n = np.array(pos[kind])[:, None], np.array(neg[kind])[None, :]
            want = np.mean((p > n) + 0.5 * (p == n))
            assert out.metrics[f"{kind}_auc_{name}"] == pytest.approx(want, abs=1e-3), (kind, name)


def test_rerank_chunks_that_do_not_divide_the_counts():
    """rerank_batch_size 6 splits neither the 13 images nor the 65 texts: the scores equal those of
    one chunk holding every query (rerank_batch_size 128)."""
    import jax

    from blip_jax.train.mesh import make_mesh

    mesh = make_mesh(devices=jax.devices()[:1])
    order = np.arange(13)
    whole = run_eval(mesh, 4, order, 7, 128, 16)
    chunked = run_eval(mesh, 4, order, 7, 6, 16)
    for name in ("score_i2t", "score_t2i"):
        a, b = getattr(chunked, name), getattr(whole, name)
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
        assert np.isfinite(a).sum() == 7 * a.shape[0]
        np.testing.assert_allclose(a[np.isfinite(a)], b[np.isfinite(b)], atol=1e-5)
    assert {k: chunked.metrics[k] for k in ("txt_r1", "txt_r5", "img_r1", "img_r5", "r_mean")} == \
        {k: whole.metrics[k] for k in ("txt_r1", "txt_r5", "img_r1", "img_r5", "r_mean")}


def sharded_check() -> dict:
    import jax

    from blip_jax.train.mesh import make_mesh

    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(1)
    order = rng.permutation(13)
    one = run_eval(make_mesh(devices=jax.devices()[:1]), 4, np.arange(13), 9, 4, 16)
    report = {"one": one.metrics}
    for name, shape, bs in (("8x1x1", (8, 1, 1), 8), ("2x2x2", (2, 2, 2), 16)):
        out = run_eval(make_mesh(shape), bs, order, 9, 4, 24)
        report[name] = {"metrics": out.metrics,
                        "max_i2t_diff": float(np.nanmax(np.abs(np.nan_to_num(out.score_i2t - one.score_i2t)))),
                        "max_t2i_diff": float(np.nanmax(np.abs(np.nan_to_num(out.score_t2i - one.score_t2i)))),
                        "same_topk": bool((np.isfinite(out.score_i2t) == np.isfinite(one.score_i2t)).all()
                                          and (np.isfinite(out.score_t2i) == np.isfinite(one.score_t2i)).all())}
    # rerank_batch_size not a multiple of the data-parallel size: chunks of round_up(rbs, dp) rows
    # must tile the padded images and texts (2 devices, rbs 3: chunks of 4; 3 devices, rbs 8: of 9),
    # against one chunk holding every query on one device
    for name, ndev, rbs, n_img in (("2dev_rbs3", 2, 3, 6), ("3dev_rbs8", 3, 8, 20)):
        whole = run_eval(make_mesh(devices=jax.devices()[:1]), 4, np.arange(n_img), 5, 128, 16, n_img=n_img)
        out = run_eval(make_mesh((ndev, 1, 1), devices=jax.devices()[:ndev]), ndev, np.arange(n_img), 5, rbs, 16,
                       n_img=n_img)
        report[name] = {"metrics_equal": all(out.metrics[k] == whole.metrics[k] for k in
                                             ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10")),
                        "max_i2t_diff": float(np.nanmax(np.abs(np.nan_to_num(out.score_i2t - whole.score_i2t)))),
                        "max_t2i_diff": float(np.nanmax(np.abs(np.nan_to_num(out.score_t2i - whole.score_t2i)))),
                        "same_topk": bool((np.isfinite(out.score_i2t) == np.isfinite(whole.score_i2t)).all()
                                          and (np.isfinite(out.score_t2i) == np.isfinite(whole.score_t2i)).all())}
    return report


def test_identical_on_1_and_8_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "tests.test_eval_retrieval"], env=env, capture_output=True,
                         text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    one = report["one"]
    assert 0 < one["txt_r10"] <= 100 and one["num_images"] == 13 and one["num_texts"] == 65
    for shape in ("8x1x1", "2x2x2"):
        r = report[shape]
        assert r["metrics"] == one, (shape, r["metrics"], one)
        assert r["same_topk"] and r["max_i2t_diff"] <= 1e-5 and r["max_t2i_diff"] <= 1e-5, (shape, r)
    for case in ("2dev_rbs3", "3dev_rbs8"):
        r = report[case]
        assert r["metrics_equal"] and r["same_topk"] and r["max_i2t_diff"] <= 1e-5 and r["max_t2i_diff"] <= 1e-5, \
            (case, r)


if __name__ == "__main__":
    print(json.dumps(sharded_check()))


def test_itm_with_enc_token_takes_numpy_ids():
    """The [ENC] swap (original flavour) works on the numpy arrays a tokenizer returns, and equals
    feeding the swapped ids with the HF flavour."""
    import dataclasses

    model = tiny_model()
    pixels, (ids, mask), _, _ = fake_data(n_img=2, per=1)
    ours = np.asarray(model(input_ids=ids, pixel_values=pixels, attention_mask=mask).itm_score)
    assert ours.shape == (2, 2)
    model.config.text_config = dataclasses.replace(model.config.text_config, use_enc_token_for_itm=False)
    swapped = ids.copy()
    swapped[:, 0] = 63
    np.testing.assert_allclose(
        ours, np.asarray(model(input_ids=swapped, pixel_values=pixels, attention_mask=mask).itm_score), atol=1e-6)
