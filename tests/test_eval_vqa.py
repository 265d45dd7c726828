"""VQA: official accuracy on hand-worked cases; batched rank inference equals a per-candidate
sequence log-likelihood computed one answer at a time."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from blip_jax.evaluation import vqa


@pytest.mark.parametrize("answer,gts,expected", [
    ("two", ["2"] * 10, 1.0),                                  # number word -> digit
    ("yes", ["yes"] * 2 + ["no"] * 8, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # annotator subsets: 0.6
    ("cat", ["cat"] * 3 + ["dog"] * 7, (3 * (2 / 3) + 7 * 1.0) / 10),      # 0.9
    ("cat", ["cat"] * 4 + ["dog"] * 6, 1.0),                   # >= 3 matches in every subset of 9
    ("dog", ["cat"] * 10, 0.0),
    ("The red ball.", ["red ball"] * 4 + ["ball"] * 6, 1.0),   # article + period dropped, lowercased
    ("an apple", ["apple"] + ["pear"] * 9, 0.0 * 9 / 10 + (1 / 3) * 9 / 10),  # 1 match -> 1/3 in 9 subsets
    ("hot dog", ["hot-dog"] * 3 + ["sandwich"] * 7, 0.9),       # GT punctuation processed (disagreement)
    ("hot dog", ["hot-dog"] * 10, 0.0),                          # ... but not when all annotators agree
    ("dont know", ["don't know"] * 10, 1.0),                     # contraction restored
    ("yes!", ["yes"] * 10, 1.0),                                  # punctuation of the prediction
    ("1,000", ["1000"] * 5 + ["many"] * 5, 1.0),                 # digit,digit comma deleted
    ("3.5", ["3.5"] * 3 + ["3"] * 7, 0.9),                        # period before a digit kept
    ("  two\n", ["two"] * 5 + ["2"] * 5, 1.0),                   # whitespace; GT number words stay words
])
def test_official_accuracy(answer, gts, expected):
    assert vqa.vqa_accuracy(answer, gts) == pytest.approx(expected, abs=1e-12)


def test_normalisation_pieces():
    assert vqa.process_punctuation("left/right") == "left right"
    assert vqa.process_punctuation("left / right") == "left  right"
    assert vqa.process_digit_article("The Three dogs") == "3 dogs"
    assert vqa.process_digit_article("none of a kind") == "0 of kind"
    assert vqa.normalize_answer("Couldnt've") == "couldn't've"
    assert vqa.normalize_answer("its") == "its"
    assert vqa.vqa_score([{"question_id": 1, "answer": "2"}, {"question_id": 2, "answer": "x"},
                          {"question_id": 3, "answer": "y"}], {1: ["two", "2", "2"] + ["2"] * 7, 2: ["y"] * 10}) \
        == {"accuracy": 50.0, "num_scored": 2.0}


def tiny_vqa(seed=0):
    from blip_jax import BlipForQuestionAnswering
    from blip_jax.configuration import BlipConfig, BlipTextConfig, BlipVisionConfig

    tc = BlipTextConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=32, bos_token_id=38, enc_token_id=39,
                        sep_token_id=3, pad_token_id=0, use_enc_token_for_itm=True)
    vc = BlipVisionConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=48, initializer_range=0.2)
    model = BlipForQuestionAnswering(BlipConfig.from_text_vision_configs(tc, vc), rngs=nnx.Rngs(seed))
    model.text_decoder.cls.bias[...] = jax.random.normal(jax.random.key(seed), (40,)) * 2  # spread the logits
    return model


def test_rank_answers_equal_unbatched_loglik():
    model = tiny_vqa()
    rng = np.random.default_rng(0)
    b, tq, n_ans = 3, 6, 9
    q_states = jnp.asarray(rng.normal(size=(b, tq, 32)).astype(np.float32))
    q_mask = jnp.asarray((np.arange(tq)[None] < np.array([[6], [4], [2]])).astype(np.int32))
    lens = rng.integers(1, 4, n_ans)  # answer words
    a_ids = np.zeros((n_ans, 6), np.int32)
    for a, n in enumerate(lens):
        a_ids[a, 0], a_ids[a, 1:1 + n], a_ids[a, 1 + n] = 38, rng.integers(5, 37, n), 3
    a_ids[1, 1] = a_ids[0, 1]  # two candidates sharing a first token
    a_mask = (a_ids != 0).astype(np.int32)

    def loglik(q, a):  # one question, one candidate, no batching, no folding
        n = int(a_mask[a].sum())
        ids = jnp.asarray(a_ids[a:a + 1, :n])
        logits = model.text_decoder(ids, encoder_hidden_states=q_states[q:q + 1],
                                    encoder_attention_mask=q_mask[q:q + 1]).logits[0]
        lp = jax.nn.log_softmax(logits, -1)
        return float(sum(lp[t, a_ids[a, t + 1]] for t in range(n - 1)))

    ref = np.array([[loglik(q, a) for a in range(n_ans)] for q in range(b)])
    first = np.array([[float(jax.nn.log_softmax(model.text_decoder(
        jnp.asarray([[38]]), encoder_hidden_states=q_states[q:q + 1],
        encoder_attention_mask=q_mask[q:q + 1]).logits[0, 0])[a_ids[a, 1]]) for a in range(n_ans)] for q in range(b)])
    for k in (n_ans, 4):
        best, top, scores = jax.jit(vqa.rank_answers, static_argnums=(5,))(
            model, q_states, q_mask, jnp.asarray(a_ids), jnp.asarray(a_mask), k)
        best, top, scores = np.asarray(best), np.asarray(top), np.asarray(scores)
        for q in range(b):
            # top-k by first-token log-prob, then the best full-sequence log-likelihood among them
            assert set(top[q]) == set(np.argsort(-first[q], kind="stable")[:k])
            np.testing.assert_allclose(scores[q], ref[q, top[q]], atol=1e-4)
            cands = top[q]
            assert best[q] == cands[np.argmax(ref[q, cands])]
            # same ranking of the candidates as the straightforward computation
            assert list(cands[np.argsort(-scores[q])]) == list(cands[np.argsort(-ref[q, cands])])
        if k == n_ans:
            assert best.tolist() == np.argmax(ref, 1).tolist()
