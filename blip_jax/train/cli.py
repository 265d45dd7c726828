"""`blip-jax train --config configs/<file>.py[:arg] --workdir DIR [--config.key=value ...]`.

Exit status: 0 finished; 75 (EX_TEMPFAIL) stopped early by SIGTERM / SIGINT after saving a
checkpoint (rerun the same command to resume; launch/slurm.sbatch requeues on it); 2 the workdir's
checkpoint does not fit the config; 3 training diverged.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blip-jax train", description=__doc__)
    parser.add_argument("--config", required=True, help="config file, optionally with :arg")
    parser.add_argument("--workdir", required=True, help="run directory; rerunning with it resumes")

    from blip_jax.config_loader import parse_job_args
    from blip_jax.train.loop import ResumeMismatch, TrainingDiverged, train
    from blip_jax.train.preemption import EXIT_PREEMPTED

    args, cfg = parse_job_args(parser, argv)
    try:
        result = train(cfg, args.workdir)
    except TrainingDiverged as e:
        print(f"blip-jax train: {e}", file=sys.stderr)
        return 3
    except ResumeMismatch as e:
        print(f"blip-jax train: {e}", file=sys.stderr)
        return 2
    if result.stopped_early:
        print(f"blip-jax train: stopped early at step {result.final_step}; rerun the same command to resume "
              f"(exit code {EXIT_PREEMPTED})", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
