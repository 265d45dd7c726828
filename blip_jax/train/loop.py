"""`blip-jax train`: the one training loop for pretraining and fine-tuning.

    config -> mesh -> tokenizer + grain pipeline -> model (scratch / HF ViT+BERT / BLIP ckpt)
    -> sharded TrainState (restored from the workdir when a checkpoint exists)
    -> AOT-compiled train step (donated state, explicit shardings)
    -> steps, with metrics (console, TensorBoard, metrics.jsonl), async checkpoints,
       SIGTERM handling and a NaN guard -> export of HF-format models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time

import jax
import ml_collections
import numpy as np

from blip_jax.compiler_options import train_compiler_options
from blip_jax.configuration import BlipConfig, BlipTextConfig, BlipVisionConfig
from blip_jax.train import flops as flops_lib
from blip_jax.train import mesh as mesh_lib
from blip_jax.train import tasks

log = logging.getLogger("blip_jax.train")


class ResumeMismatch(ValueError):
    """The workdir's checkpoint was saved under a config whose train state this one cannot restore."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


# ------------------------------------------------------------------------------------------------
# Building blocks


def model_config(cfg: ml_collections.ConfigDict, vocab_size: int | None = None, special_ids: dict | None = None):
    """BlipConfig from cfg.model (+ the tokenizer's vocabulary size and special ids)."""
    m = cfg.model
    text = dict(m.text)
    if vocab_size is not None:
        text["vocab_size"] = vocab_size
    text.update(special_ids or {})
    common = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat)
    return BlipConfig.from_text_vision_configs(
        BlipTextConfig(**text, **common), BlipVisionConfig(**dict(m.vision), **common),
        image_text_hidden_size=m.image_text_hidden_size,
    )


def ensure_embedded_dataset(cfg, workdir: str) -> str:
    """Generate the embedded dataset once per workdir (deterministic; every process writes its own
    copy only if it has no shared filesystem - generation is cheap)."""
    from blip_jax.data.synthetic import generate_embedded_dataset

    out = cfg.data.embedded_dir or os.path.join(workdir, "data")
    manifest = os.path.join(out, "manifest.json")
    if not os.path.exists(manifest):
        t0 = time.time()
        generate_embedded_dataset(out, **dict(cfg.data.embedded_sizes))
        log.info("generated the embedded dataset in %s (%.1fs)", out, time.time() - t0)
    return out


def embedded_specs(names, root: str) -> list[dict]:
    """Embedded split names (or explicit spec dicts) -> DatasetSpec dicts over the real on-disk formats."""
    from blip_jax.data.synthetic import embedded_spec

    return [embedded_spec(n, root) if isinstance(n, str) else dict(n) for n in names]


def load_tokenizer(cfg, data_root: str | None, fallback: str = ""):
    """cfg.tokenizer.path, else the embedded dataset's vocab.txt, else ``fallback`` (a checkpoint folder)."""
    from blip_jax.processing.tokenization import load_tokenizer as load

    path = cfg.get("tokenizer", {}).get("path", "") if "tokenizer" in cfg else ""
    path = path or (os.path.join(data_root, "vocab.txt") if data_root else "") or fallback
    if not path:
        raise ValueError("tokenizer.path is empty and there is no embedded dataset vocabulary")
    return load(path)


def special_ids(tok) -> dict:
    return dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id,
                eos_token_id=tok.sep_token_id, enc_token_id=tok.enc_token_id)


