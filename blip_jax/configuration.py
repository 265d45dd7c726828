"""BLIP configurations with transformers' field names and defaults.

`BlipVisionConfig`, `BlipTextConfig` and `BlipConfig` read and write Hugging Face `config.json`
files. Fields transformers writes but that mean nothing here (``architectures``,
``torch_dtype``, ``transformers_version``, ...) are accepted and kept in ``extra`` so that a
round trip preserves them; anything else unknown, or a value of the wrong type, raises a
``ValueError`` naming the config class, field and value.

blip-jax-only fields (the places where the original Salesforce code and the HF port differ)
carry HF behaviour by default:
  * ``BlipTextConfig.use_enc_token_for_itm`` - replace token 0 by [ENC] for image-grounded
    encoding (original BLIP) instead of keeping [CLS] (HF).
  * ``BlipVisionConfig.layer_norm_eps`` - 1e-5 (HF) or 1e-6 (original).
  * ``BlipTextConfig.label_smoothing`` - 0.0 (HF default) or 0.1 (original LM loss).
  * ``dtype`` / ``param_dtype`` - compute and storage dtypes for the Flax modules.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Any, ClassVar, Union, get_args, get_origin, get_type_hints

# Keys transformers writes into config.json that carry no model semantics for us.
_PASSTHROUGH_KEYS = {
    "architectures",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "_name_or_path",
    "_commit_hash",
    "_attn_implementation_autoset",
    "return_dict",
    "output_hidden_states",
    "output_attentions",
    "torchscript",
    "use_bfloat16",
    "tf_legacy_loss",
    "pruned_heads",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "add_cross_attention",
    "tie_encoder_decoder",
    "id2label",
    "label2id",
    "problem_type",
    "finetuning_task",
    "tokenizer_class",
    "prefix",
    "decoder_start_token_id",
    "task_specific_params",
    "cross_attention_hidden_size",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
    "sep_token_id",
    "gradient_checkpointing",
    "model_type",
    "text_config_dict",
    "vision_config_dict",
    "initializer_factor",
    "dropout",
    "attention_dropout",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
}

_DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config field is unknown or has a value of the wrong type."""


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = get_origin(annotation)
    if annotation is Any:
        return True
    if origin is Union:
        return any(_type_ok(value, a) for a in get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


@dataclasses.dataclass(kw_only=True)
class _BaseConfig:
    """Shared dict/JSON plumbing and validation for the three config classes."""

    model_type: ClassVar[str] = ""
    extra: dict = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self):
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in self._nested_fields():
                continue
            if isinstance(value, float) and hints[f.name] is int and value.is_integer():
                value = int(value)
                setattr(self, f.name, value)
            if not _type_ok(value, hints[f.name]):
                raise ConfigError(
                    f"{type(self).__name__}.{f.name}: expected {hints[f.name]}, got {value!r} "
                    f"({type(value).__name__})"
                )
        for name in ("dtype", "param_dtype"):
            if hasattr(self, name) and getattr(self, name) not in _DTYPES:
                raise ConfigError(
                    f"{type(self).__name__}.{name}: expected one of {_DTYPES}, got {getattr(self, name)!r}"
                )

    @classmethod
    def _nested_fields(cls) -> tuple[str, ...]:
        return ()

    # ---- dict / json -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, _BaseConfig) else copy.deepcopy(value)
        out.update(copy.deepcopy(self.extra))
        out["model_type"] = self.model_type
        return out

    @classmethod
    def from_dict(cls, d: dict, *, source: str | None = None, **overrides):
        d = {**d, **overrides}
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs, extra = {}, {}
        for key, value in d.items():
            if key in names:
                kwargs[key] = value
            elif key in _PASSTHROUGH_KEYS or key.startswith("_"):
                if key != "model_type":
                    extra[key] = value
            else:
                where = f" in {source}" if source else ""
                raise ConfigError(f"{cls.__name__}: unknown field {key!r} (value {value!r}){where}")
        try:
            return cls(**kwargs, extra=extra)
        except ConfigError as e:
            raise ConfigError(f"{e}{' in ' + source if source else ''}") from None

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, folder: str | os.PathLike) -> str:
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "config.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())
        return path

    @classmethod
    def from_json_file(cls, path: str | os.PathLike):
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(d).__name__}")
        return cls._from_any_dict(d, source=str(path))

    @classmethod
    def _from_any_dict(cls, d: dict, source: str | None = None):
        return cls.from_dict(d, source=source)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike):
        """Read ``config.json`` from a local folder (hub ids go through `blip_jax.checkpoints`)."""
        path = os.path.join(folder, "config.json") if os.path.isdir(folder) else folder
        return cls.from_json_file(path)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def override_text_config(model, changes: dict, why: str) -> dict:
    """Set fields of a loaded model's text config in place (the config object the model and its
    submodules share), e.g. ``use_enc_token_for_itm=True`` for an HF checkpoint of a model the
    original trained with [ENC]. The changed config is validated first ([ENC] inside the
    vocabulary, ...), so a bad value changes nothing. Returns {field: (old, new)} of what changed;
    each change is logged with ``why``."""
    import logging

    tc = model.config.text_config
    tc.replace(**changes)
    changed = {k: (getattr(tc, k), v) for k, v in changes.items() if getattr(tc, k) != v}
    for key, (old, new) in changed.items():
        logging.getLogger("blip_jax").info("%s: text_config.%s %s -> %s (%s)", type(model).__name__, key, old, new,
                                           why)
        setattr(tc, key, new)
    return changed


