"""Image-text retrieval evaluation (BLIP's ``evaluation`` + ``itm_eval``), jit-compiled and sharded.

Protocol (BLIP, COCO/Flickr Karpathy test):

1. every image -> ViT states (N_img, S, D_v) and normalised ITC feature (N_img, E); every text ->
   normalised ITC feature (N_txt, E) from the unimodal text encoder;
2. cosine similarity ``sim = img_feat @ txt_feat.T`` (N_img, N_txt), no temperature;
3. for every image query the ``k_test`` most similar texts, for every text query the ``k_test``
   most similar images, are rescored as ``itm_logit[:, 1] + sim`` (the raw "match" logit of the ITM
   head over the image-grounded text encoder, plus the similarity); every other entry is -inf;
4. `retrieval_metrics` turns the two score matrices into recall@{1,5,10}.

Diagnostics beyond BLIP's numbers: the same recalls from the similarity alone (``itc_*``, what the
rerank starts from) and, among each query's k_test candidates, the AUC of the ITM match logit
(``itm_auc_i2t`` / ``itm_auc_t2i``) and of the similarity (``itc_auc_*``) for true against false
pairs. The candidates are the hardest negatives ITC knows, so an ITM AUC above the ITC one is what
the ITM head adds.

Distribution: images come from `blip_jax.data.pipelines.eval_pipeline` (each process its strided
share, padded batches with ``mask``/``index``), are assembled into global batches on the mesh and
then reordered into annotation order (so results do not depend on the device/process count). Texts
are tokenised on every process (they are small) and put on the mesh. All heavy work runs in
jit-compiled functions whose leading (query / batch) dimension is sharded over the mesh's data axes
('data', 'fsdp'); the rerank runs in fixed-size query chunks (padded), so it compiles once per
direction. Shape letters: I images, T texts (both padded to a chunk multiple), S image tokens,
D_v vision width, L text length, E embedding width, Q queries per rerank chunk, K = k_test.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Metrics


def _ranks(scores: np.ndarray, targets: Sequence[Sequence[int]]) -> np.ndarray:
    """Best 0-based rank of any target per query row.

    Equivalent to ``inds = np.argsort(row, kind="stable")[::-1]; min(where(inds == t))``: entries
    are ordered by score descending and, among equal scores, the LATER column index ranks first
    (the reversal of an ascending stable sort). This is BLIP's ``np.argsort(score)[::-1]`` with
    numpy's small-array (stable) behaviour pinned down, so that ties (e.g. the -inf of every
    candidate outside the top-k) are broken deterministically. O(N) per query, no sort.
    """
    n_q, n_c = scores.shape
    cols = np.arange(n_c)
    out = np.empty(n_q, np.int64)
    for q in range(n_q):
        row = scores[q]
        best = n_c
        for t in targets[q]:
            s = row[t]
            rank = int(np.count_nonzero(row > s) + np.count_nonzero((row == s) & (cols > t)))
            best = min(best, rank)
        out[q] = best
    return out


def retrieval_metrics(score_i2t: np.ndarray, score_t2i: np.ndarray, txt2img: Sequence[int],
                      img2txt: Sequence[Sequence[int]]) -> dict[str, float]:
    """BLIP's ``itm_eval``: recall (percent) at 1/5/10 in both directions.

    score_i2t: (N_img, N_txt) float, score_t2i: (N_txt, N_img) float (higher = better; -inf allowed).
    txt2img: (N_txt,) int, the image of each text. img2txt: per image, the list of its texts.
    Image query (text retrieval, ``txt_r*``): rank = best rank among its captions. Text query (image
    retrieval, ``img_r*``): rank of its image. Ties: see `_ranks` (later index ranks first).
    Returns txt_r1, txt_r5, txt_r10, txt_r_mean, img_r1, img_r5, img_r10, img_r_mean, r_mean.
    """
    score_i2t, score_t2i = np.asarray(score_i2t), np.asarray(score_t2i)
    n_img, n_txt = score_i2t.shape
    if score_t2i.shape != (n_txt, n_img):
        raise ValueError(f"score_t2i must be {(n_txt, n_img)}, got {score_t2i.shape}")
    if len(img2txt) != n_img or len(txt2img) != n_txt:
        raise ValueError("img2txt / txt2img lengths do not match the score matrices")
    r_i2t = _ranks(score_i2t, img2txt)
    r_t2i = _ranks(score_t2i, [[int(i)] for i in txt2img])

    def recall(ranks, k):
        return 100.0 * float(np.count_nonzero(ranks < k)) / len(ranks)

    out = {f"txt_r{k}": recall(r_i2t, k) for k in (1, 5, 10)}
    out.update({f"img_r{k}": recall(r_t2i, k) for k in (1, 5, 10)})
    out["txt_r_mean"] = (out["txt_r1"] + out["txt_r5"] + out["txt_r10"]) / 3
    out["img_r_mean"] = (out["img_r1"] + out["img_r5"] + out["img_r10"]) / 3
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out


def _rank_missing_last(score_i2t: np.ndarray, img2txt: Sequence[Sequence[int]], missing: np.ndarray) -> None:
    """A missing image as query (no feature): its own captions rank last (in place)."""
    for i in np.nonzero(missing)[0]:
        score_i2t[i] = 0.0
        score_i2t[i, list(img2txt[i])] = -np.inf


def _scatter_candidates(scores: np.ndarray, idx: np.ndarray, n_cols: int, img2txt=None, missing=None) -> np.ndarray:
    """(Q, K) candidate scores at columns ``idx`` -> (Q, n_cols) with -inf elsewhere; image queries
    whose image is ``missing`` rank their captions last."""
    out = np.full((scores.shape[0], n_cols), -np.inf, np.float32)
    np.put_along_axis(out, idx, scores, axis=1)
    if missing is not None:
        _rank_missing_last(out, img2txt, missing)
    return out


def pooled_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(a random positive outscores a random negative), ties counting half (Mann-Whitney U), over
    the flattened ``scores`` float and ``positive`` bool of equal shape; NaN without both kinds."""
    scores, positive = np.ravel(scores), np.ravel(positive).astype(bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mid_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based rank of each distinct value, ties averaged
    u = mid_rank[inverse][positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


# ---------------------------------------------------------------------------------------------
# Device helpers


def data_axes(mesh) -> tuple[str, ...]:
    return tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)


def _dp(mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in data_axes(mesh)]))


