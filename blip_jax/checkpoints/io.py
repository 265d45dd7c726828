"""Reading and writing raw state dicts: safetensors (single or sharded), PyTorch .bin/.pth.

PyTorch files are pickles: they are opened only with ``torch.load(weights_only=True)``, which
refuses arbitrary objects, and torch is imported only when such a file is read.
"""

from __future__ import annotations

import json
import os

import numpy as np

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


def _to_numpy(value) -> np.ndarray:
    """jax / numpy / torch tensor -> numpy; bfloat16 stays bfloat16 (ml_dtypes)."""
    if hasattr(value, "detach"):  # torch.Tensor
        import torch

        t = value.detach().cpu()
        if t.dtype == torch.bfloat16:
            import ml_dtypes

            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    return np.asarray(value)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="flax") as f:
            return {k: np.asarray(f.get_tensor(k)) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def read_torch(path: str) -> dict[str, np.ndarray]:
    """A PyTorch state dict (or a Salesforce checkpoint {'model': state_dict, ...})."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path} is a PyTorch pickle; install torch (pip install 'blip-jax[torch]') to read it, "
            "or convert it to safetensors"
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: torch.load(weights_only=True) refused or failed: {e}") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return {k: _to_numpy(v) for k, v in obj.items() if hasattr(v, "shape")}


def _read_index(folder: str, index_name: str, reader) -> dict[str, np.ndarray]:
    path = os.path.join(folder, index_name)
    with open(path, encoding="utf-8") as f:
        index = json.load(f)
    if "weight_map" not in index:
        raise CheckpointError(f"{path}: no 'weight_map' field")
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        shard_path = os.path.join(folder, shard)
        if not os.path.exists(shard_path):
            raise CheckpointError(f"{path}: shard {shard!r} is missing")
        out.update(reader(shard_path))
    return out


def read_state_dict(path: str) -> tuple[dict[str, np.ndarray], str]:
    """A folder (HF layout) or a single weights file -> (state dict, the file read)."""
    if os.path.isfile(path):
        reader = read_safetensors if path.endswith(".safetensors") else read_torch
        return reader(path), path
    for name, reader in (
        (SAFE_WEIGHTS, read_safetensors),
        (SAFE_INDEX, None),
        (TORCH_WEIGHTS, read_torch),
        (TORCH_INDEX, None),
    ):
        full = os.path.join(path, name)
        if os.path.exists(full):
            if reader is None:
                inner = read_safetensors if name == SAFE_INDEX else read_torch
                return _read_index(path, name, inner), full
            return reader(full), full
    pths = sorted(f for f in os.listdir(path) if f.endswith((".pth", ".pt")))
    if len(pths) == 1:
        return read_torch(os.path.join(path, pths[0])), os.path.join(path, pths[0])
    raise CheckpointError(
        f"{path}: no weights found (looked for {SAFE_WEIGHTS}, {SAFE_INDEX}, {TORCH_WEIGHTS}, {TORCH_INDEX}, *.pth)"
    )


def write_safetensors(state: dict[str, np.ndarray], path: str, metadata: dict | None = None) -> None:
    from safetensors.numpy import save_file

    # np.ascontiguousarray would turn 0-d tensors (logit_scale) into shape (1,).
    contiguous = {k: np.require(v, requirements="C") for k, v in state.items()}
    save_file(contiguous, path, metadata=metadata or {"format": "pt"})


# What a hub snapshot fetches: a model's config and weights, or a processor's files only.
CHECKPOINT_FILES = ("*.json", "*.safetensors", "*.txt", "*.model", "pytorch_model*.bin")
PROCESSOR_FILES = ("*.json", "*.txt", "*.model")


def is_hub_id(path: str) -> bool:
    """True for 'org/name' that is not a local path."""
    return not os.path.exists(path) and path.count("/") == 1 and not path.startswith((".", "/", "~"))


def resolve_path(path_or_hub_id: str, revision: str | None = None, cache_dir: str | None = None,
                 allow_patterns: tuple[str, ...] = CHECKPOINT_FILES) -> str:
    """A local file/folder as is; otherwise a hub id fetched through huggingface_hub's cache (only
    the files matching ``allow_patterns``)."""
    path = os.fspath(path_or_hub_id)
    if os.path.exists(path):
        return path
    if not is_hub_id(path):
        raise CheckpointError(f"{path}: no such file or folder, and not a hub id of the form 'org/name'")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id=path, revision=revision, cache_dir=cache_dir,
                                 allow_patterns=list(allow_patterns))
    except Exception as e:  # offline, unknown repo, no access: say which reading of the name failed
        raise CheckpointError(f"{path}: no such local file or folder, and fetching it as a hub id failed: "
                              f"{type(e).__name__}: {e}") from e


def processor_path(path_or_hub_id: str | os.PathLike) -> str:
    """A local path as is (a missing one too: the caller's error says what it expected there); a hub
    id -> the snapshot folder holding the processor's files (configs, vocabularies; no weights)."""
    path = os.fspath(path_or_hub_id)
    return resolve_path(path, allow_patterns=PROCESSOR_FILES) if is_hub_id(path) else path
