"""The CapFilt captioner: synthetic captions for web images by nucleus sampling.

BLIP's settings (REFERENCE section 4): prompt "a picture of ", top_p 0.9, repetition_penalty 1.1,
max_length 30, min_length 10 (whole sequence, prompt included, as HF ``generate``), and HF's
default top_k 50, which the original's call to ``generate`` left in place.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    prompt: str = "a picture of "
    num_captions: int = 1  # synthetic captions per image (the paper: 1; users asked for more)
    top_p: float = 0.9
    top_k: int = 50
    temperature: float = 1.0
    repetition_penalty: float = 1.1
    max_length: int = 30
    min_length: int = 10

    @classmethod
    def from_dict(cls, d) -> SamplingConfig:
        from blip_jax.config_loader import dataclass_from_config

        out = dataclass_from_config(cls, "sampling", d)
        if out.num_captions < 1:
            raise ValueError(f"sampling.num_captions must be >= 1, got {out.num_captions}")
        if not 0.0 < out.top_p <= 1.0:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {out.top_p}")
        return out


def local_mesh():
    """A 1-D 'data' mesh over this process's devices (CapFilt shares no arrays across processes)."""
    return jax.sharding.Mesh(np.asarray(jax.local_devices()), ("data",))


def replicate(tree, mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


def split_rows(x, mesh):
    """(R, ...) host array -> rows split evenly over the mesh's devices (R a multiple of their count)."""
    return jax.device_put(np.asarray(x), NamedSharding(mesh, P("data")))


class Captioner:
    """`captioner(pixel_values (B, H, W, 3), rng) -> B lists of num_captions strings` (prompt cut off).

    The decode is `BlipForConditionalGeneration.generate` (one jit-compiled while_loop per batch
    shape); the same rng and batch give the same captions. With a ``mesh`` (a 'data' axis over this
    process's devices) the weights are replicated and each batch is split over the devices."""

    def __init__(self, model, tokenizer, sampling: SamplingConfig = SamplingConfig(), mesh=None):
        from blip_jax.evaluation.captioning import prompt_ids

        self.model, self.tokenizer, self.sampling, self.mesh = model, tokenizer, sampling, mesh
        self.prompt_ids = prompt_ids(tokenizer, sampling.prompt) if sampling.prompt else None
        if mesh is not None:
            nnx.update(model, replicate(nnx.state(model), mesh))

    def __call__(self, pixel_values, rng: jax.Array) -> list[list[str]]:
        from blip_jax.evaluation.captioning import strip_prompt

        s = self.sampling
        if self.mesh is not None:
            pixel_values = split_rows(pixel_values, self.mesh)
        ids = self.model.generate(
            pixel_values, input_ids=self.prompt_ids, do_sample=True, rng=rng, top_p=s.top_p, top_k=s.top_k,
            temperature=s.temperature, repetition_penalty=s.repetition_penalty, max_length=s.max_length,
            min_length=s.min_length, num_return_sequences=s.num_captions)
        texts = self.tokenizer.batch_decode(np.asarray(ids).tolist(), skip_special_tokens=True)
        texts = [strip_prompt(t, s.prompt).strip() for t in texts]
        k = s.num_captions
        return [texts[i * k:(i + 1) * k] for i in range(len(texts) // k)]