def _scalar_metrics(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


# ------------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass
class TrainResult:
    final_step: int
    history: list[dict]
    workdir: str
    stopped_early: bool = False  # stopped by SIGTERM / SIGINT (after saving): rerun to resume


def train(cfg: ml_collections.ConfigDict, workdir: str) -> TrainResult:
    """Run (or resume) the job described by ``cfg`` in ``workdir``.

    A SIGTERM / SIGINT from the start on (the handler goes in right after jax.distributed, before
    the data, the model and the compilation) stops the run at the next agreed step boundary with a
    checkpoint, or before the first step without one; ``TrainResult.stopped_early`` is then True."""
    from blip_jax.train.distributed import maybe_initialize_distributed
    from blip_jax.train.preemption import PreemptionHandler

    maybe_initialize_distributed()
    # After jax.distributed (whose own SIGTERM notifier it replaces), before anything slow.
    preemption = PreemptionHandler(sync_every=int(cfg.get("preemption_sync_every", 10))).install()
    try:
        return _train(cfg, workdir, preemption)
    finally:
        preemption.uninstall()


def _train(cfg: ml_collections.ConfigDict, workdir: str, preemption) -> TrainResult:
    from flax import nnx

    from blip_jax.data.distributed import make_global_batch
    from blip_jax.evaluation.cli import due, run_evals
    from blip_jax.train.checkpointing import Checkpointer
    from blip_jax.train.metrics import MetricWriter, measure_matmul_flops, peak_flops_per_device
    from blip_jax.train.optimizer import make_optimizer
    from blip_jax.train.state import create_train_state, split_model
    from blip_jax.train.step import (
        ObjectiveConfig,
        caption_loss,
        initial_metrics_buffer,
        jit_step,
        make_supervised_step,
        make_train_step,
        window_means,
    )

    os.makedirs(workdir, exist_ok=True)
    primary = jax.process_index() == 0
    mesh = mesh_lib.make_mesh(dict(cfg.mesh))
    dp = mesh_lib.data_parallel_size(mesh)
    global_batch = cfg.data.batch_size
    if global_batch % jax.process_count() or global_batch % dp:
        raise ValueError(f"data.batch_size {global_batch} must divide by the process count "
                         f"({jax.process_count()}) and the data-parallel mesh size ({dp})")
    # Each process loads its own rows: its devices must hold a distinct, equal slice of the batch.
    mesh_lib.check_batch_split(mesh, global_batch)
    per_process = global_batch // jax.process_count()

    task = tasks.check_task(cfg.task)
    data_root = ensure_embedded_dataset(cfg, workdir) if cfg.data.embedded else None
    tokenizer = load_tokenizer(cfg, data_root)
    config = model_config(cfg, tokenizer.vocab_size, special_ids(tokenizer))
    if task in ("caption", "vqa"):
        config = tasks.fine_tune_config(cfg, config)
    specs = embedded_specs(cfg.data.datasets, data_root) if cfg.data.embedded else [dict(s) for s in cfg.data.datasets]
    index_dir = None if "://" in workdir else os.path.join(workdir, "tar_index")  # counts of streamed shards
    pipeline = tasks.build_pipeline(cfg, tokenizer, specs, per_process, index_dir=index_dir)
    # The same on every process: an epoch is the global dataset once (streamed shards counted too).
    steps_per_epoch = max(1, pipeline.steps_per_epoch)
    total_steps = int(cfg.total_steps) or int(cfg.num_epochs * steps_per_epoch)
    if total_steps <= 0:
        raise ValueError("set total_steps or num_epochs")

    if preemption.should_stop():  # a signal during start-up: stop before building the model
        log.warning("stop requested (%s) before training started; nothing new to save", preemption.reason)
        latest = Checkpointer.from_config(workdir, cfg)
        start = latest.latest_step() or 0
        latest.close()
        return TrainResult(start, [], workdir, stopped_early=True)

    model, init_extra = tasks.build_model(cfg, config, cfg.seed)
    # Schedules count optimiser updates; with accumulation one update spans `accum` micro-steps.
    accum = max(1, int(cfg.optimizer.optim.get("accum_steps", 1)))
    # Steps per epoch and in the run are counted in micro-batches: the schedule puts each update
    # in the data epoch of its first micro-batch (optimizer.make_schedule).
    tx, update_schedule = make_optimizer(cfg.optimizer, steps_per_epoch, total_steps)

    def schedule(step):
        return update_schedule(step // accum)

    if task in tasks.MOMENTUM_TASKS:
        graphdef, params, rest, momentum_graphdef, ema = split_model(model)
        ocfg = ObjectiveConfig.from_config(
            {**dict(cfg.objective), "alpha_ramp_steps": int(cfg.objective.alpha_ramp_epochs * steps_per_epoch)},
            config.text_config,
        )
        if task == "retrieval":
            ocfg = dataclasses.replace(ocfg, use_image_ids=True, lm_weight=0.0)
        step_fn = make_train_step(graphdef, momentum_graphdef, tx, schedule, ocfg, accum_steps=accum)
        queue_size = int(cfg.objective.queue_size)
        # A Salesforce checkpoint's momentum encoders and queues, as the original loads them.
        ema, loaded_queues = tasks.training_init(init_extra, model, momentum_graphdef, ema, queue_size,
                                               config.image_text_hidden_size, config)
        itm, lm = ocfg.itm_weight > 0, ocfg.lm_weight > 0
    else:
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        ema, queue_size, itm, lm, loaded_queues = None, 0, False, True, None
        tc = config.text_config
        smoothing = float(cfg.objective.label_smoothing)
        if task == "caption":
            n_prompt = tasks.prompt_length(tokenizer, cfg.objective.prompt)

            def loss_fn(m, b):
                return caption_loss(m, {**b, "prompt_length": n_prompt}, smoothing, tc.bos_token_id)
        else:
            enc = tc.enc_token_id if tc.use_enc_token_for_itm else None

            def loss_fn(m, b):
                return tasks.vqa_loss(m, b, smoothing, tc.bos_token_id, enc)
        step_fn = make_supervised_step(graphdef, tx, schedule, loss_fn)

    initial = {"params": params, "rest": rest, "ema": ema, "queues": loaded_queues}
    del params, rest, ema, loaded_queues, init_extra  # only `initial` holds them; freed once the state exists

    def init_state():
        return create_train_state(initial["params"], initial["rest"], initial["ema"], tx, jax.random.key(cfg.seed),
                                  queue_size, config.image_text_hidden_size, initial["queues"])

    abstract = jax.eval_shape(init_state)
    shardings = mesh_lib.train_state_shardings(abstract, tx, mesh, cfg.sharding_rules)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)

    data_iter = iter(pipeline)
    checkpointer = Checkpointer.from_config(workdir, cfg)
    restored = _resume(checkpointer, abstract, data_iter, cfg, workdir)
    if restored is None:
        state = jax.jit(init_state, out_shardings=shardings)()
        start = 0
    else:
        state, start = restored
        log.info("resumed from step %d", start)
    initial.clear()

    batch_sharding = mesh_lib.batch_sharding(mesh)
    replicated = mesh_lib.replicated(mesh)
    # Each step writes its metrics into the previous step's (donated) metric buffers: no output is
    # allocated anew, so buffer addresses stay put (see step.jit_step). They hold sums over the
    # logging window, logged as means.
    jitted = jit_step(step_fn, in_shardings=(shardings, batch_sharding, replicated),
                      out_shardings=(shardings, replicated), metrics_window=cfg.log_every_steps,
                      compiler_options=train_compiler_options(cfg.xla.command_buffers, cfg.xla.command_buffer_update))
    first_local = next(data_iter)
    first = make_global_batch(first_local, mesh)
    metrics = initial_metrics_buffer(step_fn, abstract, first, replicated)
    t0 = time.time()
    compiled = jitted.lower(abstract, first, metrics).compile()
    mem = compiled.memory_analysis()
    if primary:
        mem_text = "n/a" if mem is None else (
            f"args {mem.argument_size_in_bytes / 2**20:.1f} MiB, temps {mem.temp_size_in_bytes / 2**20:.1f} MiB, "
            f"out {mem.output_size_in_bytes / 2**20:.1f} MiB")
        print(f"compiled train step in {time.time() - t0:.1f}s; memory per device: {mem_text}", flush=True)

    step_flops = task_step_flops(task, config, first, global_batch, cfg.data.image_size, itm, lm)
    device_kind = jax.devices()[0].device_kind
    peak = peak_flops_per_device(device_kind, config.text_config.dtype)
    if peak is None:
        peak = measure_matmul_flops("float32", size=2048)
    peak_total = peak * jax.device_count()

    # every_n_steps: N > 0 every N steps, -1 every epoch, 0 only at the end of training.
    evals = {name: {**dict(ev), "every_n_steps": steps_per_epoch if int(ev.get("every_n_steps", 0)) == -1
                    else int(ev.get("every_n_steps", 0))} for name, ev in dict(cfg.get("evals", {})).items()}
    writer = MetricWriter(workdir, total_steps=total_steps, is_primary=primary, initial_step=start)
    history = []
    batch = first
    step = start
    timer = StepTimer(start)
    stopped_early = False
    try:
        while step < total_steps:
            state, metrics = compiled(state, batch, metrics)
            step += 1
            must_log = step % cfg.log_every_steps == 0 or step == total_steps
            must_save = checkpointer.should_save(step) or step == total_steps
            stop = preemption.should_stop(step)
            eval_names = due(evals, step) or (list(evals) if step == total_steps else [])
            # Every process takes the same branches: the metrics are replicated, the conditions
            # depend on the step only (and `stop` is agreed on by all processes).
            if must_log or must_save or stop or eval_names:
                # Before anything reads or keeps the state: a diverged model is neither evaluated,
                # nor logged, nor saved (periodic or best checkpoint).
                scalars = _scalar_metrics(metrics)
                check_finite(scalars, step, checkpointer)
                if must_log:
                    scalars = window_means(scalars)
                    dt, paused = timer.window(step)
                    scalars.update(step_time_s=dt, images_per_s=global_batch / dt,
                                   tflops_per_s=step_flops / dt / 1e12, mfu=step_flops / dt / peak_total,
                                   paused_s=paused)
                    scalars.update(global_data_metrics(data_iter))
                    writer.write_scalars(step, scalars)
                    history.append({"step": step, **scalars})
            if eval_names:
                with timer.paused():  # not train-step time; each eval logs its own `seconds`
                    results = run_evals(evals, tasks.eval_models(task, nnx.merge(graphdef, state.params, state.rest),
                                                                       config),
                                        tokenizer, mesh, os.path.join(workdir, "eval"), step=step,
                                        data_root=data_root, names=eval_names)
                    writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()})
                    history.append({"step": step, **{f"eval/{k}": v for k, v in results.items()}})
                    best = cfg.get("best_metric", "")
                    value = best_metric_value(best, results)
                    if value is not None:
                        checkpointer.save_best(step, state, best, value, cfg.get("best_mode", "max"))
            if must_save or stop:
                with timer.paused():
                    # The iterator now stands at batch `step`: exactly where a resumed run must start.
                    checkpointer.save(step, state, data_iter, cfg, force=stop or step == total_steps)
            if stop:
                stopped_early = step < total_steps  # a stop agreed at the last step is a finished run
                log.warning("stop requested (SIGTERM): saved step %d, exiting", step)
                break
            if step < total_steps:
                batch = make_global_batch(next(data_iter), mesh)
    finally:
        checkpointer.wait()
        writer.close()
        data_iter.close()  # input worker processes and their shared memory go now, not at interpreter exit
    if primary and not stopped_early:
        print_loss_table(history)
        if cfg.get("export_hf", False):
            export_hf(task, graphdef, state, config, os.path.join(workdir, "export"))
    checkpointer.close()
    return TrainResult(step, history, workdir, stopped_early=stopped_early)


