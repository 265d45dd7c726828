"""`blip-jax eval --config configs/<file>.py[:arg] --checkpoint PATH [--workdir DIR] [--config.key=value]`.

Runs every evaluator in ``config.evals`` (big_vision style)::

    c.evals.coco_ret = dict(type="retrieval", data=<DatasetSpec dict or "embedded:test">, image_size=384,
                            batch_size=64, k_test=256, max_len=35, every_n_steps=0)
    c.evals.coco_cap = dict(type="caption", data=..., prompt="a picture of ", num_beams=3, max_length=20,
                            min_length=5, spice=False, ground_truth="")   # "" = built from the annotations
    c.evals.vqa = dict(type="vqa", data=..., answer_list=PATH, method="rank" | "generate", k_test=128,
                       label_smoothing=None)   # None: the model's text_config.label_smoothing

Retrieval and VQA entries may also set ``use_enc_token_for_itm`` (None / missing: the checkpoint's
config): `load_models` applies it to the loaded model's text config (True: the image-grounded text
encoder starts with [ENC] instead of [CLS], as the original BLIP; HF configs say False).

``--checkpoint``: an HF-format folder (config.json + weights) loaded as the class each evaluator needs
(BlipForImageTextRetrieval / BlipForConditionalGeneration / BlipForQuestionAnswering), or the
``export/`` folder of a training run (its ``retrieval/`` and ``captioning/`` subfolders are used).
Results and ``<name>_metrics.json`` go to ``--workdir`` (default: the checkpoint folder's
``eval/``); all metrics also to ``eval_metrics.json``.

The training loop calls `run_evals` for periodic evaluation (`due` says which evaluators are due).
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
import time

log = logging.getLogger("blip_jax.eval")

MODEL_CLASSES = {"retrieval": "BlipForImageTextRetrieval", "caption": "BlipForConditionalGeneration",
                 "vqa": "BlipForQuestionAnswering"}
EXPORT_SUBFOLDERS = {"retrieval": "retrieval", "caption": "captioning", "vqa": "vqa"}


def _as_dict(x) -> dict:
    return x.to_dict() if hasattr(x, "to_dict") else dict(x)


def embedded_eval_spec(split: str, root: str) -> dict:
    """'test' | 'val' | 'vqa_test' of the embedded dataset -> a DatasetSpec dict."""
    from blip_jax.data.synthetic import embedded_spec

    if split not in ("val", "test", "vqa_test"):
        raise ValueError(f"unknown embedded eval split {split!r} (val, test, vqa_test)")
    return embedded_spec(split, root)


def resolve_spec(data, data_root: str | None) -> dict:
    if isinstance(data, str):
        kind, _, split = data.partition(":")
        if kind != "embedded" or not data_root:
            raise ValueError(f"eval data {data!r}: strings must be 'embedded:<split>' with an embedded dataset")
        return embedded_eval_spec(split, data_root)
    return _as_dict(data)


def due(config_evals, step: int) -> list[str]:
    """Names of the evaluators whose every_n_steps divides `step` (0 / missing = never periodic)."""
    out = []
    for name, ev in _as_dict(config_evals).items():
        every = int(_as_dict(ev).get("every_n_steps", 0) or 0)
        if every > 0 and step > 0 and step % every == 0:
            out.append(name)
    return out


def run_evals(config_evals, models: dict, tokenizer, mesh, workdir: str, *, step: int | None = None,
              data_root: str | None = None, names: list[str] | None = None) -> dict[str, float]:
    """Run the evaluators in `config_evals` (all, or `names`) -> {"<name>/<metric>": value}.

    models: {"retrieval": BlipForImageTextRetrieval, "caption": BlipForConditionalGeneration,
    "vqa": BlipForQuestionAnswering} (only the types used are needed). Each process reads its strided
    share of the data (eval_pipeline: padded, masked batches, every sample once); results and
    metrics JSON are written to `workdir` (suffix ``_step<N>`` when `step` is given)."""
    import jax

    from blip_jax.data import annotations as ann
    from blip_jax.data import pipelines as pl
    from blip_jax.train import mesh as mesh_lib

    evals = _as_dict(config_evals)
    out: dict[str, float] = {}
    for name in names or list(evals):
        ev = _as_dict(evals[name])
        kind = ev["type"]
        if kind not in MODEL_CLASSES:
            raise ValueError(f"evals.{name}.type must be one of {sorted(MODEL_CLASSES)}, got {kind!r}")
        if kind not in models:
            raise ValueError(f"evals.{name}: no {MODEL_CLASSES[kind]} model given")
        model = models[kind]
        enc = ev.get("use_enc_token_for_itm")
        if enc is not None and bool(enc) != model.config.text_config.use_enc_token_for_itm:
            raise ValueError(
                f"evals.{name}.use_enc_token_for_itm={bool(enc)} but the {MODEL_CLASSES[kind]} model's text config "
                f"says {model.config.text_config.use_enc_token_for_itm}: the override is applied when `blip-jax eval` "
                "loads the checkpoint (load_models); for a model built elsewhere set it in the model's config")
        spec = pl.DatasetSpec.from_any(resolve_spec(ev["data"], data_root))
        # Each process's batch must split evenly over its share of the data-parallel devices.
        per_process_dp = max(1, mesh_lib.data_parallel_size(mesh) // jax.process_count())
        batch_size = -(-int(ev.get("batch_size", 32)) // per_process_dp) * per_process_dp
        # exact_decode: full-size JPEG decode as the original (see LoaderOptions.exact_eval_decode)
        opts = pl.LoaderOptions(batch_size=batch_size, num_threads=int(ev.get("num_threads", 4)),
                                exact_eval_decode=bool(ev.get("exact_decode", False)))
        image_size = int(ev.get("image_size", model.config.vision_config.image_size))
        t0 = time.time()
        if kind == "retrieval":
            from blip_jax.evaluation.retrieval import evaluate_retrieval

            records, _ = pl.open_source(spec)
            unusable = collections.Counter()  # captions kept as "" queries so text ids stay aligned
            texts, txt2img, img2txt = pl.retrieval_eval_texts(records, int(ev.get("max_words", 30)), skips=unusable)
            res = evaluate_retrieval(
                model, pl.eval_pipeline(list(records), opts, image_size=image_size), texts, txt2img, img2txt,
                mesh, tokenizer=tokenizer, k_test=int(ev.get("k_test", 256)), max_len=int(ev.get("max_len", 35)),
                text_batch_size=int(ev.get("text_batch_size", 128)),
                rerank_batch_size=int(ev.get("rerank_batch_size", 8)))
            metrics = dict(res.metrics)
            metrics["num_texts_unusable"] = float(sum(unusable.values()))
            _write(workdir, name, step, metrics, extra={"timings": res.timings})
        elif kind == "caption":
            from blip_jax.evaluation.captioning import PROMPT, evaluate_captioning

            records, _ = pl.open_source(spec)
            metrics = evaluate_captioning(
                model, pl.eval_pipeline(list(records), opts, image_size=image_size), records, tokenizer, workdir,
                ground_truth=ev.get("ground_truth") or None, name=name, step=step, spice=bool(ev.get("spice", False)),
                scene_of=_embedded_scenes(ev["data"], data_root),
                prompt=ev.get("prompt", PROMPT), num_beams=int(ev.get("num_beams", 3)),
                max_length=int(ev.get("max_length", 20)), min_length=int(ev.get("min_length", 5)))
        else:
            from blip_jax.evaluation.vqa import evaluate_vqa, raw_answers

            path = ev.get("answer_list") or ""
            if path == "embedded" and data_root:
                path = os.path.join(data_root, "annotations", "answer_list.json")
            answer_list = ann.load_answer_list(path) if path else None
            batches = pl.eval_pipeline(spec, opts, image_size=image_size, tokenizer=tokenizer, vqa=True,
                                       question_max_len=int(ev.get("question_max_len", 35)))
            metrics = evaluate_vqa(
                model, batches, tokenizer, mesh, workdir, name=name, step=step, gt_answers=raw_answers(spec.paths),
                method=ev.get("method", "rank"), answer_list=answer_list, k_test=int(ev.get("k_test", 128)),
                num_beams=int(ev.get("num_beams", 3)), max_length=int(ev.get("max_length", 10)),
                min_length=int(ev.get("min_length", 1)),
                label_smoothing=None if ev.get("label_smoothing") is None else float(ev["label_smoothing"]))
        metrics["seconds"] = time.time() - t0
        log.info("eval %s (%s): %s", name, kind, {k: round(v, 4) for k, v in metrics.items()})
        out.update({f"{name}/{k}": float(v) for k, v in metrics.items()})
    return out


def _embedded_scenes(data, data_root: str | None):
    """For "embedded:<split>" eval data whose dataset has scenes.json: record -> its image's scene."""
    if not (isinstance(data, str) and data.startswith("embedded:") and data_root):
        return None
    path = os.path.join(data_root, "scenes.json")
    if not os.path.exists(path):
        return None
    from blip_jax.data.synthetic import load_scenes

    scenes, images = load_scenes(path), os.path.join(data_root, "images")
    return lambda record: scenes.get(os.path.relpath(record["image_path"], images))


