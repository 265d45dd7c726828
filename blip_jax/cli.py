"""`blip-jax <command> ...`: a thin dispatcher; each command's parser lives beside its code."""

from __future__ import annotations

import importlib
import sys

# command -> (module, function taking argv list and returning an exit code, one-line help)
COMMANDS = {
    "pipeline": ("blip_jax.pipeline", "main", "the whole recipe as one resumable job (pretrain ... CapFilt ... eval)"),
    "train": ("blip_jax.train.cli", "main", "pretrain or fine-tune from a config file (resumes in --workdir)"),
    "data": ("blip_jax.data.cli", "main", "prepare / convert / inspect datasets (embedded, ArrayRecord)"),
    "capfilt": ("blip_jax.capfilt.cli", "main", "caption + filter a web dataset into a bootstrapped one (CapFilt)"),
    "caption": ("blip_jax.caption_cli", "main", "caption images with a BLIP checkpoint"),
    "convert": ("blip_jax.checkpoints.cli", "main", "convert HF / Salesforce checkpoints"),
    "eval": ("blip_jax.evaluation.cli", "main", "retrieval / captioning / VQA evaluation of a checkpoint"),
}


def _usage() -> str:
    lines = ["usage: blip-jax <command> [args...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"blip-jax: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = COMMANDS[command]
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