def check_finite(scalars: dict[str, float], step: int, checkpointer) -> None:
    """Raise TrainingDiverged when a metric (a window sum: one bad step poisons it) is NaN or inf."""
    bad = {k: v for k, v in scalars.items() if not math.isfinite(v)}
    if bad:
        raise TrainingDiverged(
            f"step {step}: non-finite metrics {bad}; stopping. The last good checkpoint "
            f"(step {checkpointer.latest_step()}) in {checkpointer.directory} is kept."
        )


class StepTimer:
    """Train-step time per logging window: wall time since the last log, less the time spent in
    evaluations and checkpoint saves (``with timer.paused():``), divided by the window's steps.
    Those pauses are reported on their own (``paused_s``), so step_time_s, images_per_s, TFLOP/s
    and MFU describe training alone."""

    def __init__(self, step: int, clock=time.perf_counter):
        self._clock = clock
        self._last_time, self._last_step, self._paused = clock(), step, 0.0

    @contextlib.contextmanager
    def paused(self):
        t0 = self._clock()
        try:
            yield
        finally:
            self._paused += self._clock() - t0

    def window(self, step: int) -> tuple[float, float]:
        """(seconds per train step, seconds paused) since the previous call; starts the next window."""
        now = self._clock()
        paused = self._paused
        busy = max(now - self._last_time - paused, 1e-9)
        dt = busy / max(1, step - self._last_step)
        self._last_time, self._last_step, self._paused = now, step, 0.0
        return dt, paused


