"""`model.save_pretrained(folder)`: safetensors + config.json that transformers loads."""

from __future__ import annotations

import os

import numpy as np

from blip_jax.checkpoints import hf
from blip_jax.checkpoints.io import SAFE_WEIGHTS, write_safetensors
from blip_jax.checkpoints.loading import variable_at


def to_hf_state_dict(model) -> dict[str, np.ndarray]:
    """Our parameters under transformers' key names and layouts (float32 for 16-bit params)."""
    out = {}
    for rule in hf.rules_for(model):
        # Attribute walk, not the split state: a parameter shared by two submodules (pretraining's
        # encoder/decoder) is written under both HF names.
        values = [np.asarray(variable_at(model, p)[...]) for p in rule.paths]
        values = [v.astype(np.float32) if v.dtype != np.float32 and v.dtype.kind == "f" else v for v in values]
        for key, value in zip(rule.hf_keys, rule.to_hf(values), strict=True):
            out[key] = value
    return out


def save_pretrained(model, folder: str | os.PathLike) -> str:
    """Write config.json (with transformers' ``architectures``) and model.safetensors; returns folder."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    config = model.config
    config.extra = {**config.extra, "architectures": [hf.HF_ARCHITECTURES[type(model).__name__]]}
    config.save_pretrained(folder)
    write_safetensors(to_hf_state_dict(model), os.path.join(folder, SAFE_WEIGHTS))
    return folder