@dataclasses.dataclass(kw_only=True)
class BlipVisionConfig(_BaseConfig):
    """ViT image encoder. Defaults: ViT-B/16 at 384 px (HF)."""

    model_type: ClassVar[str] = "blip_vision_model"
    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 384
    patch_size: int = 16
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 1e-10
    num_channels: int = 3
    # blip-jax extras
    drop_path_rate: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def _from_any_dict(cls, d, source=None):
        if d.get("model_type") == "blip" and "vision_config" in d:
            d = d["vision_config"]
        return cls.from_dict(d, source=source)


@dataclasses.dataclass(kw_only=True)
class BlipTextConfig(_BaseConfig):
    """BERT-style text transformer (encoder and/or image-grounded decoder)."""

    model_type: ClassVar[str] = "blip_text_model"
    vocab_size: int = 30524
    hidden_size: int = 768
    encoder_hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 512
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    bos_token_id: int = 30522
    eos_token_id: int = 2
    pad_token_id: int = 0
    sep_token_id: int = 102
    is_decoder: bool = True
    use_cache: bool = True
    tie_word_embeddings: bool = True
    label_smoothing: float = 0.0
    # blip-jax extras
    # [ENC]; None: bos_token_id + 1, as BLIP's tokenizer appends [DEC] then [ENC] (30522, 30523).
    enc_token_id: int | None = None
    use_enc_token_for_itm: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.enc_token_id is None:
            self.enc_token_id = self.bos_token_id + 1
        # HF configs carry BLIP's default ids whatever their vocabulary; [ENC] is checked where the
        # model uses it (ITM in the original flavour): an embedding lookup outside the table would be
        # clamped silently, not fail.
        if self.use_enc_token_for_itm and not 0 <= self.enc_token_id < self.vocab_size:
            raise ConfigError(f"BlipTextConfig.enc_token_id: {self.enc_token_id} is outside the vocabulary "
                              f"(vocab_size {self.vocab_size}); it is used as [ENC] since use_enc_token_for_itm "
                              "is true")

    @classmethod
    def from_dict(cls, d, *, source=None, **overrides):
        d = dict(d)
        # Some older HF text configs store these as explicit null or as dropout aliases.
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if d.get(key) is None:
                d.pop(key, None)
        return super().from_dict(d, source=source, **overrides)

    @classmethod
    def _from_any_dict(cls, d, source=None):
        if d.get("model_type") == "blip" and "text_config" in d:
            d = d["text_config"]
        return cls.from_dict(d, source=source)


@dataclasses.dataclass(kw_only=True)
class BlipConfig(_BaseConfig):
    """Vision + text configs and the joint heads' sizes."""

    model_type: ClassVar[str] = "blip"
    text_config: BlipTextConfig | dict | None = None
    vision_config: BlipVisionConfig | dict | None = None
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592
    image_text_hidden_size: int = 256
    label_smoothing: float = 0.0
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02

    @classmethod
    def _nested_fields(cls):
        return ("text_config", "vision_config")

    def __post_init__(self):
        if self.text_config is None:
            self.text_config = BlipTextConfig()
        elif isinstance(self.text_config, dict):
            self.text_config = BlipTextConfig.from_dict(self.text_config, source="BlipConfig.text_config")
        if self.vision_config is None:
            self.vision_config = BlipVisionConfig()
        elif isinstance(self.vision_config, dict):
            self.vision_config = BlipVisionConfig.from_dict(
                self.vision_config, source="BlipConfig.vision_config"
            )
        if not isinstance(self.text_config, BlipTextConfig):
            raise ConfigError(f"BlipConfig.text_config: expected BlipTextConfig, got {self.text_config!r}")
        if not isinstance(self.vision_config, BlipVisionConfig):
            raise ConfigError(
                f"BlipConfig.vision_config: expected BlipVisionConfig, got {self.vision_config!r}"
            )
        super().__post_init__()
        # As in transformers: the text stack's cross-attention reads vision-width states.
        self.text_config.encoder_hidden_size = self.vision_config.hidden_size

    @classmethod
    def from_text_vision_configs(
        cls, text_config: BlipTextConfig, vision_config: BlipVisionConfig, **kwargs
    ) -> BlipConfig:
        return cls(text_config=copy.deepcopy(text_config), vision_config=copy.deepcopy(vision_config), **kwargs)

    @classmethod
    def from_dict(cls, d, *, source=None, **overrides):
        d = dict(d)
        for key, sub in (("text_config", BlipTextConfig), ("vision_config", BlipVisionConfig)):
            value = d.get(key)
            if isinstance(value, dict):
                d[key] = sub.from_dict(value, source=f"{source or 'config'}:{key}")
        return super().from_dict(d, source=source, **overrides)

    def with_dtype(self, dtype: str | None = None, param_dtype: str | None = None) -> BlipConfig:
        """A copy whose vision and text stacks compute in ``dtype`` and store ``param_dtype``."""
        cfg = copy.deepcopy(self)
        for sub in (cfg.text_config, cfg.vision_config):
            if dtype is not None:
                sub.dtype = dtype
            if param_dtype is not None:
                sub.param_dtype = param_dtype
            sub.__post_init__()
        return cfg


def load_config_json(path: str | os.PathLike) -> BlipConfig | BlipTextConfig | BlipVisionConfig:
    """Read a config.json and return the config class its ``model_type`` names."""
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    model_type = d.get("model_type", "blip")
    for cls in (BlipConfig, BlipTextConfig, BlipVisionConfig):
        if cls.model_type == model_type:
            return cls.from_dict(d, source=str(path))
    raise ConfigError(f"{path}: model_type {model_type!r} is not a BLIP config")