def combine_skip_counts(per_process) -> dict[str, int]:
    """Per-process skip-count vectors (rows ordered as data.records.SKIP_REASONS) -> the global
    {reason: count} (reasons with a count only), as ``SkipCountingIterator.skip_counts`` has it."""
    from blip_jax.data.records import SKIP_REASONS

    rows = np.asarray(per_process, np.int64).reshape(-1, len(SKIP_REASONS))
    return {r: int(c) for r, c in zip(SKIP_REASONS, rows.sum(0)) if c}


def global_data_metrics(data_iter, gather=None) -> dict[str, int]:
    """``data/skipped/*`` summed over all processes (each process's iterator counts only the
    records of its own shard). Every process must call it at the same step: with several processes
    the count vectors are all-gathered (``gather``: a stand-in for tests). One process: its counts."""
    from blip_jax.data.pipelines import data_metrics
    from blip_jax.data.records import SKIP_REASONS

    local = data_iter.skip_counts
    vec = np.array([local.get(r, 0) for r in SKIP_REASONS], np.int32)  # int32: what jax carries without x64
    if gather is None and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        gather = multihost_utils.process_allgather
    counts = combine_skip_counts(gather(vec)) if gather is not None else local
    return data_metrics(counts)


def _resume(checkpointer, abstract, data_iter, cfg, workdir: str):
    """The latest checkpoint as (state, step), or None, saying how the config differs from the
    checkpoint's: a warning when the state still fits (batch size, schedule, ...), a clear error
    naming the changed fields when it does not (another model or optimiser state), instead of
    orbax's tree dump."""
    from blip_jax.train.checkpointing import config_changes, config_to_json

    step = checkpointer.latest_step()
    if step is None:
        return None
    saved = checkpointer.restore_config(step)
    changes = config_changes(saved, config_to_json(cfg)) if saved is not None else []
    try:
        state = checkpointer.restore(step, abstract, data_iter)
    except Exception as e:
        if not changes:
            raise
        raise ResumeMismatch(
            f"{workdir}: its checkpoint (step {step}) does not fit this config's train state "
            f"({type(e).__name__}); the config differs from the checkpoint's in: {'; '.join(changes)}. Resume "
            "with the config the run was started with, or start a new --workdir."
        ) from e
    if changes:
        log.warning("resuming step %d with a config that differs from the checkpoint's: %s", step, "; ".join(changes))
    return state, step


