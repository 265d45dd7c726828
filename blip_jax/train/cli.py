"""`blip-jax train --config configs/<file>.py[:arg] --workdir DIR [--config.key=value ...]`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blip-jax train", description=__doc__)
    parser.add_argument("--config", required=True, help="config file, optionally with :arg")
    parser.add_argument("--workdir", required=True, help="run directory; rerunning with it resumes")

    from blip_jax.config_loader import parse_job_args
    from blip_jax.train.loop import ResumeMismatch, TrainingDiverged, train

    args, cfg = parse_job_args(parser, argv)
    try:
        train(cfg, args.workdir)
    except TrainingDiverged as e:
        print(f"blip-jax train: {e}", file=sys.stderr)
        return 3
    except ResumeMismatch as e:
        print(f"blip-jax train: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
