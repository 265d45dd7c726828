"""Caption and answer generation: greedy, beam search and sampling on a static KV cache.

Everything after the host-side argument handling runs in ONE jit-compiled function (vision encoder,
question encoder for VQA, cross-attention keys/values, prefill and the `lax.while_loop` decode).
That function is a pure function of the model's state (its leaves, in graph order); the graph definition and the
generation settings are static arguments, so jax's own jit cache keys compiled programs on
(model structure, settings, input shapes) and a repeated call with the same shapes never retraces.

Semantics follow transformers 5.x ``generate`` (what BLIP's ``generate`` calls), so that token ids
compare exactly with HF on the same weights:

* lengths: ``max_length`` counts the whole sequence (bos / prompt included); ``max_new_tokens``
  overrides it; without either, 20 new tokens (capped at ``max_position_embeddings``).
  ``min_length`` (whole sequence) / ``min_new_tokens`` suppress eos while the sequence is shorter.
* logits processors, in HF's order: repetition penalty (tokens already in the sequence, the prompt
  included except its left padding; positive scores divided, negative multiplied), min length,
  then for sampling temperature, top-k (HF's default 50), top-p.
* greedy / sampling: finished rows emit pad; the result is cut at the step where every row finished.
* beam search (HF's vectorised algorithm): 2K candidates per image, the K best unfinished continue,
  finished hypotheses are scored ``sum logprob / generated_len ** length_penalty`` (generated length
  excludes the prompt, includes eos), ``early_stopping`` True / False / "never" as HF. Beam outputs
  are filled after eos with HF's fill value: pad, or eos when pad_token_id == 0 (HF evaluates
  ``pad_token_id or eos_token_id``), and cut at the longest returned hypothesis.

Rows are image-major: for B images and R = num_beams (beam search) or num_return_sequences
(sampling), row ``b * R + r`` belongs to image b. The self-attention cache has B*R rows; the
cross-attention keys/values stay (B, N_h, S, H) and `Attention` folds the R query rows of an image onto
them, so image keys are computed once per image and never copied per beam.

Shape letters: B images, R rows per image, N = B*R rows, T prompt length, L max_length, V vocab,
K beams.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
import weakref
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from blip_jax.compiler_options import decode_compiler_options

_NEG = -1.0e9  # HF's "impossible" beam score; must be the same constant for identical tie-breaking


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """Static (compile-time) generation settings; hashable, so part of the jit cache key.

    ``max_length`` / ``min_length`` count the whole sequence including the ``prompt_length`` prompt
    tokens (bos first). Settings that do not affect the chosen strategy are normalised (e.g.
    temperature for greedy) so they do not cause recompiles.
    """

    max_length: int
    prompt_length: int
    min_length: int = 0
    num_beams: int = 1
    do_sample: bool = False
    num_return_sequences: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    eos_token_id: int = 102
    pad_token_id: int = 0

    @property
    def rows_per_input(self) -> int:
        """R: beams (beam search) or returned sequences (greedy / sampling) per image."""
        return self.num_beams if self.num_beams > 1 else self.num_return_sequences

    @property
    def beam_fill_token(self) -> int:
        # transformers fills beam outputs with `pad_token_id or eos_token_id`: a pad id of 0 is falsy.
        return self.pad_token_id if self.pad_token_id else self.eos_token_id


_GENERATION_ARGS = (
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "num_beams", "do_sample", "top_p", "top_k",
    "temperature", "repetition_penalty", "length_penalty", "num_return_sequences", "early_stopping",
)


def resolve_generation_settings(
    text_config,
    prompt_length: int,
    *,
    max_length: int | None = None,
    max_new_tokens: int | None = None,
    min_length: int | None = None,
    min_new_tokens: int | None = None,
    num_beams: int = 1,
    do_sample: bool = False,
    top_p: float | None = None,
    top_k: int | None = None,
    temperature: float | None = None,
    repetition_penalty: float | None = None,
    length_penalty: float | None = None,
    num_return_sequences: int = 1,
    early_stopping: bool | str | None = None,
) -> GenerationSettings:
    """HF-named generation arguments -> validated `GenerationSettings` (HF's defaults and checks)."""
    if max_new_tokens is not None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        total = prompt_length + int(max_new_tokens)
    elif max_length is not None:
        total = int(max_length)
    else:
        total = min(prompt_length + 20, text_config.max_position_embeddings)
    if prompt_length >= total:
        raise ValueError(
            f"the prompt has {prompt_length} tokens but max_length is {total}; increase max_length or set "
            "max_new_tokens"
        )
    if total > text_config.max_position_embeddings:
        # The KV cache has a static length, so it stops at the position table's end. HF would
        # generate until a row runs past it and then fail; here such rows end at the last position.
        warnings.warn(f"max_length {total} exceeds max_position_embeddings {text_config.max_position_embeddings}: "
                      f"generating at most {text_config.max_position_embeddings} tokens", stacklevel=3)
        total = text_config.max_position_embeddings
        if prompt_length >= total:
            raise ValueError(f"the prompt has {prompt_length} tokens, as many as max_position_embeddings {total}")
    if min_new_tokens is not None:
        min_total = prompt_length + int(min_new_tokens)
    else:
        min_total = int(min_length or 0)
    if min_total < 0:
        raise ValueError(f"min_length must be >= 0, got {min_total}")
    num_beams, num_return_sequences = int(num_beams), int(num_return_sequences)
    if num_beams < 1 or num_return_sequences < 1:
        raise ValueError("num_beams and num_return_sequences must be >= 1")
    if num_beams > 1 and num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences ({num_return_sequences}) must be <= num_beams ({num_beams})")
    if num_beams == 1 and not do_sample and num_return_sequences != 1:
        raise ValueError("greedy search returns one sequence per input: num_return_sequences must be 1")
    if early_stopping is None:
        early_stopping = False
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    rep = 1.0 if repetition_penalty is None else float(repetition_penalty)
    if rep <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {rep}")
    temperature = 1.0 if temperature is None else float(temperature)
    top_k = 50 if top_k is None else int(top_k)
    top_p = 1.0 if top_p is None else float(top_p)
    if do_sample:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}; use do_sample=False")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        if not 0.0 <= top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {top_p}")
    else:
        temperature, top_k, top_p = 1.0, 0, 1.0
    length_penalty = 1.0 if length_penalty is None else float(length_penalty)
    if num_beams == 1:
        length_penalty, early_stopping = 1.0, False
    return GenerationSettings(
        max_length=total,
        prompt_length=int(prompt_length),
        min_length=min_total,
        num_beams=num_beams,
        do_sample=bool(do_sample),
        num_return_sequences=num_return_sequences,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=rep,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        eos_token_id=int(text_config.sep_token_id),
        pad_token_id=int(text_config.pad_token_id),
    )


