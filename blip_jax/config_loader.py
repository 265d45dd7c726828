"""Job configs: `--config path/to/file.py[:arg]` (a big_vision-style `get_config(arg)`), then
`--config.a.b=value` overrides typed by the existing field."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import logging
import os
import sys

import ml_collections


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """'configs/pretrain_tiny.py' or 'configs/pretrain.py:vit_b_14m' -> the file's get_config(arg)."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"blip_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} has no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise TypeError(f"{path}: get_config() must return an ml_collections.ConfigDict, got {type(config).__name__}")
    return config


def _parse_value(text: str, current):
    if isinstance(current, str):
        return text
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if current is not None and not isinstance(value, type(current)) and not (
        isinstance(current, (tuple, list)) and isinstance(value, (tuple, list))
    ):
        raise ValueError(f"expected {type(current).__name__}, got {text!r}")
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """['--config.lr=1e-4', 'config.data.batch_size=64'] -> config with those fields set."""
    for item in overrides:
        key, sep, text = item.lstrip("-").partition("=")
        if not sep or not key.startswith("config."):
            raise ValueError(f"override {item!r}: expected --config.<field>=<value>")
        parts = key[len("config."):].split(".")
        node = config
        for p in parts[:-1]:
            if p not in node:
                raise KeyError(f"override {item!r}: no field {p!r} in the config")
            node = node[p]
        leaf = parts[-1]
        if leaf not in node:
            raise KeyError(f"override {item!r}: no field {'.'.join(parts)!r} in the config")
        try:
            with node.ignore_type():
                node[leaf] = _parse_value(text, node[leaf])
        except ValueError as e:
            raise ValueError(f"override {item!r}: {e}") from None
    return config


def load_config(spec: str, overrides: list[str] | None = None) -> ml_collections.ConfigDict:
    return apply_overrides(load_config_file(spec), overrides or [])


def parse_job_args(parser: argparse.ArgumentParser, argv: list[str] | None):
    """Parse a job command line (the parser's own flags, including --config, plus --config.x=y
    overrides), set up logging, and load the config -> (args, config)."""
    parser.add_argument("--log-level", default="INFO")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        parser.error(f"unrecognised arguments: {' '.join(bad)} (overrides look like --config.lr=1e-4)")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args, load_config(args.config, overrides)
    except (KeyError, ValueError, TypeError, FileNotFoundError) as e:
        parser.error(str(e).strip('"'))


def dataclass_from_config(cls, section: str, values):
    """A dataclass from a config section (ConfigDict or dict); unknown keys are an error naming the
    section, the keys and the known fields."""
    import dataclasses

    d = values.to_dict() if hasattr(values, "to_dict") else dict(values)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"{section}: unknown fields {unknown}; known: {known}")
    return cls(**d)
