"""`Cls.from_pretrained(path_or_hub_id)`: HF folders, HF hub ids and original Salesforce checkpoints."""

from __future__ import annotations

import dataclasses
import logging
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from blip_jax.checkpoints import hf, salesforce
from blip_jax.checkpoints.io import CheckpointError, read_state_dict, resolve_path
from blip_jax.configuration import BlipConfig, BlipVisionConfig

logger = logging.getLogger("blip_jax.checkpoints")

# Where a sub-model's weights sit inside full BLIP checkpoints, tried in order.
_SUBMODEL_PREFIXES = ("", "vision_model.", "text_model.", "text_encoder.", "text_decoder.bert.", "text_decoder.")


@dataclasses.dataclass
class LoadingInfo:
    source: str
    missing_keys: list[str]
    unexpected_keys: list[str]
    ignored_keys: list[str]


def _load_config(cls, folder: str | None, state: dict, config, source_is_salesforce: bool):
    if config is not None:
        return config
    if folder is not None and os.path.exists(os.path.join(folder, "config.json")):
        return cls.config_class.from_json_file(os.path.join(folder, "config.json"))
    if source_is_salesforce:
        full = salesforce.infer_config(state)
        if cls.config_class is BlipConfig:
            return full
        return full.vision_config if cls.config_class.__name__ == "BlipVisionConfig" else full.text_config
    raise CheckpointError(f"{folder}: no config.json; pass config=... to from_pretrained")


def _choose_prefix(rules: list[hf.Rule], state: dict) -> str:
    """The prefix under which this model's keys appear in ``state`` (a BlipVisionModel loaded from a
    full BLIP checkpoint reads vision_model.*)."""
    wanted = [r.hf_keys[0] for r in rules]
    best, best_hits = "", -1
    for prefix in _SUBMODEL_PREFIXES:
        hits = sum(f"{prefix}{k}" in state for k in wanted)
        if hits > best_hits:
            best, best_hits = prefix, hits
    return best


def variable_at(model, path: tuple):
    """The nnx.Variable at ``path`` found by walking attributes / list indices (so a parameter shared
    by two modules is reachable under either owner's path)."""
    node = model
    for part in path:
        node = node[part] if isinstance(part, int) else getattr(node, part)
    return node


def apply_state_dict(model, state: dict[str, np.ndarray], source: str = "state dict",
                     rules: list[hf.Rule] | None = None) -> LoadingInfo:
    """Copy an HF-named state dict into ``model`` in place; shape mismatches raise.

    ``rules`` default to those of the model's class; pass others to load e.g. retrieval-named
    weights into a BlipPretrain, whose submodules carry the same names."""
    rules = hf.rules_for(model) if rules is None else rules
    prefix = _choose_prefix(rules, state)
    used, missing = set(), []
    for rule in rules:
        keys = [prefix + k for k in rule.hf_keys]
        if not all(k in state for k in keys):
            missing += [k for k in keys if k not in state]
            continue
        used.update(keys)
        raw = [np.asarray(state[k]) for k in keys]
        targets = [variable_at(model, path) for path in rule.paths]
        expected = [v.shape for v in rule.to_hf([np.zeros(t.shape, np.float32) for t in targets])]
        for key, value, want in zip(keys, raw, expected, strict=True):
            if tuple(value.shape) != tuple(want):
                raise CheckpointError(
                    f"{source}: parameter {key} has shape {tuple(value.shape)} in the checkpoint but the "
                    f"model ({'.'.join(map(str, rule.paths[0]))}) expects {tuple(want)}"
                )
        for var, value in zip(targets, rule.to_ours(raw), strict=True):
            var.value = jnp.asarray(value, dtype=var.dtype)
    tied = {prefix + k: prefix + v for k, v in hf.tied_decoder_keys(rules).items()}
    ignored = [k for k in state if k not in used and (hf.is_ignorable(k) or k in tied)]
    unexpected = [k for k in state if k not in used and k not in set(ignored) and k.startswith(prefix)]
    return LoadingInfo(source, missing, unexpected, ignored)


POSITION_TABLE = "vision_model.embeddings.position_embedding"


def fit_position_table(state: dict, config) -> dict:
    """Resize the ViT position table of an HF-keyed `state` to `config`'s image size (bicubic over
    the patch grid, as the original's interpolate_pos_embed) when the checkpoint was trained at
    another one: pretraining at 224, fine-tuning at 384."""
    vision = config.vision_config if isinstance(config, BlipConfig) else config
    if isinstance(vision, BlipVisionConfig) and POSITION_TABLE in state:
        state = dict(state)
        state[POSITION_TABLE] = salesforce.resize_position_table(np.asarray(state[POSITION_TABLE]),
                                                                  vision.num_patches)
    return state


def as_hf_state(state: dict, config) -> dict:
    """A state dict under HF or Salesforce key names -> HF key names, the ViT position table fitted
    to `config` (a no-op for an HF state dict at its own config's image size)."""
    if salesforce.is_salesforce_state_dict(state):
        state = salesforce.to_hf_state_dict(state)
    return fit_position_table(state, config)


def read_blip_checkpoint(path_or_hub_id: str, config) -> tuple[dict[str, np.ndarray], str]:
    """An HF folder / hub id / Salesforce .pth -> (`as_hf_state` of its state dict, the file read)."""
    state, source = read_state_dict(resolve_path(path_or_hub_id))
    return as_hf_state(state, config), source


def _report(cls, info: LoadingInfo) -> None:
    if info.missing_keys:
        heads = sorted({k.split(".")[0] for k in info.missing_keys})
        logger.warning(
            "%s loaded from %s: %d weights were NOT in the checkpoint and are RANDOMLY INITIALISED "
            "(modules: %s). Train or fine-tune before using them. Missing: %s",
            cls.__name__, info.source, len(info.missing_keys), ", ".join(heads), ", ".join(info.missing_keys[:50]),
        )
    if info.unexpected_keys:
        logger.warning(
            "%s loaded from %s: %d checkpoint weights were not used: %s",
            cls.__name__, info.source, len(info.unexpected_keys), ", ".join(info.unexpected_keys[:50]),
        )


def load_pretrained(
    cls,
    path_or_hub_id,
    *,
    config=None,
    dtype: str | None = None,
    param_dtype: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    seed: int = 0,
    output_loading_info: bool = False,
    **model_kwargs,
):
    """Build ``cls`` and fill it from an HF folder / hub id or an original Salesforce checkpoint.

    Missing weights stay randomly initialised and are reported loudly; unexpected ones are
    reported by name; a shape mismatch raises `CheckpointError` naming both shapes.
    """
    path = resolve_path(path_or_hub_id, revision=revision, cache_dir=cache_dir)
    folder = path if os.path.isdir(path) else None
    state, source = read_state_dict(path)
    from_salesforce = salesforce.is_salesforce_state_dict(state)
    config = _load_config(cls, folder, state, config, from_salesforce)
    if dtype is not None or param_dtype is not None:
        config = _with_dtypes(config, dtype, param_dtype)
    # A .pth, or an HF folder given another `config=`, may meet any image size.
    state = as_hf_state(state, config)
    model = cls(config, rngs=nnx.Rngs(seed), **model_kwargs)
    info = apply_state_dict(model, state, source)
    _report(cls, info)
    return (model, info) if output_loading_info else model


def _with_dtypes(config, dtype, param_dtype):
    if isinstance(config, BlipConfig):
        return config.with_dtype(dtype, param_dtype)
    changes = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v is not None}
    return dataclasses.replace(config, **changes)