# ---------------------------------------------------------------------------------------------
# logits processing


def _seen_tokens(seqs: jax.Array, cur_len: jax.Array, ignore: jax.Array, vocab: int) -> jax.Array:
    """Boolean (N, V): which tokens occur in seqs[:, ignore:cur_len] (seqs (N, L) int32)."""
    pos = jnp.arange(seqs.shape[1])[None, :]
    valid = (pos < cur_len) & (pos >= ignore[:, None])
    ids = jnp.where(valid, seqs, vocab)  # out-of-range ids land in a dropped extra column
    rows = jnp.arange(seqs.shape[0])[:, None]
    return jnp.zeros((seqs.shape[0], vocab + 1), bool).at[rows, ids].set(True)[:, :vocab]


def _nucleus(scores: jax.Array, top_p: float, min_tokens_to_keep: int) -> jax.Array:
    """HF's nucleus filter over the whole vocabulary without sorting it: (N, V) -> (N, V).

    HF drops a token when its probability plus that of every lower-scored token is <= 1 - top_p,
    which keeps exactly the tokens scoring at or above one cut. The cut is found by bisection on
    the scores' order-preserving uint32 keys: 32 masked sums over the vocabulary instead of a sort
    (8 x 30524 scores on CPU: 59-86 ms a step for the sort)."""
    probs = jax.nn.softmax(scores, axis=-1)
    key = _order_key(scores)
    limit = jnp.float32(1.0 - top_p)

    def halve(_, bounds):  # the smallest key whose mass at or below it exceeds limit lies in [lo, hi]
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        above = jnp.sum(jnp.where(key <= mid, probs, 0.0), axis=-1, keepdims=True) > limit
        return jnp.where(above, lo, mid + 1), jnp.where(above, mid, hi)

    n = scores.shape[0]
    bounds = (jnp.zeros((n, 1), jnp.uint32), jnp.full((n, 1), 0xFFFFFFFF, jnp.uint32))
    cut, _ = jax.lax.fori_loop(0, 32, halve, bounds)
    # The best min_tokens_to_keep always stay (top_k reduced, not sliced: a sliced top_k is a sort).
    keep = _order_key(jnp.min(jax.lax.top_k(scores, min_tokens_to_keep)[0], axis=-1, keepdims=True))
    return jnp.where(key < jnp.minimum(cut, keep), -jnp.inf, scores)


