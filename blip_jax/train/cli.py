"""`blip-jax train --config configs/<file>.py[:arg] --workdir DIR [--config.key=value ...]`."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blip-jax train", description=__doc__)
    parser.add_argument("--config", required=True, help="config file, optionally with :arg")
    parser.add_argument("--workdir", required=True, help="run directory; rerunning with it resumes")
    parser.add_argument("--log-level", default="INFO")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        parser.error(f"unrecognised arguments: {' '.join(bad)} (overrides look like --config.lr=1e-4)")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from blip_jax.config_loader import load_config
    from blip_jax.train.loop import TrainingDiverged, train

    cfg = load_config(args.config, overrides)
    try:
        train(cfg, args.workdir)
    except TrainingDiverged as e:
        print(f"blip-jax train: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