def rows_sharding(mesh) -> NamedSharding:
    """Leading dimension over the data axes, the rest replicated."""
    return NamedSharding(mesh, P(data_axes(mesh) or None))


def to_host(x) -> np.ndarray:
    """A (possibly multi-process) jax.Array -> the full numpy array on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def put_global(arr: np.ndarray, sharding) -> jax.Array:
    """A numpy array that every process holds in full -> a global array with `sharding`."""
    arr = np.asarray(arr)
    return jax.make_array_from_callback(arr.shape, sharding, lambda idx: arr[idx])


def _round_up(n: int, m: int) -> int:
    return max(m, int(math.ceil(n / m)) * m)


def _pad_rows(a: np.ndarray, n: int, value=0) -> np.ndarray:
    if a.shape[0] == n:
        return a
    pad = np.full((n - a.shape[0],) + a.shape[1:], value, a.dtype)
    return np.concatenate([a, pad])


def split_model(model, mesh):
    """-> (graphdef, state placed on `mesh` by the default logical-axis rules)."""
    from blip_jax.train.mesh import state_shardings

    graphdef, state = nnx.split(model)
    return graphdef, jax.device_put(state, state_shardings(state, mesh))


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclasses.dataclass
class RetrievalOutputs:
    """score_i2t (N_img, N_txt), score_t2i (N_txt, N_img) float32 numpy; sim_i2t the cosine
    similarities (N_img, N_txt); metrics from `retrieval_metrics`; timings in seconds."""

    score_i2t: np.ndarray
    score_t2i: np.ndarray
    sim_i2t: np.ndarray
    metrics: dict[str, float]
    timings: dict[str, float]


def tokenize_texts(tokenizer, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """-> input_ids, attention_mask int32 (N_txt, max_len), padded to max_len (BLIP: 35)."""
    from blip_jax.data.pipelines import tokenize

    return tokenize(tokenizer, list(texts), max_len)


def _block(x):
    jax.block_until_ready(x)
    return x


@functools.lru_cache(maxsize=16)
def _compiled(static_gd, rows, k_i2t: int, k_t2i: int, q: int) -> dict:
    """jit-compiled pieces for one model structure / mesh / k / chunk size, cached across calls so
    that periodic evaluation compiles once (jax's own cache keys on shapes within each)."""
    graphdef = static_gd.graphdef

    @jax.jit
    def embed_images(state, pixel_values):
        m = nnx.merge(graphdef, state)
        image_states = m.vision_model(pixel_values).last_hidden_state
        return image_states, m.image_features(image_states)

    @jax.jit
    def gather_images(states_l, feats_l, perm, present):
        st, ft = jnp.concatenate(states_l), jnp.concatenate(feats_l)
        st = jnp.where(present[:, None, None], st[perm], 0)
        ft = jnp.where(present[:, None], ft[perm], 0)
        return jax.lax.with_sharding_constraint(st, rows), jax.lax.with_sharding_constraint(ft, rows)

    @jax.jit
    def embed_texts(state, ids, mask):
        return nnx.merge(graphdef, state).text_features(ids, mask)

    @jax.jit
    def similarity(img_feats, txt_feats, img_ok, txt_ok):
        sim = jnp.einsum("ie,te->it", img_feats, txt_feats, preferred_element_type=jnp.float32)
        neg = jnp.float32(-jnp.inf)
        sim_i2t = jnp.where(txt_ok[None, :], sim, neg)
        sim_t2i = jnp.where(img_ok[None, :], sim.T, neg)
        sim_i2t = jax.lax.with_sharding_constraint(sim_i2t, rows)
        sim_t2i = jax.lax.with_sharding_constraint(sim_t2i, rows)
        v_i, i_i = jax.lax.top_k(sim_i2t, k_i2t)
        v_t, i_t = jax.lax.top_k(sim_t2i, k_t2i)
        return sim_i2t, (v_i, i_i), (v_t, i_t)

    def chunk(x, start):
        return jax.lax.with_sharding_constraint(jax.lax.dynamic_slice_in_dim(x, start, q), rows)

    @jax.jit
    def rerank_i2t(state, img_states, top_v, top_i, txt_ids, txt_mask, start):
        m = nnx.merge(graphdef, state)
        st, v, i = chunk(img_states, start), chunk(top_v, start), chunk(top_i, start)
        cand_ids = txt_ids[i].reshape(q * k_i2t, -1)  # query-major rows: the ITM folds K rows per image
        cand_mask = txt_mask[i].reshape(q * k_i2t, -1)
        logits, _ = m.itm_logits(cand_ids, st, cand_mask)
        return logits[:, 1].reshape(q, k_i2t) + v

    @jax.jit
    def rerank_t2i(state, img_states, top_v, top_i, txt_ids, txt_mask, start):
        m = nnx.merge(graphdef, state)
        v, i = chunk(top_v, start), chunk(top_i, start)
        ids, mask = chunk(txt_ids, start), chunk(txt_mask, start)
        cand_states = img_states[i].reshape(q * k_t2i, *img_states.shape[1:])
        logits, _ = m.itm_logits(jnp.repeat(ids, k_t2i, axis=0), cand_states, jnp.repeat(mask, k_t2i, axis=0))
        return logits[:, 1].reshape(q, k_t2i) + v

    return dict(embed_images=embed_images, gather_images=gather_images, embed_texts=embed_texts,
                similarity=similarity, rerank_i2t=rerank_i2t, rerank_t2i=rerank_t2i)


def evaluate_retrieval(
    model,
    image_batches: Iterable[dict],
    texts: Sequence[str] | tuple[np.ndarray, np.ndarray],
    txt2img: Sequence[int],
    img2txt: Sequence[Sequence[int]],
    mesh,
    *,
    tokenizer=None,
    k_test: int = 256,
    max_len: int = 35,
    text_batch_size: int = 128,
    rerank_batch_size: int = 8,
    num_images: int | None = None,
) -> RetrievalOutputs:
    """BLIP retrieval evaluation of a `BlipForImageTextRetrieval`.

    image_batches: per-process batches from `eval_pipeline` (``pixel_values`` (B, H, W, 3) float,
      ``mask`` (B,) 0/1, ``index`` (B,) int = the image's row); every process the same number.
    texts: list of N_txt strings (tokenised with `tokenizer`, ``max_len`` tokens) or already
      tokenised ``(input_ids, attention_mask)`` int (N_txt, L); identical on every process.
    txt2img (N_txt,), img2txt (N_img lists): ground truth for the metrics.
    text_batch_size / rerank_batch_size: global rows per text-encoder call / queries per rerank call
      (rounded up to a multiple of the data-parallel size; need not divide the counts: the rows are
      padded to whole chunks); only speed and memory depend on them.
    Images whose record was skipped (bad file) never get a feature: they rank last as candidates
    and count as misses as queries (``num_images_missing`` in the metrics).
    """
    timings: dict[str, float] = {}
    axes = data_axes(mesh)
    dp = _dp(mesh)
    rows = rows_sharding(mesh)
    rep = NamedSharding(mesh, P())
    graphdef, state = split_model(model, mesh)
    n_img = num_images if num_images is not None else len(img2txt)
    n_txt = len(texts[0]) if isinstance(texts, tuple) else len(texts)
    k_i2t, k_t2i = min(k_test, n_txt), min(k_test, n_img)
    if k_i2t < 1 or k_t2i < 1:
        raise ValueError("need at least one image and one text")
    q = _round_up(rerank_batch_size, dp)
    from blip_jax.generation import _StaticGraphDef

    fns = _compiled(_StaticGraphDef(graphdef, model), rows, k_i2t, k_t2i, q)
    embed_images, gather_images, embed_texts = fns["embed_images"], fns["gather_images"], fns["embed_texts"]
    similarity, rerank_i2t, rerank_t2i = fns["similarity"], fns["rerank_i2t"], fns["rerank_t2i"]

    # ---- images: states + features, in pipeline order, then annotation order ------------------
    from blip_jax.data.distributed import make_global_batch

    t0 = time.perf_counter()
    states_l, feats_l, index_l, mask_l = [], [], [], []
    for batch in image_batches:
        g = make_global_batch({k: batch[k] for k in ("pixel_values", "mask", "index")}, mesh, axes)
        s, f = embed_images(state, g["pixel_values"])
        states_l.append(s)
        feats_l.append(f)
        index_l.append(to_host(g["index"]))
        mask_l.append(to_host(g["mask"]))
    if not states_l:
        raise ValueError("no image batches")
    index = np.concatenate(index_l)
    valid = np.concatenate(mask_l).astype(bool)
    # Padded to whole rerank chunks of q rows (q a multiple of dp, so the rows shard evenly): a
    # dynamic_slice of q rows at start s < n_img then never runs past the end (it would be clamped
    # back, silently scoring other rows).
    n_img_pad = _round_up(n_img, q)
    # perm[i] = row (in pipeline order) holding image i; images never seen point at a padding row
    # (or row 0) and are flagged invalid.
    perm = np.zeros(n_img_pad, np.int32)
    present = np.zeros(n_img_pad, bool)
    perm[index[valid]] = np.nonzero(valid)[0]
    present[index[valid]] = True

    img_states, img_feats = _block(gather_images(states_l, feats_l, put_global(perm, rep), put_global(present, rep)))
    del states_l, feats_l
    timings["embed_images"] = time.perf_counter() - t0

    # ---- texts ----------------------------------------------------------------------------------
    t0 = time.perf_counter()
    if isinstance(texts, tuple):
        ids, tmask = (np.asarray(a, np.int32) for a in texts)
    else:
        if tokenizer is None:
            raise ValueError("texts are strings: pass `tokenizer`")
        ids, tmask = tokenize_texts(tokenizer, texts, max_len)
    n_txt = ids.shape[0]
    tb = _round_up(text_batch_size, dp)
    n_txt_pad = _round_up(n_txt, math.lcm(tb, q))  # whole text-encoder batches and whole rerank chunks
    ids_p, tmask_p = _pad_rows(ids, n_txt_pad), _pad_rows(tmask, n_txt_pad)
    ids_p[n_txt:, 0] = ids[0, 0] if n_txt else 0
    tmask_p[n_txt:, 0] = 1  # padding texts: one attended token, so no row is fully masked

    txt_feats = []
    for c in range(0, n_txt_pad, tb):
        txt_feats.append(embed_texts(state, put_global(ids_p[c:c + tb], rows), put_global(tmask_p[c:c + tb], rows)))
    txt_ids, txt_mask = put_global(ids_p, rep), put_global(tmask_p, rep)
    txt_feats = _block(jax.jit(jnp.concatenate, out_shardings=rows)(txt_feats))
    timings["embed_texts"] = time.perf_counter() - t0

    # ---- similarity + top-k ---------------------------------------------------------------------
    t0 = time.perf_counter()
    txt_valid = np.arange(n_txt_pad) < n_txt

    sim_i2t, (top_v_i2t, top_i_i2t), (top_v_t2i, top_i_t2i) = _block(similarity(
        img_feats, txt_feats, put_global(present, rep), put_global(txt_valid, rep)))
    timings["similarity_topk"] = time.perf_counter() - t0

    # ---- ITM rerank, fixed-size query chunks ----------------------------------------------------
    t0 = time.perf_counter()
    # One chunk in flight at a time: with many collective programs queued at once, XLA's CPU
    # client can run two of them concurrently on different devices and deadlock the all-gathers.
    scores = [_block(rerank_i2t(state, img_states, top_v_i2t, top_i_i2t, txt_ids, txt_mask, s))
              for s in range(0, n_img, q)]
    s_i2t = np.concatenate([to_host(x) for x in scores])[:n_img]
    timings["rerank_i2t"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = [_block(rerank_t2i(state, img_states, top_v_t2i, top_i_t2i, txt_ids, txt_mask, s))
              for s in range(0, n_txt, q)]
    s_t2i = np.concatenate([to_host(x) for x in scores])[:n_txt]
    timings["rerank_t2i"] = time.perf_counter() - t0

    # ---- score matrices + metrics (host) --------------------------------------------------------
    t0 = time.perf_counter()
    idx_i2t, idx_t2i = to_host(top_i_i2t)[:n_img], to_host(top_i_t2i)[:n_txt]
    sim = to_host(sim_i2t)[:n_img, :n_txt]
    missing = ~present[:n_img]
    score_i2t = _scatter_candidates(s_i2t, idx_i2t, n_txt, img2txt, missing)
    score_t2i = _scatter_candidates(s_t2i, idx_t2i, n_img)
    metrics = retrieval_metrics(score_i2t, score_t2i, txt2img, img2txt)
    # The ranking by ITC similarity alone, before the ITM rerank, and how well the ITM "match"
    # logit and the similarity each separate the true pairs among the k_test candidates (the hard
    # negatives): together they say whether the ITM head adds anything to ITC.
    itc_i2t, itc_t2i = sim.copy(), np.where(missing[None, :], -np.inf, sim.T)
    _rank_missing_last(itc_i2t, img2txt, missing)
    metrics.update({f"itc_{k}": v for k, v in retrieval_metrics(itc_i2t, itc_t2i, txt2img, img2txt).items()})
    top_v_i2t, top_v_t2i = to_host(top_v_i2t)[:n_img], to_host(top_v_t2i)[:n_txt]
    pos_i2t = np.array([np.isin(idx_i2t[i], list(img2txt[i])) for i in range(n_img)]).reshape(idx_i2t.shape)
    pos_t2i = idx_t2i == np.asarray(txt2img)[:, None]
    ok_i2t = np.isfinite(top_v_i2t) & ~missing[:, None]
    ok_t2i = np.isfinite(top_v_t2i)
    for name, s, v, pos, ok in (("i2t", s_i2t, top_v_i2t, pos_i2t, ok_i2t), ("t2i", s_t2i, top_v_t2i, pos_t2i, ok_t2i)):
        metrics[f"itm_auc_{name}"] = pooled_auc((s - v)[ok], pos[ok])
        metrics[f"itc_auc_{name}"] = pooled_auc(v[ok], pos[ok])
    metrics["num_images"], metrics["num_texts"] = float(n_img), float(n_txt)
    metrics["num_images_missing"] = float(missing.sum())
    timings["metrics"] = time.perf_counter() - t0
    return RetrievalOutputs(score_i2t, score_t2i, sim, metrics, timings)