def _order_key(x: jax.Array) -> jax.Array:
    """float32 -> uint32 with the same order (negatives' bits flipped, positives' sign bit set)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where((bits >> 31) == 1, ~bits, bits | jnp.uint32(0x80000000))


def process_scores(
    scores: jax.Array, seqs: jax.Array, cur_len: jax.Array, ignore: jax.Array, s: GenerationSettings,
    min_tokens_to_keep: int = 1,
) -> jax.Array:
    """Apply HF's logits processors (in HF's order) to next-token scores.

    scores (N, V) float32 (logits for greedy/sampling, log-probs for beam search); seqs (N, L) the
    sequences so far, valid up to ``cur_len``; ignore (N,) leading prompt columns (left padding)
    that the repetition penalty skips. Returns (N, V) float32.
    """
    vocab = scores.shape[-1]
    if s.repetition_penalty != 1.0:
        seen = _seen_tokens(seqs, cur_len, ignore, vocab)
        p = jnp.float32(s.repetition_penalty)
        scores = jnp.where(seen, jnp.where(scores < 0, scores * p, scores / p), scores)
    if s.min_length > 0:
        block = (jnp.arange(vocab) == s.eos_token_id)[None, :] & (cur_len < s.min_length)
        scores = jnp.where(block, -jnp.inf, scores)
    if s.do_sample:
        if s.temperature != 1.0:
            scores = scores / jnp.float32(s.temperature)
        if s.top_k != 0:
            # The k best scores, descending. Both filters work on these k and end in one cut on the
            # vocabulary: sorting the vocabulary for top_p took 86 ms a step for 8 x 30524 scores on
            # CPU. (Reduce the top_k output, never slice a column of it: XLA then lowers top_k to a
            # full sort, 36 ms instead of 0.3.)
            top = jax.lax.top_k(scores, min(max(s.top_k, min_tokens_to_keep), vocab))[0]
            if s.top_p < 1.0:
                # (Tokens tying with the k-th survive the cut below, as in HF, but are left out of
                # this mass; exact float32 ties in the logits are rare.)
                # HF's nucleus rule (ascending order: drop tokens whose probability plus that of all
                # lower ones is <= 1 - top_p) on the k survivors, whose softmax is the filtered one.
                tail = jnp.cumsum(jax.nn.softmax(top, axis=-1)[:, ::-1], axis=-1)[:, ::-1]
                drop = (tail <= 1.0 - s.top_p).at[:, :min_tokens_to_keep].set(False)
                top = jnp.where(drop, jnp.inf, top)
            scores = jnp.where(scores < jnp.min(top, axis=-1, keepdims=True), -jnp.inf, scores)
        elif s.top_p < 1.0:
            scores = _nucleus(scores, s.top_p, min_tokens_to_keep)
    return scores


def _sample(scores: jax.Array, key: jax.Array) -> jax.Array:
    """One token per row from softmax(scores) (N, V) -> (N,) int. The scores are the processed
    ones, so every filtered token is -inf; drawing over the whole vocabulary (not just the top k)
    keeps the tokens that tie with the k-th, as HF's top-k filter does."""
    return jax.random.categorical(key, scores, axis=-1)


