"""CPU batch chunking of attention and of inference layer stacks (blip_jax.models.layers) must not
change results: every path is compared with the unchunked computation in the same test."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from blip_jax.configuration import BlipConfig, BlipTextConfig, BlipVisionConfig
from blip_jax.models import layers
from blip_jax.models.blip import BlipModel
from blip_jax.models.text import BlipTextLMHeadModel


def tiny_config() -> BlipConfig:
    tc = BlipTextConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32)
    vc = BlipVisionConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64)
    return BlipConfig.from_text_vision_configs(tc, vc, image_text_hidden_size=16)


def chunk_everything(monkeypatch):
    monkeypatch.setattr(layers, "CPU_ATTENTION_CHUNK_SCORES", 1)
    monkeypatch.setattr(layers, "CPU_INFERENCE_CHUNK_ELEMENTS", 1)


@pytest.mark.parametrize(
    "batch, scores, limit, devices, expected",
    [
        (8, 100, 100, 1, 1),    # under the limit
        (8, 400, 100, 1, 4),    # fewest divisor chunks under the limit
        (8, 300, 100, 1, 4),    # 3 does not divide 8
        (8, 10**6, 100, 1, 8),  # cannot get under: one row per chunk
        (8, 400, 100, 4, 2),    # chunks must keep a multiple of 4 rows (even sharding)
        (4, 400, 100, 4, 1),    # no valid split at all
        (6, 400, 100, 1, 6),
    ],
)
def test_batch_chunks(monkeypatch, batch, scores, limit, devices, expected):
    monkeypatch.setattr(jax, "device_count", lambda: devices)
    assert layers._batch_chunks(batch, scores, limit) == expected


def test_attention_chunks_match_with_masks_and_gradients(monkeypatch):
    b, t, s, n, h = 6, 5, 7, 2, 4
    ks = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(ks[0], (b, n, t, h))
    k = jax.random.normal(ks[1], (b, n, s, h))
    v = jax.random.normal(ks[2], (b, n, s, h))
    row_mask = (jax.random.uniform(ks[3], (b, 1, 1, s)) > 0.3).at[:, :, :, 0].set(True)
    shared_mask = jnp.tril(jnp.ones((t, s), bool))[None, None]
    head_mask = jnp.stack([jnp.tril(jnp.ones((t, s), bool), k=i) for i in range(n)])[None]  # (1, N, T, S)
    masks = (None, row_mask, shared_mask, head_mask, row_mask & shared_mask)

    def loss(q, k, v, mask):
        return jnp.sum(jnp.sin(layers.xla_attention(q, k, v, mask)))

    plain = [(layers.xla_attention(q, k, v, m), jax.grad(loss, (0, 1, 2))(q, k, v, m)) for m in masks]
    chunk_everything(monkeypatch)
    # chunks are (batch, head) rows: one row each here
    assert layers._batch_chunks(b * n, b * n * t * s, layers.CPU_ATTENTION_CHUNK_SCORES) == 12
    for m, (out, grads) in zip(masks, plain):
        np.testing.assert_allclose(layers.xla_attention(q, k, v, m), out, atol=1e-6)
        for g_chunked, g in zip(jax.grad(loss, (0, 1, 2))(q, k, v, m), grads):
            np.testing.assert_allclose(g_chunked, g, atol=1e-6)


@pytest.mark.parametrize("devices", [1, 2, 4])
def test_map_batch_chunks_keeps_device_blocks_evenly_split(monkeypatch, devices):
    monkeypatch.setattr(jax, "device_count", lambda: devices)
    rows = jnp.arange(16)
    np.testing.assert_array_equal(layers._map_batch_chunks(lambda c: c * 10, rows, 2), rows * 10)
    # Chunk j must hold the j-th contiguous half of every device's block of 16 / devices rows:
    # tag each row with its chunk's smallest and largest member.
    lo = np.asarray(layers._map_batch_chunks(lambda c: jnp.broadcast_to(c.min(), c.shape), rows, 2))
    hi = np.asarray(layers._map_batch_chunks(lambda c: jnp.broadcast_to(c.max(), c.shape), rows, 2))
    block, half = 16 // devices, 16 // devices // 2
    for r in range(16):
        j = (r % block) // half
        assert lo[r] == j * half and hi[r] == (devices - 1) * block + j * half + half - 1


def test_attention_normalised_after_value_product_equals_softmax():
    ks = jax.random.split(jax.random.key(1), 3)
    q, k, v = (jax.random.normal(kk, (2, 2, 5, 4)) * 3 for kk in ks)  # (B, N, T, H)
    mask = jnp.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], bool)[:, None, None, :]
    probs = jax.nn.softmax(jnp.where(mask, jnp.einsum("bnth,bnsh->bnts", q, k) / 2.0, -jnp.inf), -1)
    expected = jnp.einsum("bnts,bnsh->bnth", probs, v)
    np.testing.assert_allclose(layers.xla_attention(q, k, v, mask), expected, atol=1e-5)


def test_inference_layer_stacks_chunked_match(monkeypatch):
    model = BlipModel(tiny_config(), rngs=nnx.Rngs(0))
    decoder = BlipTextLMHeadModel(tiny_config().text_config, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(0)
    pixels = jnp.asarray(rng.normal(size=(4, 16, 16, 3)), jnp.float32)
    ids = jnp.asarray(rng.integers(1, 96, (4, 6)), jnp.int32)
    mask = jnp.asarray([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3, [1] * 6], jnp.int32)

    def run():
        images = model.vision_model(pixels).last_hidden_state
        text = model.text_model(ids, mask).last_hidden_state
        grounded = model.text_model(ids, mask, encoder_hidden_states=images).last_hidden_state
        logits = decoder(ids, mask, encoder_hidden_states=images).logits
        return images, text, grounded, logits

    plain = run()
    calls = []
    original = layers._run_layers_chunked

    def spy(*a):
        out = original(*a)
        calls.append(out is not None)
        return out

    chunk_everything(monkeypatch)
    monkeypatch.setattr(layers, "_run_layers_chunked", spy)
    for got, want in zip(run(), plain):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert calls == [True] * 4  # all four stacks actually took the chunked path


def test_training_forward_is_not_chunked(monkeypatch):
    chunk_everything(monkeypatch)
    called = []
    stack, chunks = layers._run_layers_chunked, layers._map_batch_chunks
    monkeypatch.setattr(layers, "_run_layers_chunked", lambda *a: called.append("stack") or stack(*a))
    monkeypatch.setattr(layers, "_map_batch_chunks", lambda *a: called.append("chunks") or chunks(*a))
    model = BlipModel(tiny_config(), rngs=nnx.Rngs(0))
    model.vision_model(jnp.zeros((2, 16, 16, 3)), deterministic=False)
    assert not called
    model.vision_model(jnp.zeros((2, 16, 16, 3)))  # inference takes both chunked paths
    assert "stack" in called and "chunks" in called


@pytest.mark.parametrize("masked", [False, True])
def test_fused_attention_path_layouts(monkeypatch, masked):
    """The jax.nn.dot_product_attention path (cuDNN on GPU) takes token-major inputs: run it with
    its XLA implementation on CPU and compare with our head-major attention."""
    attn = layers.Attention(16, 4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)[:, None, None, :] if masked else None
    ours, _ = attn(x, mask=mask)
    monkeypatch.setattr(layers, "resolve_attention_implementation", lambda *a, **k: "xla")
    fused, _ = attn(x, mask=mask)
    np.testing.assert_allclose(fused, ours, atol=1e-5)


def test_cudnn_attention_padding(monkeypatch):
    """Odd lengths (ViT: 197 tokens) reach cuDNN padded to a multiple of 64, the padding masked by
    sequence lengths: run that call with jax's XLA implementation and compare outputs and gradients
    with unpadded attention."""
    seen = []
    real = jax.nn.dot_product_attention

    def on_xla(q, k, v, **kw):
        assert kw.pop("implementation") == "cudnn"
        seen.append((q.shape[1], k.shape[1], kw.get("key_value_seq_lengths") is not None))
        return real(q, k, v, implementation="xla", **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", on_xla)
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 13, 4, 8)) for i in range(3))
    cot = jax.random.normal(jax.random.key(3), (2, 13, 4, 8))
    hm = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731

    def loss(f):
        return lambda q, k, v: (f(q, k, v) * cot).sum()

    padded = layers.cudnn_attention(q, k, v)
    plain = hm(layers.xla_attention(hm(q), hm(k), hm(v), None))
    assert padded.shape == plain.shape and seen[0] == (64, 64, True)
    np.testing.assert_allclose(padded, plain, atol=1e-5)
    g_pad = jax.grad(loss(layers.cudnn_attention), argnums=(0, 1, 2))(q, k, v)
    g_ref = jax.grad(loss(lambda q, k, v: hm(layers.xla_attention(hm(q), hm(k), hm(v), None))), argnums=(0, 1, 2))(
        q, k, v)
    for a, b in zip(g_pad, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_auto_attention_choice(monkeypatch):
    """'auto' on a GPU: cuDNN for unmasked 16-bit self-attention only; XLA for masks, cross-attention,
    float32, and everywhere on CPU."""
    resolve = layers.resolve_attention_implementation
    assert resolve("auto", jnp.bfloat16) is None  # CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert resolve("auto", jnp.bfloat16) == "cudnn"
    assert resolve("auto", jnp.bfloat16, masked=True) is None
    assert resolve("auto", jnp.bfloat16, self_attention=False) is None
    assert resolve("auto", jnp.float32) is None
    assert resolve("xla", jnp.bfloat16) is None and resolve("cudnn", jnp.float32) == "cudnn"