def best_metric_value(best: str, results: dict[str, float]) -> float | None:
    """The value `best_metric` names in one evaluation's results: one metric ("caption/CIDEr") or
    a sum of them ("caption/CIDEr+caption/Bleu_4", BLIP's caption rule); None when `best` is empty
    or an evaluation that does not report all of them ran."""
    names = [n for n in best.split("+") if n]
    if not names or any(n not in results for n in names):
        return None
    return float(sum(results[n] for n in names))


def print_loss_table(history: list[dict]) -> None:
    """Losses at a few points of the run, and the change from first to last; then eval results."""
    train = [h for h in history if "loss" in h]
    if train:
        keys = [k for k in ("loss_ita", "loss_itm", "loss_lm", "loss_vqa", "itm_acc") if k in train[0]]
        every = max(1, len(train) // 4)
        rows = [train[0]] + train[every::every]
        if rows[-1] is not train[-1]:
            rows.append(train[-1])
        print("\n  step  " + "  ".join(f"{k:>9}" for k in keys))
        for r in rows:
            print(f"{r['step']:6d}  " + "  ".join(f"{r[k]:9.4f}" for k in keys))
        print("  change " + "  ".join(f"{train[-1][k] - train[0][k]:+9.4f}" for k in keys), flush=True)
    for h in history:
        skip = ("seconds", "num_images", "num_texts", "num_questions", "num_scored", "num_images_missing")
        evals = {k: v for k, v in h.items() if k.startswith("eval/") and not k.endswith(skip)}
        if evals:
            print(f"eval at step {h['step']}: " + ", ".join(f"{k[5:]} {v:.4g}" for k, v in sorted(evals.items())))


def export_hf(task: str, graphdef, state, config: BlipConfig, out_dir: str) -> None:
    """Save the trained weights as HF-format folders that transformers and we load: retrieval/
    (ITC+ITM), captioning/ and vqa/ (pretraining exports all three: the starts of fine-tuning)."""
    from flax import nnx

    model = nnx.merge(graphdef, jax.device_get(state.params), jax.device_get(state.rest))
    written = tasks.export(task, model, config, out_dir)
    log.info("exported HF-format models: %s", ", ".join(written))


def task_step_flops(task, config, batch, global_batch, image_size, itm, lm) -> int:
    if task in tasks.MOMENTUM_TASKS:
        return flops_lib.pretrain_step_flops(config, global_batch, int(batch["input_ids"].shape[1]), image_size,
                                             itm=itm, lm=lm)
    if task == "caption":
        return flops_lib.caption_step_flops(config, global_batch, int(batch["input_ids"].shape[1]), image_size)
    return flops_lib.vqa_step_flops(config, global_batch, int(batch["question_input_ids"].shape[1]),
                                    batch["answer_input_ids"].shape[1:], image_size)


def history_from_jsonl(path: str) -> dict[int, dict]:
    """metrics.jsonl -> {step: the last record logged for that step} (resumed runs re-log steps)."""
    out = {}
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            out[int(rec["step"])] = rec
    return out


__all__ = ["train", "TrainResult", "TrainingDiverged", "StepTimer", "global_data_metrics", "model_config",
           "export_hf"]
