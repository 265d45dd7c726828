"""ViT image encoder (timm-style, pre-norm) -> `BlipVisionModel`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from blip_jax.checkpoints.pretrained import PretrainedMixin
from blip_jax.configuration import BlipVisionConfig
from blip_jax.models.layers import EMBED, TransformerLayer, as_dtype, layer_norm, run_layers
from blip_jax.models.outputs import BaseModelOutputWithPooling


def init_std(config: BlipVisionConfig) -> float:
    """Weight init scale. HF's vision default (1e-10) only makes sense when weights are loaded
    afterwards; for training from scratch anything below 1e-4 means timm's ViT default, 0.02."""
    return config.initializer_range if config.initializer_range >= 1e-4 else 0.02


@functools.lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights reproducing torch's bicubic interpolate (A=-0.75, align_corners=False).

    Border taps are clamped to the edge as torch does; built with numpy at trace time, so the
    resize is two small matmuls in the compiled graph.
    """
    a = -0.75
    scale = in_size / out_size
    m = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        src = (i + 0.5) * scale - 0.5
        x0 = int(np.floor(src))
        t = src - x0
        ws = (
            ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
            ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
        )
        for k, w in enumerate(ws):
            m[i, min(max(x0 - 1 + k, 0), in_size - 1)] += w
    return m.astype(np.float32)


def check_pixel_values(pixel_values, channels: int) -> None:
    """The two inputs that would otherwise fail deep inside the patch convolution, or not at all:
    channels-first arrays (transformers' layout) and raw integer pixels (no processor)."""
    shape = tuple(pixel_values.shape)
    if len(shape) != 4 or shape[-1] != channels:
        hint = ("; this looks channels-first (transformers' layout): use pixel_values.transpose(0, 2, 3, 1)"
                if len(shape) == 4 and shape[1] == channels else "")
        raise ValueError(f"pixel_values must be channels-last (B, H, W, {channels}), got shape {shape}{hint}")
    if not jnp.issubdtype(pixel_values.dtype, jnp.floating):
        raise ValueError(f"pixel_values has dtype {pixel_values.dtype}, not float: pass images through "
                         "BlipImageProcessor (rescale and normalise), which returns float32 channels-last arrays")


class VisionEmbeddings(nnx.Module):
    """Patchify (conv, kernel = stride = patch), prepend [CLS], add learned positions."""

    def __init__(self, config: BlipVisionConfig, *, rngs: nnx.Rngs):
        d, p = config.hidden_size, config.patch_size
        pdt = as_dtype(config.param_dtype)
        self.patch_size = p
        self.dtype = as_dtype(config.dtype)
        self.patch_embedding = nnx.Conv(
            config.num_channels, d, kernel_size=(p, p), strides=(p, p), padding="VALID",
            dtype=self.dtype, param_dtype=pdt,
            kernel_init=nnx.initializers.truncated_normal(init_std(config)),
            kernel_metadata={"logical_axes": (None, None, None, EMBED)},
            bias_metadata={"logical_axes": (EMBED,)},
            rngs=rngs,
        )
        init = nnx.initializers.truncated_normal(init_std(config))
        self.class_embedding = nnx.Param(init(rngs.params(), (1, 1, d), pdt), logical_axes=(None, None, EMBED))
        self.position_embedding = nnx.Param(
            init(rngs.params(), (1, config.num_patches + 1, d), pdt), logical_axes=(None, None, EMBED)
        )

    def interpolate_pos_encoding(self, height: int, width: int) -> jax.Array:
        """Position table (1, 1 + h*w, D) bicubically resized to a (height, width) image."""
        pos = self.position_embedding[...]
        num_positions = pos.shape[1] - 1
        new_h, new_w = height // self.patch_size, width // self.patch_size
        if new_h * new_w == num_positions and height == width:
            return pos
        side = int(num_positions**0.5)
        grid = pos[0, 1:].reshape(side, side, -1).astype(jnp.float32)
        mh, mw = bicubic_matrix(side, new_h), bicubic_matrix(side, new_w)
        grid = jnp.einsum("ih,jw,hwd->ijd", mh, mw, grid, precision=jax.lax.Precision.HIGHEST)
        return jnp.concatenate([pos[:, :1], grid.reshape(1, new_h * new_w, -1).astype(pos.dtype)], axis=1)

    def __call__(self, pixel_values: jax.Array, interpolate_pos_encoding: bool = False) -> jax.Array:
        """pixel_values (B, H, W, C) float channels-last -> embeddings (B, 1 + H/p * W/p, D)."""
        check_pixel_values(pixel_values, self.patch_embedding.in_features)
        b, h, w, _ = pixel_values.shape
        patches = self.patch_embedding(pixel_values.astype(self.dtype))
        patches = patches.reshape(b, -1, patches.shape[-1])
        cls = jnp.broadcast_to(self.class_embedding[...].astype(patches.dtype), (b, 1, patches.shape[-1]))
        x = jnp.concatenate([cls, patches], axis=1)
        pos = self.interpolate_pos_encoding(h, w) if interpolate_pos_encoding else self.position_embedding[...]
        if pos.shape[1] < x.shape[1]:
            raise ValueError(
                f"image {h}x{w} gives {x.shape[1] - 1} patches but the model has {pos.shape[1] - 1} "
                "position embeddings; pass interpolate_pos_encoding=True"
            )
        return x + pos[:, : x.shape[1]].astype(x.dtype)


class BlipVisionModel(PretrainedMixin, nnx.Module):
    """ViT: embeddings -> L pre-norm layers -> final LayerNorm.

    Output: last_hidden_state (B, 1 + N, D); pooler_output (B, D) = LN(last_hidden_state[:, 0])
    (the final LayerNorm applied a second time to [CLS], as in transformers).
    """

    config_class = BlipVisionConfig

    def __init__(self, config: BlipVisionConfig, *, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        self.embeddings = VisionEmbeddings(config, rngs=rngs)
        dpr = np.linspace(0.0, config.drop_path_rate, config.num_hidden_layers).tolist()
        self.layers = nnx.List(
            [
                TransformerLayer(
                    config.hidden_size, config.num_attention_heads, config.intermediate_size,
                    pre_norm=True, layer_norm_eps=config.layer_norm_eps, act=config.hidden_act,
                    dtype=config.dtype, param_dtype=config.param_dtype,
                    attention_dropout_rate=config.attention_dropout, drop_path_rate=dpr[i], std=init_std(config),
                    rngs=rngs,
                )
                for i in range(config.num_hidden_layers)
            ]
        )
        self.post_layernorm = layer_norm(
            config.hidden_size, config.layer_norm_eps, dtype=config.dtype, param_dtype=config.param_dtype,
            rngs=rngs,
        )

    def __call__(
        self,
        pixel_values: jax.Array,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
        deterministic: bool = True,
    ) -> BaseModelOutputWithPooling:
        x = self.embeddings(pixel_values, interpolate_pos_encoding)
        hidden_states = [x] if output_hidden_states else None
        if output_hidden_states:
            for layer in self.layers:
                x, _ = layer(x, deterministic=deterministic)
                hidden_states.append(x)
        else:
            x, _ = run_layers(self.layers, x, remat=self.config.remat, deterministic=deterministic)
        x = self.post_layernorm(x)
        return BaseModelOutputWithPooling(
            last_hidden_state=x,
            pooler_output=self.post_layernorm(x[:, 0]),
            hidden_states=tuple(hidden_states) if hidden_states else None,
        )