def _write(workdir: str, name: str, step: int | None, metrics: dict, extra: dict | None = None) -> None:
    import jax

    from blip_jax.files import write_json_atomic

    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        suffix = "" if step is None else f"_step{step}"
        write_json_atomic(os.path.join(workdir, f"{name}_metrics{suffix}.json"), {**metrics, **(extra or {})}, indent=1)


TEXT_CONFIG_OVERRIDES = ("use_enc_token_for_itm",)  # eval-entry fields applied to the loaded model's text config


def text_config_overrides(config_evals) -> dict[str, dict]:
    """{kind: {field: value}} from the eval entries' `TEXT_CONFIG_OVERRIDES` fields (None / missing:
    keep the checkpoint's); two entries of one kind that disagree are an error (one model per kind)."""
    out: dict[str, dict] = {}
    for name, ev in _as_dict(config_evals).items():
        ev = _as_dict(ev)
        for key in TEXT_CONFIG_OVERRIDES:
            if ev.get(key) is None:
                continue
            value = bool(ev[key])
            have = out.setdefault(ev["type"], {})
            if have.get(key, value) != value:
                raise ValueError(f"evals.{name}.{key}={value} disagrees with another {ev['type']} evaluator")
            have[key] = value
    return out


def load_models(checkpoint: str, kinds: set[str], dtype: str | None = None,
                text_overrides: dict[str, dict] | None = None) -> dict:
    """{kind: model} from `checkpoint`; ``text_overrides[kind]`` ({field: value}, e.g.
    use_enc_token_for_itm) replaces fields of that model's text config (validated as a new config,
    then set on the config object the model and its submodules share)."""
    import blip_jax
    from blip_jax.configuration import override_text_config

    models = {}
    for kind in kinds:
        path = checkpoint
        sub = os.path.join(checkpoint, EXPORT_SUBFOLDERS[kind])
        if not os.path.exists(os.path.join(checkpoint, "config.json")) and os.path.isdir(sub):
            path = sub
        cls = getattr(blip_jax, MODEL_CLASSES[kind])
        model = cls.from_pretrained(path, **({"dtype": dtype} if dtype else {}))
        override_text_config(model, (text_overrides or {}).get(kind) or {}, "eval config")
        models[kind] = model
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blip-jax eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file, optionally with :arg")
    parser.add_argument("--checkpoint", required=True, help="HF-format folder (or a training run's export/)")
    parser.add_argument("--workdir", default="", help="where results and metrics go")
    from blip_jax.config_loader import parse_job_args
    from blip_jax.train.distributed import maybe_initialize_distributed
    from blip_jax.train.loop import load_tokenizer
    from blip_jax.train.mesh import make_mesh

    args, cfg = parse_job_args(parser, argv)
    maybe_initialize_distributed()  # first, as train and capfilt do: before anything touches a device
    if "evals" not in cfg or not _as_dict(cfg.evals):
        parser.error(f"{args.config} has no config.evals")
    workdir = args.workdir or os.path.join(args.checkpoint, "eval")
    data_root = None
    if "data" in cfg and cfg.data.get("embedded", False):
        from blip_jax.train.loop import ensure_embedded_dataset

        data_root = ensure_embedded_dataset(cfg, workdir)
    kinds = {_as_dict(ev)["type"] for ev in _as_dict(cfg.evals).values()}
    models = load_models(args.checkpoint, kinds, cfg.get("dtype") or None, text_config_overrides(cfg.evals))
    tokenizer = load_tokenizer(cfg, data_root, fallback=args.checkpoint)
    mesh = make_mesh(_as_dict(cfg.mesh) if "mesh" in cfg else None)
    metrics = run_evals(cfg.evals, models, tokenizer, mesh, workdir, data_root=data_root)
    import jax

    if jax.process_index() == 0:
        from blip_jax.files import write_json_atomic

        write_json_atomic(os.path.join(workdir, "eval_metrics.json"), metrics, indent=1)
    for k, v in sorted(metrics.items()):
        print(f"{k:<40} {v:10.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
