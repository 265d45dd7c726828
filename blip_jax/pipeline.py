"""`blip-jax pipeline --config configs/pipeline_tiny.py[:arg] --workdir W`: the BLIP recipe as one
resumable job.

The config lists stages; each is one `blip-jax` command (train, capfilt, eval) run with
``--workdir W/<stage>`` and its own arguments, in which ``{W}`` stands for the pipeline's workdir.
A stage that finishes leaves ``W/<stage>/STAGE_DONE`` (its command line); rerunning the pipeline
skips those and resumes the interrupted one (each command resumes on its own), and stops with exit
code 2 if a finished stage's command line has changed. A failing stage stops the pipeline with
its exit code. SIGTERM / SIGINT (a scheduler's warning) reach a running train or capfilt stage,
which saves and exits with code 75 (EX_TEMPFAIL, on every host: the stop is agreed); the pipeline
then stops without marking that stage done and exits 75 too, like `train`. A signal during a stage
that finishes anyway (eval) marks it done and stops the pipeline, with 75, before the next one; on
several hosts that stop is agreed after every stage.
At the end a summary compares the evaluations and shows the CapFilt report.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from blip_jax.files import write_json_atomic

log = logging.getLogger("blip_jax.pipeline")

DONE = "STAGE_DONE"
# retrieval/itc_r_mean: the same ranking by ITC alone, so the ITM rerank's share shows;
# caption/true_of_scene and caption/shapes: the captions checked against the embedded world's
# scenes (blip_jax.data.synthetic.caption_checks), which CIDEr cannot tell apart
SUMMARY_METRICS = ("retrieval/txt_r1", "retrieval/img_r1", "retrieval/r_mean", "retrieval/itc_r_mean", "caption/CIDEr",
                   "caption/true_of_scene", "caption/colors", "caption/shapes", "vqa/accuracy")


def stage_argv(stage, workdir: str) -> list[str]:
    """One stage of the config -> the `blip-jax` argv that runs it."""
    stage = stage.to_dict() if hasattr(stage, "to_dict") else dict(stage)
    missing = {"name", "command", "args"} - set(stage)
    if missing:
        raise ValueError(f"pipeline stage {stage!r}: missing {sorted(missing)}")
    args = [str(a).replace("{W}", workdir) for a in stage["args"]]
    return [stage["command"], *args, "--workdir", os.path.join(workdir, stage["name"])]


def run_pipeline(cfg, workdir: str) -> int:
    from blip_jax.train.distributed import maybe_initialize_distributed
    from blip_jax.train.preemption import PreemptionHandler

    # Before our handler: jax.distributed installs its own SIGTERM notifier when it initialises.
    maybe_initialize_distributed()
    os.makedirs(workdir, exist_ok=True)
    with PreemptionHandler() as stop:
        return _run_stages(cfg, workdir, stop)


def _run_stages(cfg, workdir: str, stop) -> int:
    from blip_jax.cli import main as blip_jax
    from blip_jax.train.preemption import EXIT_PREEMPTED

    seconds = {}
    for stage in cfg.stages:
        name = stage["name"]
        done = os.path.join(workdir, name, DONE)
        argv = stage_argv(stage, workdir)
        if os.path.exists(done):
            with open(done) as f:
                before = json.load(f)["argv"]
            if before != argv:
                print(f"blip-jax pipeline: stage {name!r} in {workdir} finished with other arguments:\n  before: "
                      f"{' '.join(before)}\n  now:    {' '.join(argv)}\nuse a new --workdir, or delete "
                      f"{os.path.join(workdir, name)} and the stages after it", file=sys.stderr)
                return 2
            log.info("stage %s: done before, skipped", name)
            continue
        log.info("stage %s: blip-jax %s", name, " ".join(argv))
        t0 = time.time()
        code = blip_jax(argv)
        if code == EXIT_PREEMPTED:  # stopped early (agreed on every host): not done
            print(f"blip-jax pipeline: stopped ({stop.reason or 'stage stopped early'}) during stage {name!r}, "
                  "which is not marked done; rerunning the same command resumes from it", file=sys.stderr)
            return EXIT_PREEMPTED
        if code:
            print(f"blip-jax pipeline: stage {name!r} failed with exit code {code}; rerunning the same command "
                  "resumes from it", file=sys.stderr)
            return code
        seconds[name] = time.time() - t0
        write_json_atomic(done, {"argv": argv, "seconds": round(seconds[name], 1)})
        if stop.should_stop():  # a signal during a stage that finished anyway; agreed by every host
            print(f"blip-jax pipeline: stopped ({stop.reason}) after stage {name!r}; rerunning the same command "
                  "goes on with the next stage", file=sys.stderr)
            return EXIT_PREEMPTED
    print(summary(cfg, workdir, seconds))
    return 0


def summary(cfg, workdir: str, seconds: dict[str, float]) -> str:
    """The evaluations side by side and the CapFilt report, from the stages' output files."""
    lines = []
    evals = {}
    for stage in cfg.stages:
        path = os.path.join(workdir, stage["name"], "eval_metrics.json")
        if stage["command"] == "eval" and os.path.exists(path):
            with open(path) as f:
                evals[stage["name"]] = json.load(f)
    if evals:  # one row a metric, one column an evaluation
        width = max(12, *(len(name) + 2 for name in evals))
        lines.append(f"{'':24s}" + "".join(f"{name:>{width}s}" for name in evals))
        for k in SUMMARY_METRICS:
            lines.append(f"{k:24s}" + "".join(f"{m[k]:{width}.3f}" if k in m else f"{'-':>{width}s}"
                                              for m in evals.values()))
    for stage in cfg.stages:
        path = os.path.join(workdir, stage["name"], "report.json")
        if stage["command"] == "capfilt" and os.path.exists(path):
            from blip_jax.capfilt.report import format_report

            with open(path) as f:
                lines += [f"CapFilt ({stage['name']}):", format_report(json.load(f))]
    if seconds:
        lines.append("stage seconds (this run): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blip-jax pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file with config.stages, optionally with :arg")
    parser.add_argument("--workdir", required=True, help="every stage runs in <workdir>/<stage>")
    from blip_jax.config_loader import parse_job_args

    args, cfg = parse_job_args(parser, argv)
    if "stages" not in cfg or not cfg.stages:
        parser.error(f"{args.config} has no config.stages")
    return run_pipeline(cfg, args.workdir)


if __name__ == "__main__":
    sys.exit(main())
