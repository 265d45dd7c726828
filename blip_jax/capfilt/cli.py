"""`blip-jax capfilt --config configs/capfilt*.py[:arg] --workdir DIR [--config.key=value]`.

Captions every image of ``config.data.source`` with the captioner, scores web and synthetic texts
with the filter, and writes the bootstrapped dataset, decisions.jsonl and report.json to --workdir
(`blip_jax.capfilt.bootstrap`). Rerunning the same command resumes; a changed config exits with
code 2 naming the changed fields. SIGTERM / SIGINT finish the chunk in progress and exit with code
75 (EX_TEMPFAIL, as `blip-jax train`): not finished, rerun to go on. With several processes the
stop is agreed: when any process was signalled, every process exits 75.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blip-jax capfilt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file, optionally with :arg")
    parser.add_argument("--workdir", required=True, help="parts, decisions, the bootstrapped dataset, the report")
    parser.add_argument("--max-chunks", type=int, default=None,
                        help="stop after this many new chunks (resume later with the same command)")
    from blip_jax.config_loader import parse_job_args

    args, cfg = parse_job_args(parser, argv)
    from blip_jax.capfilt.bootstrap import CapfiltResumeMismatch, build_run, run_capfilt
    from blip_jax.capfilt.report import format_report
    from blip_jax.train.checkpointing import config_to_json
    from blip_jax.train.distributed import maybe_initialize_distributed
    from blip_jax.train.preemption import EXIT_PREEMPTED, PreemptionHandler

    maybe_initialize_distributed()
    try:
        run = build_run(cfg, args.workdir)
        with PreemptionHandler() as stop:  # after jax.distributed, whose own SIGTERM notifier it replaces
            report = run_capfilt(run, args.workdir, cfg_json=config_to_json(cfg), max_chunks=args.max_chunks,
                                 stop=stop)
            # Every process returns from run_capfilt; agree whether any was signalled (a process whose
            # share was done returns None like a finished one when another stopped).
            stopped = stop.should_stop()
    except CapfiltResumeMismatch as e:
        print(f"blip-jax capfilt: {e}", file=sys.stderr)
        return 2
    if report is not None:
        print(format_report(report))
        print(f"bootstrapped dataset: {json.dumps(report['output'])}")
    if stopped:
        print(f"blip-jax capfilt: stopped early ({stop.reason}); rerun the same command to go on "
              f"(exit code {EXIT_PREEMPTED})", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