# ---------------------------------------------------------------------------------------------
# the decode loop (traced inside jit)


def _length_table(s: GenerationSettings) -> jax.Array:
    """float32 (L - T + 1,): j ** length_penalty, computed in double as Python/torch do, then rounded."""
    n = s.max_length - s.prompt_length
    return jnp.asarray(np.array([max(j, 1) ** s.length_penalty for j in range(n + 1)], np.float64), jnp.float32)


def decode(
    decoder,
    cross_kv: list[tuple[jax.Array, jax.Array]],
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    rng: jax.Array,
    s: GenerationSettings,
) -> tuple[jax.Array, jax.Array]:
    """Generate with a `BlipTextLMHeadModel` ``decoder`` over precomputed cross-attention keys/values.

    Pure and traceable (call it inside jit). cross_kv: per layer (keys, values), each (B, N_h, S, H);
    prompt_ids, prompt_mask: (B, T) int32, bos first, mask 0 at padding; rng: PRNG key (sampling).
    Returns (sequences (B * R_out, L) int32, length () int32): rows beyond ``length`` are padding
    the caller trims, R_out = num_return_sequences.
    """
    b, t = prompt_ids.shape
    r = s.rows_per_input
    n, total = b * r, s.max_length
    ids = jnp.repeat(prompt_ids.astype(jnp.int32), r, axis=0)
    mask = jnp.repeat(prompt_mask.astype(jnp.int32), r, axis=0)
    # HF derives positions from the mask (pads -> 0) and continues from the last prompt position.
    positions = jnp.where(mask > 0, jnp.cumsum(mask, axis=-1) - 1, 0)
    slot_pos = jnp.concatenate([positions, positions[:, -1:] + 1 + jnp.arange(total - t)[None, :]], axis=1)
    slot_mask = jnp.concatenate([mask, jnp.ones((n, total - t), jnp.int32)], axis=1)
    ignore = jnp.argmax(mask != 0, axis=1)  # HF's repetition-penalty prompt_ignore_length
    cache = decoder.bert.init_cache(n, total)
    if t > 1:
        # The last prompt token is fed by the first loop step, so every step is one token.
        cache = decoder.bert(
            ids[:, : t - 1], attention_mask=slot_mask, position_ids=slot_pos[:, : t - 1], is_decoder=True,
            cache=cache, cache_index=0, cross_kv=cross_kv,
        ).cache

    def step(cache, tokens, slot):
        pos = jax.lax.dynamic_slice_in_dim(slot_pos, slot, 1, axis=1)
        out = decoder(
            tokens[:, None], attention_mask=slot_mask, position_ids=pos, cache=cache, cache_index=slot,
            cross_kv=cross_kv,
        )
        return out.logits[:, 0].astype(jnp.float32), out.cache

    if s.num_beams > 1:
        return _beam_search(step, cache, prompt_ids.astype(jnp.int32), ignore, rng, s)
    return _greedy_or_sample(step, cache, ids, ignore, rng, s)


