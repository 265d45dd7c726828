"""`from_pretrained` / `save_pretrained` for every model class (see blip_jax.checkpoints.hf)."""

from __future__ import annotations


class PretrainedMixin:
    """Adds HF-style loading and saving to an nnx.Module whose class sets ``config_class``."""

    config_class = None

    @classmethod
    def from_pretrained(cls, path_or_hub_id, **kwargs):
        from blip_jax.checkpoints.loading import load_pretrained

        return load_pretrained(cls, path_or_hub_id, **kwargs)

    def save_pretrained(self, folder, **kwargs):
        from blip_jax.checkpoints.saving import save_pretrained

        return save_pretrained(self, folder, **kwargs)
