"""Generation parity with transformers' ``generate`` on tiny random BLIP models (CPU).

Weights: every parameter ~ N(0, 1) (LayerNorm scales 1 + N(0, 0.2)) from a fixed torch seed, which
gives varied, well-separated greedy choices in the tiny config (the fixture checks the smallest
top-1/top-2 logit gap, so the exact comparisons never hinge on near-ties); the eos logit bias is
raised so that hypotheses end at different lengths and the finished-beam bookkeeping, eos padding and
output trimming are exercised.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from blip_jax import generation  # noqa: E402
from blip_jax.models.blip import BlipForConditionalGeneration, BlipForQuestionAnswering  # noqa: E402

TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, bos_token_id=97, sep_token_id=2, eos_token_id=2, pad_token_id=0)
VISION = dict(image_size=30, patch_size=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=37)
EOS, BOS = 2, 97
BATCH = 4


def _build(cls_name: str, folder, eos_bias: float, seed: int = 0):
    """transformers.<cls_name> with N(0, 1) weights, saved to ``folder``; returns the torch model."""
    config = transformers.BlipConfig(
        text_config=transformers.BlipTextConfig(**TEXT).to_dict(),
        vision_config=transformers.BlipVisionConfig(**VISION).to_dict(),
    )
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = "LayerNorm" in name or "layer_norm" in name or "layernorm" in name
            noise = torch.randn(p.shape, generator=g) * (0.2 if is_norm else 1.0)
            p.copy_(1.0 + noise if is_norm and name.endswith("weight") else noise)
        model.text_decoder.cls.predictions.bias[EOS] += eos_bias
    model.save_pretrained(folder)
    return model


def _pixels(seed=0, batch=BATCH):
    return np.random.default_rng(seed).normal(size=(batch, 30, 30, 3)).astype(np.float32)


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _hf(fn, *args, **kw):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw).numpy()


@pytest.fixture(scope="module")
def caption_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blip_caption")
    hf = _build("BlipForConditionalGeneration", folder, eos_bias=4.0)
    ours = BlipForConditionalGeneration.from_pretrained(folder)
    return hf, ours


@pytest.fixture(scope="module")
def vqa_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blip_vqa")
    hf = _build("BlipForQuestionAnswering", folder, eos_bias=4.0, seed=1)
    ours = BlipForQuestionAnswering.from_pretrained(folder)
    return hf, ours


PROMPT = np.array([[1, 11, 12, 13, EOS]] * BATCH)  # "[CLS] a picture of [SEP]"


def _compare(hf, ours, pixels, prompt=None, mask=None, **kw):
    ref = _hf(hf.generate, _nchw(pixels), input_ids=None if prompt is None else torch.from_numpy(prompt.copy()),
              attention_mask=None if mask is None else torch.from_numpy(mask), **kw)
    got = np.asarray(ours.generate(pixels, input_ids=prompt, attention_mask=mask, **kw))
    assert got.dtype == np.int32
    assert got.shape == ref.shape, (got, ref)
    np.testing.assert_array_equal(got, ref)
    return got


def test_fixture_is_not_near_ties(caption_models):
    hf, _ = caption_models
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = hf.generate(_nchw(_pixels()), max_length=15, output_scores=True, return_dict_in_generate=True)
    gaps = [float((s.topk(2).values[:, 0] - s.topk(2).values[:, 1]).min()) for s in out.scores]
    assert min(gaps) > 1e-2
    seqs = out.sequences.numpy()
    assert len(np.unique(seqs)) > 6  # varied tokens, not one repeated id
    assert (seqs == EOS).any(axis=1).sum() >= 1  # some captions end early


@pytest.mark.parametrize("prompt", [None, PROMPT], ids=["no_prompt", "prompt"])
def test_greedy_matches_hf(caption_models, prompt):
    hf, ours = caption_models
    got = _compare(hf, ours, _pixels(), prompt, max_length=15)
    assert (got[:, 0] == BOS).all()
    if prompt is not None:
        np.testing.assert_array_equal(got[:, 1:4], prompt[:, 1:4])  # HF returns the prompt too


@pytest.mark.parametrize("prompt", [None, PROMPT], ids=["no_prompt", "prompt"])
def test_beam_search_matches_hf(caption_models, prompt):
    hf, ours = caption_models
    _compare(hf, ours, _pixels(), prompt, num_beams=3, max_length=15)


@pytest.mark.parametrize(
    "kw",
    [
        dict(num_return_sequences=3),
        dict(early_stopping=True),
        dict(early_stopping="never", length_penalty=0.5),
        dict(length_penalty=2.0, num_return_sequences=2),
        dict(length_penalty=-1.0),
    ],
    ids=["nrs3", "early_true", "never_lp0.5", "lp2_nrs2", "lp-1"],
)
def test_beam_search_options_match_hf(caption_models, kw):
    hf, ours = caption_models
    got = _compare(hf, ours, _pixels(1), None, num_beams=3, max_length=12, **kw)
    assert got.shape[0] == BATCH * kw.get("num_return_sequences", 1)


@pytest.mark.parametrize(
    "kw",
    [
        dict(max_length=14, min_length=10),
        dict(max_length=14, repetition_penalty=1.7),
        dict(num_beams=3, max_length=14, min_length=9, repetition_penalty=1.3),
    ],
    ids=["greedy_min", "greedy_rep", "beam_min_rep"],
)
def test_min_length_and_repetition_penalty_match_hf(caption_models, kw):
    hf, ours = caption_models
    got = _compare(hf, ours, _pixels(2), PROMPT, **kw)
    if "min_length" in kw:
        first_eos = [list(row).index(EOS) if EOS in row else len(row) for row in got]
        assert min(first_eos) >= kw["min_length"]


def test_length_arguments_match_hf(caption_models):
    hf, ours = caption_models
    got = _compare(hf, ours, _pixels(3), PROMPT)  # HF's default: 20 new tokens after the prompt
    assert got.shape[1] <= 4 + 20
    got = _compare(hf, ours, _pixels(3), PROMPT, max_new_tokens=6, min_new_tokens=3)
    assert got.shape[1] <= 4 + 6


def test_padded_prompts_match_hf(caption_models):
    hf, ours = caption_models
    prompt = np.array([[1, 11, 12, EOS, 0, 0], [1, 11, 12, 13, 14, EOS], [1, 21, EOS, 0, 0, 0], [1, 5, 6, 7, EOS, 0]])
    mask = (prompt != 0).astype(np.int64)
    _compare(hf, ours, _pixels(4), prompt, mask, max_length=14)
    _compare(hf, ours, _pixels(4), prompt, mask, max_length=14, num_beams=3, repetition_penalty=1.5)


@pytest.mark.parametrize("kw", [dict(max_length=10), dict(num_beams=3, max_length=10, min_length=3)],
                         ids=["greedy", "beam"])
def test_vqa_matches_hf(vqa_models, kw):
    hf, ours = vqa_models
    pixels = _pixels(5)
    question = np.array([[1, 31, 32, 33, 34, EOS], [1, 41, 42, EOS, 0, 0], [1, 51, 52, 53, EOS, 0],
                         [1, 8, EOS, 0, 0, 0]])  # right-padded: the answer decoder still sees every column
    mask = (question != 0).astype(np.int64)
    ref = _hf(hf.generate, input_ids=torch.from_numpy(question), pixel_values=_nchw(pixels),
              attention_mask=torch.from_numpy(mask), **kw)
    got = np.asarray(ours.generate(question, pixels, attention_mask=mask, **kw))
    np.testing.assert_array_equal(got, ref)
    assert len(np.unique(got[:, 1])) > 1  # answers depend on the question/image


def test_sampling(caption_models):
    _, ours = caption_models
    pixels = _pixels(6)
    kw = dict(do_sample=True, max_length=12, top_k=0, temperature=1.5)
    a = np.asarray(ours.generate(pixels, rng=jax.random.key(0), **kw))
    b = np.asarray(ours.generate(pixels, rng=jax.random.key(0), **kw))
    c = np.asarray(ours.generate(pixels, rng=jax.random.key(1), **kw))
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or (a != c).any()
    # a vanishing nucleus keeps only the arg-max token: sampling becomes greedy
    greedy = np.asarray(ours.generate(pixels, max_length=12))
    nucleus = np.asarray(ours.generate(pixels, rng=jax.random.key(3), do_sample=True, top_p=1e-6, max_length=12))
    np.testing.assert_array_equal(nucleus, greedy)
    many = np.asarray(ours.generate(pixels, rng=jax.random.key(2), do_sample=True, top_p=0.9, top_k=20,
                                    num_return_sequences=3, max_length=12))
    assert many.shape[0] == BATCH * 3 and many.dtype == np.int32
    assert (many[:, 0] == BOS).all()
    # rows are image-major; sequences of one image differ from each other at T=1
    assert any(len({tuple(r) for r in many[3 * i: 3 * i + 3]}) > 1 for i in range(BATCH))
    with pytest.raises(ValueError, match="PRNG"):
        ours.generate(pixels, do_sample=True)


@pytest.mark.parametrize("top_k,top_p,temperature,keep", [(50, 0.9, 1.0, 1), (50, 1.0, 1.0, 1), (0, 0.9, 1.0, 1),
                                                         (20, 0.5, 0.7, 1), (5, 0.3, 1.3, 2), (3000, 0.95, 1.0, 1),
                                                         (0, 0.05, 1.0, 2), (0, 0.99, 0.8, 1), (0, 1e-6, 1.0, 1)])
def test_sampling_filters_match_hf_warpers(top_k, top_p, temperature, keep):
    """Which tokens stay samplable: our top-k + nucleus filters (a cut on the top k; without top_k a
    bisection for the cut; no vocabulary sort either way) against transformers'
    TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper."""
    from transformers.generation import logits_process as lp

    rng = np.random.default_rng(top_k + int(100 * top_p))
    scores = rng.normal(scale=3.0, size=(16, 30524)).astype(np.float32)
    scores[:4] = rng.standard_t(2, size=(4, 30524)) * 4  # heavy tails: a few tokens hold most of the mass
    s = generation.GenerationSettings(max_length=8, prompt_length=1, do_sample=True, top_k=top_k, top_p=top_p,
                                      temperature=temperature)
    ours = np.asarray(generation.process_scores(jax.numpy.asarray(scores), jax.numpy.zeros((16, 8), jax.numpy.int32),
                                                1, jax.numpy.zeros((16,), jax.numpy.int32), s, min_tokens_to_keep=keep))
    t = torch.from_numpy(scores)
    warpers = [lp.TemperatureLogitsWarper(temperature)]
    if top_k:
        warpers.append(lp.TopKLogitsWarper(top_k, min_tokens_to_keep=keep))
    if top_p < 1.0:
        warpers.append(lp.TopPLogitsWarper(top_p, min_tokens_to_keep=keep))
    for w in warpers:
        t = w(None, t)
    hf = t.numpy()
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(hf))
    np.testing.assert_allclose(ours[np.isfinite(ours)], hf[np.isfinite(hf)], rtol=1e-6)
    kept = np.isfinite(hf).sum(1)
    assert kept.min() >= keep and (top_p == 1.0 or kept.min() < max(top_k, keep) or top_k == 0)


def test_sampling_draws_follow_the_filtered_distribution():
    """`_sample` draws with softmax frequencies among the tokens the filters kept."""
    scores = np.full((1, 1000), -np.inf, np.float32)
    scores[0, [3, 500, 999]] = np.log([0.2, 0.5, 0.3])
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = np.asarray(jax.vmap(lambda k: generation._sample(jax.numpy.asarray(scores), k))(keys))[:, 0]
    freq = {t: float((draws == t).mean()) for t in (3, 500, 999)}
    assert set(np.unique(draws)) == {3, 500, 999}
    np.testing.assert_allclose([freq[3], freq[500], freq[999]], [0.2, 0.5, 0.3], atol=0.03)


def test_top_k_keeps_tokens_tied_with_the_kth():
    """HF's top-k filter keeps every token scoring as high as the k-th; so do the draws."""
    from transformers.generation import logits_process as lp

    scores = np.full((1, 50), -5.0, np.float32)
    scores[0, :4] = [2.0, 1.0, 1.0, 1.0]
    s = generation.GenerationSettings(max_length=8, prompt_length=1, do_sample=True, top_k=2)
    z = jax.numpy.zeros
    processed = generation.process_scores(jax.numpy.asarray(scores), z((1, 8), jax.numpy.int32), 1,
                                          z((1,), jax.numpy.int32), s)
    hf = lp.TopKLogitsWarper(2)(None, torch.from_numpy(scores)).numpy()
    np.testing.assert_array_equal(np.isfinite(np.asarray(processed)), np.isfinite(hf))
    keys = jax.random.split(jax.random.key(1), 4000)
    draws = np.asarray(jax.vmap(lambda k: generation._sample(processed, k))(keys))[:, 0]
    p = np.exp(scores[0, :4] - scores[0, :4].max())
    np.testing.assert_allclose([(draws == t).mean() for t in range(4)], p / p.sum(), atol=0.03)  # 0.475, 3 x 0.175