def _greedy_or_sample(step, cache, ids, ignore, rng, s: GenerationSettings):
    n, t = ids.shape
    total = s.max_length
    seqs = jnp.full((n, total), s.pad_token_id, jnp.int32).at[:, :t].set(ids)

    # The loop predicate is a carried scalar computed in the body, as in beam search. On an H200,
    # beam search gained from WHILE command buffers (55 -> 34 ms a batch) but greedy decoding, whose
    # condition reduced over the rows, did not; this gives both loops the same shape (not yet
    # re-measured on a GPU).
    def cond(c):
        return c[4]

    def body(c):
        cur_len, seqs, unfinished, cache, _ = c
        last = jax.lax.dynamic_index_in_dim(seqs, cur_len - 1, axis=1, keepdims=False)
        logits, cache = step(cache, last, cur_len - 1)
        scores = process_scores(logits, seqs, cur_len, ignore, s)
        if s.do_sample:
            tok = _sample(scores, jax.random.fold_in(rng, cur_len))
        else:
            tok = jnp.argmax(scores, axis=-1)
        tok = jnp.where(unfinished, tok.astype(jnp.int32), s.pad_token_id)
        seqs = jax.lax.dynamic_update_slice(seqs, tok[:, None], (0, cur_len))
        unfinished = unfinished & (tok != s.eos_token_id)
        return cur_len + 1, seqs, unfinished, cache, (cur_len + 1 < total) & jnp.any(unfinished)

    init = (jnp.int32(t), seqs, jnp.ones((n,), bool), cache, jnp.asarray(t < total))
    cur_len, seqs, _, _, _ = jax.lax.while_loop(cond, body, init)
    return seqs, cur_len