def test_one_image_with_several_prompts_matches_hf(caption_models, vqa_models):
    """processor(images=img, text=[...]) gives one image and B texts: HF broadcasts the image."""
    hf, ours = caption_models
    prompt = np.array([[1, 11, 12, 13, EOS], [1, 21, 22, EOS, 0], [1, 5, EOS, 0, 0]])
    mask = (prompt != 0).astype(np.int64)
    got = _compare(hf, ours, _pixels(9, batch=1), prompt, mask, max_length=12)
    assert got.shape[0] == 3
    hf, ours = vqa_models
    question = np.array([[1, 31, 32, 33, EOS], [1, 41, EOS, 0, 0]])
    mask = (question != 0).astype(np.int64)
    pixels = _pixels(10, batch=1)
    ref = _hf(hf.generate, input_ids=torch.from_numpy(question), pixel_values=_nchw(pixels),
              attention_mask=torch.from_numpy(mask), max_length=8)
    np.testing.assert_array_equal(np.asarray(ours.generate(question, pixels, attention_mask=mask, max_length=8)), ref)


def test_max_length_beyond_the_position_table_is_clamped(caption_models):
    """HF generates until a row runs past max_position_embeddings (64 here) and then fails; ours
    stops the static cache at the table's end, with a warning: HF's output at max_length 64."""
    hf, ours = caption_models
    ref = _hf(hf.generate, _nchw(_pixels(3)), max_length=64, num_beams=2)
    with pytest.warns(UserWarning, match="exceeds max_position_embeddings 64"):
        got = np.asarray(ours.generate(_pixels(3), max_length=80, num_beams=2))
    np.testing.assert_array_equal(got, ref)


def test_beam_sampling_runs(caption_models):
    _, ours = caption_models
    out = np.asarray(ours.generate(_pixels(7), rng=jax.random.key(0), do_sample=True, num_beams=3,
                                   num_return_sequences=2, max_length=10))
    assert out.shape[0] == BATCH * 2 and (out[:, 0] == BOS).all()


def test_no_recompile_on_second_call(caption_models):
    _, ours = caption_models
    pixels = _pixels(8)
    ours.generate(pixels, num_beams=2, max_length=9)
    n = generation.compiled_cache_size()
    ours.generate(pixels + 1.0, num_beams=2, max_length=9)
    assert generation.compiled_cache_size() == n


def test_argument_validation(caption_models):
    _, ours = caption_models
    pixels = _pixels()
    with pytest.raises(TypeError, match="unsupported"):
        ours.generate(pixels, beam_width=3)
    with pytest.raises(ValueError, match="num_return_sequences"):
        ours.generate(pixels, num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="max_length"):
        ours.generate(pixels, input_ids=PROMPT, max_length=4)


def test_generate_reads_weights_updated_in_place(caption_models):
    """The graph walk is cached per model, but every call reads the current parameter values."""
    from flax import nnx

    _, ours = caption_models
    model = BlipForConditionalGeneration(ours.config, rngs=nnx.Rngs(1))
    other = BlipForConditionalGeneration(ours.config, rngs=nnx.Rngs(2))
    px = _pixels()
    nnx.update(model, nnx.state(ours))
    first = np.asarray(model.generate(px, max_length=10))
    np.testing.assert_array_equal(first, np.asarray(ours.generate(px, max_length=10)))
    nnx.update(model, nnx.state(other))
    second = np.asarray(model.generate(px, max_length=10))
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(second, np.asarray(other.generate(px, max_length=10)))
    assert model in generation._SPLIT_CACHE
    generation.clear_split_cache(model)
    assert model not in generation._SPLIT_CACHE