def _gather(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x (B, M, ...) gathered along axis 1 by idx (B, M')."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _beam_search(step, cache, prompt_ids, ignore, rng, s: GenerationSettings):
    b, t = prompt_ids.shape
    k, total, lp = s.num_beams, s.max_length, s.length_penalty
    k2 = 2 * k  # HF keeps (1 + #eos) * K candidates so K unfinished ones always remain
    neg = jnp.float32(_NEG)
    lengths = _length_table(s)
    seqs0 = jnp.full((b, k, total), s.beam_fill_token, jnp.int32).at[:, :, :t].set(prompt_ids[:, None, :])
    # Only beam 0 is live at first, so the K beams do not all pick the same tokens.
    run_scores0 = jnp.zeros((b, k), jnp.float32).at[:, 1:].set(neg)
    in_top_k = (jnp.arange(k2) < k)[None, :]

    def cond(c):
        return c["go"]

    def body(c):
        cur_len = c["cur_len"]
        run_seqs = c["run_seqs"]
        last = jax.lax.dynamic_index_in_dim(run_seqs, cur_len - 1, axis=2, keepdims=False).reshape(b * k)
        logits, cache = step(c["cache"], last, cur_len - 1)
        logp = jax.nn.log_softmax(logits, axis=-1)
        logp = process_scores(logp, run_seqs.reshape(b * k, total), cur_len, ignore, s, min_tokens_to_keep=2)
        vocab = logp.shape[-1]
        acc = (logp.reshape(b, k, vocab) + c["run_scores"][:, :, None]).reshape(b, k * vocab)
        if s.do_sample:
            # K2 draws without replacement from softmax(acc) (Gumbel top-k), then sorted by score as HF does.
            gumbel = jax.random.gumbel(jax.random.fold_in(rng, cur_len), acc.shape, jnp.float32)
            _, idx = jax.lax.top_k(acc + gumbel, k2)
            vals = jnp.take_along_axis(acc, idx, axis=1)
            order = jnp.argsort(-vals, axis=1, stable=True)
            vals, idx = jnp.take_along_axis(vals, order, axis=1), jnp.take_along_axis(idx, order, axis=1)
        else:
            vals, idx = jax.lax.top_k(acc, k2)
        src_beam, tok = idx // vocab, (idx % vocab).astype(jnp.int32)
        cand_seqs = _gather(run_seqs, src_beam)
        cand_seqs = jax.lax.dynamic_update_slice(cand_seqs, tok[:, :, None], (0, 0, cur_len))
        hits = (tok == s.eos_token_id) | (cur_len + 1 >= total)

        # Next running beams: the best K candidates that did not just finish.
        run_vals, run_idx = jax.lax.top_k(vals + hits.astype(jnp.float32) * neg, k)
        new_run_seqs = _gather(cand_seqs, run_idx)
        row_src = (jnp.arange(b)[:, None] * k + _gather(src_beam, run_idx)).reshape(b * k)

        # Finished hypotheses: merge the new ones (from the top K candidates only) into the best K.
        did_finish = hits & in_top_k
        fin_vals = vals / lengths[cur_len + 1 - t]
        if s.early_stopping is True:
            fin_vals = fin_vals + (jnp.all(c["finished"], axis=1, keepdims=True)).astype(jnp.float32) * neg
        fin_vals = fin_vals + (~c["unsatisfied"][:, None]).astype(jnp.float32) * neg
        fin_vals = fin_vals + (~did_finish).astype(jnp.float32) * neg
        m_scores = jnp.concatenate([c["fin_scores"], fin_vals], axis=1)
        _, sel = jax.lax.top_k(m_scores, k)
        fin_seqs = _gather(jnp.concatenate([c["fin_seqs"], cand_seqs], axis=1), sel)
        fin_scores = _gather(m_scores, sel)
        finished = _gather(jnp.concatenate([c["finished"], did_finish], axis=1), sel)
        new_len = jnp.broadcast_to(cur_len + 1 - t, (b, k2)).astype(jnp.int32)
        fin_len = _gather(jnp.concatenate([c["fin_len"], new_len], axis=1), sel)

        # Only the self-attention caches follow the beams; cross keys/values are per image.
        cache = jax.tree.map(lambda x: jnp.take(x, row_src, axis=0), cache)
        cur_len = cur_len + 1

        # HF's "can a running beam still beat the worst finished one" heuristic.
        best_len = (total - t) if (s.early_stopping == "never" and lp > 0) else (cur_len - t)
        best_running = run_vals[:, :1] / lengths[best_len]
        worst_finished = jnp.where(finished, jnp.min(fin_scores, axis=1, keepdims=True), neg)
        unsatisfied = c["unsatisfied"] & jnp.any(best_running > worst_finished, axis=1)
        go = jnp.any(unsatisfied) & ~jnp.all(hits)
        if s.early_stopping is True:
            go = go & ~jnp.all(finished)
        return dict(
            cur_len=cur_len, run_seqs=new_run_seqs, run_scores=run_vals, fin_seqs=fin_seqs, fin_scores=fin_scores,
            finished=finished, fin_len=fin_len, unsatisfied=unsatisfied, cache=cache, go=go,
        )

    init = dict(
        cur_len=jnp.int32(t), run_seqs=seqs0, run_scores=run_scores0, fin_seqs=seqs0,
        fin_scores=jnp.full((b, k), neg, jnp.float32), finished=jnp.zeros((b, k), bool),
        fin_len=jnp.zeros((b, k), jnp.int32), unsatisfied=jnp.ones((b,), bool), cache=cache, go=jnp.bool_(True),
    )
    out = jax.lax.while_loop(cond, body, init)
    nrs = s.num_return_sequences
    seqs = out["fin_seqs"][:, :nrs].reshape(b * nrs, total)
    return seqs, t + jnp.max(out["fin_len"][:, :nrs])


# ---------------------------------------------------------------------------------------------
# the compiled entry point


class _StaticGraphDef:
    """Hashable wrapper so an nnx GraphDef (whose configs are unhashable dataclasses) can be a static
    jit argument: equal structures (same class, same config) share one compiled program."""

    __slots__ = ("graphdef", "_hash")

    def __init__(self, graphdef, model):
        self.graphdef = graphdef
        cfg = getattr(model, "config", None)
        self._hash = hash((type(model).__qualname__, cfg.to_json_string() if hasattr(cfg, "to_json_string") else None))

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        if self is other:  # the cached object of the same model: skip the graph comparison
            return True
        return isinstance(other, _StaticGraphDef) and self._hash == other._hash and self.graphdef == other.graphdef


def _split(model) -> tuple[_StaticGraphDef, list[jax.Array]]:
    """(static graph definition, the current values of the model's leaves in graph order).

    Walking the graph (nnx.split: 12 ms for BLIP-base on a CPU core) once per call was most of a
    GPU call's host time, which the device then waits for. The walk runs once per model; each call
    reads the cached Variables' current values (0.3 ms), so parameters changed in place (training,
    nnx.update, loading) are always used. Replacing a submodule after the first call is not seen:
    call `clear_split_cache` after such surgery."""
    cached = _SPLIT_CACHE.get(model)
    if cached is None:
        graphdef, flat = nnx.graph.flatten(model)
        cached = _SPLIT_CACHE[model] = (_StaticGraphDef(graphdef, model), list(flat.leaves))
    static, variables = cached
    return static, [v.raw_value if isinstance(v.raw_value, jax.Array) else v.get_value() for v in variables]


_SPLIT_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def clear_split_cache(model=None) -> None:
    """Forget the cached graph walk of `model` (of every model when None)."""
    if model is None:
        _SPLIT_CACHE.clear()
    else:
        _SPLIT_CACHE.pop(model, None)


def _generate_impl(static_graphdef, state, pixel_values, prompt_ids, prompt_mask, question_ids, question_mask, rng,
                   *, task: str, settings: GenerationSettings, interpolate_pos_encoding: bool):
    model = nnx.merge(static_graphdef.graphdef, state)
    image_embeds = model.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding).last_hidden_state
    if task == "vqa":
        # HF decodes over the question states with an all-ones mask (question padding included).
        states = model.encode_question(question_ids, image_embeds, question_mask)
    else:
        states = image_embeds  # HF's image mask is all ones: no cross-attention mask needed
    cross_kv = model.text_decoder.bert.precompute_cross_kv(states)
    return decode(model.text_decoder, cross_kv, prompt_ids, prompt_mask, rng, settings)


@functools.cache
def _generate_jit():
    """The jitted entry point, built on first use: its compiler options depend on the backend."""
    return jax.jit(_generate_impl, static_argnames=("static_graphdef", "task", "settings", "interpolate_pos_encoding"),
                   compiler_options=decode_compiler_options())


def compiled_cache_size() -> int:
    """Number of programs compiled so far (for checking that repeated calls do not recompile)."""
    return _generate_jit()._cache_size()


def _as_ids(x, name: str) -> np.ndarray:
    arr = np.array(x, dtype=np.int64, copy=True)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (batch, length), got shape {arr.shape}")
    return arr


def _default_mask(ids: np.ndarray, pad: int, eos: int) -> np.ndarray:
    """HF's inferred mask when none is given: ids != pad if the prompt contains pad (and pad != eos)."""
    if pad != eos and (ids == pad).any():
        return (ids != pad).astype(np.int32)
    return np.ones(ids.shape, np.int32)


def _broadcast_batch(x: np.ndarray, batch: int, name: str) -> np.ndarray:
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1:
        return np.repeat(x, batch, axis=0)
    raise ValueError(f"{name} has batch {x.shape[0]} but pixel_values has batch {batch}")


def _batch_of(pixel_values, text_batch: int) -> tuple[Any, int]:
    """One image with several prompts or questions (what ``processor(images=img, text=[...])``
    gives) is repeated once per text, as torch broadcasting does in HF: -> (pixel_values, B)."""
    b = pixel_values.shape[0]
    if b == 1 and text_batch > 1:
        return np.repeat(np.asarray(pixel_values), text_batch, axis=0), text_batch
    return pixel_values, b


def _run(model, task, pixel_values, prompt_ids, prompt_mask, question_ids, question_mask, rng,
         interpolate_pos_encoding, kwargs) -> jax.Array:
    unknown = set(kwargs) - set(_GENERATION_ARGS)
    if unknown:
        raise TypeError(f"unsupported generation arguments {sorted(unknown)}; supported: {list(_GENERATION_ARGS)}")
    tc = model.config.text_config
    settings = resolve_generation_settings(tc, prompt_ids.shape[1], **kwargs)
    if settings.do_sample and rng is None:
        raise ValueError("do_sample=True needs an explicit PRNG key: pass rng=jax.random.key(seed)")
    if rng is None:
        rng = jax.random.key(0)  # unused by greedy / beam search; keeps the signature fixed
    static_graphdef, state = _split(model)
    seqs, length = _generate_jit()(
        static_graphdef, state, jnp.asarray(pixel_values), jnp.asarray(prompt_ids, jnp.int32),
        jnp.asarray(prompt_mask, jnp.int32), question_ids, question_mask, rng,
        task=task, settings=settings, interpolate_pos_encoding=bool(interpolate_pos_encoding),
    )
    return seqs[:, : int(length)]


def generate_captions(
    model,
    pixel_values,
    input_ids=None,
    attention_mask=None,
    interpolate_pos_encoding: bool = False,
    rng: jax.Array | None = None,
    **generate_kwargs: Any,
) -> jax.Array:
    """Caption images with a `BlipForConditionalGeneration` (HF's ``generate`` semantics).

    pixel_values: (B, H, W, 3) float, channels-last. input_ids: optional prompt (B or 1, T_in) as the
    tokenizer returns it ([CLS] ... [SEP]); as in HF its first token becomes bos and its last column
    ([SEP]) is dropped, so decoding continues the prompt. attention_mask: (B or 1, T_in) 0/1.
    rng: PRNG key, required with ``do_sample=True``. generate_kwargs: max_length, max_new_tokens,
    min_length, min_new_tokens, num_beams, do_sample, top_p, top_k, temperature, repetition_penalty,
    length_penalty, num_return_sequences, early_stopping (HF names and defaults).

    Returns int32 (B * num_return_sequences, L_out), rows image-major: bos, prompt, generated
    tokens, eos, then padding (pad_token_id; beam search uses HF's fill value, which is eos when
    pad_token_id is 0); L_out is the longest sequence in the batch, as HF trims.
    """
    tc = model.config.text_config
    b = pixel_values.shape[0]
    if input_ids is None:
        ids = np.full((b, 1), tc.bos_token_id, np.int64)
        mask = None
    else:
        ids = _as_ids(input_ids, "input_ids")
        pixel_values, b = _batch_of(pixel_values, ids.shape[0])
        if ids.shape[1] < 2:
            raise ValueError("a caption prompt needs at least 2 tokens ([CLS]/bos ... [SEP]); its last is dropped")
        ids[:, 0] = tc.bos_token_id
        ids = ids[:, :-1]
        mask = None if attention_mask is None else _as_ids(attention_mask, "attention_mask")[:, :-1]
    if mask is None:
        mask = _default_mask(ids, tc.pad_token_id, tc.sep_token_id)
    ids, mask = _broadcast_batch(ids, b, "input_ids"), _broadcast_batch(mask, b, "attention_mask")
    return _run(model, "caption", pixel_values, ids, mask, None, None, rng, interpolate_pos_encoding,
                generate_kwargs)


def generate_answers(
    model,
    input_ids,
    pixel_values,
    attention_mask=None,
    interpolate_pos_encoding: bool = False,
    rng: jax.Array | None = None,
    **generate_kwargs: Any,
) -> jax.Array:
    """Answer questions with a `BlipForQuestionAnswering` (HF's ``generate`` semantics).

    input_ids: question (B, T_q) int; attention_mask: (B, T_q) 0/1 for the question encoder;
    pixel_values: (B, H, W, 3). The answer decoder starts from [bos] and cross-attends to every
    question state. Other arguments as `generate_captions`. Returns int32 (B * R, L_out).
    """
    tc = model.config.text_config
    q_ids = _as_ids(input_ids, "input_ids")
    pixel_values, b = _batch_of(pixel_values, q_ids.shape[0])
    q_ids = _broadcast_batch(q_ids, b, "input_ids")
    q_mask = None if attention_mask is None else _broadcast_batch(_as_ids(attention_mask, "attention_mask"), b,
                                                                  "attention_mask")
    ids = np.full((b, 1), tc.bos_token_id, np.int64)
    mask = np.ones((b, 1), np.int32)
    return _run(model, "vqa", pixel_values, ids, mask, jnp.asarray(q_ids, jnp.int32),
                None if q_mask is None else jnp.asarray(q_mask, jnp.int32), rng, interpolate_pos_encoding,
                generate_kwargs)
