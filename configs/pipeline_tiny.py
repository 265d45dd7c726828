"""The whole BLIP recipe on the embedded dataset, as one resumable command (about 10 min on 2 CPU cores):

    blip-jax pipeline --config configs/pipeline_tiny.py --workdir workdir/pipeline

Stages, each in workdir/pipeline/<stage> (configs/*_tiny.py):
  pretrain           ITC + ITM + LM on the noisy web split + the clean COCO-style set
  caption, retrieval the pretrained model fine-tuned on COCO: captioner and filter
  capfilt            synthetic captions for the web images, web and synthetic texts filtered
  bootstrapped       a new model pretrained on the kept texts + the COCO-style set
  eval_pretrain, eval_bootstrapped   retrieval, captioning and VQA, zero-shot, on the test splits
and a summary compares the two evaluations. ``:smoke`` runs every stage in seconds (tests; its
filter keeps every scored text, as 4-step models score everything low);
``:threshold=0.3`` (or ``smoke,threshold=0.3``) sets the filter's p(match) threshold (default
0.5, the paper's argmax rule; README "Measured results" shows both on this data).
"""

import os

import ml_collections

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg: str = ""):
    opts = [a for a in arg.split(",") if a]
    smoke = "smoke" in opts
    threshold = 0.0 if smoke else 0.5  # smoke models score everything low: keep all, so the next stage has data
    for a in opts:
        if a.startswith("threshold="):
            threshold = float(a.removeprefix("threshold="))
        elif a != "smoke":
            raise ValueError(f"configs/pipeline_tiny.py: unknown argument {a!r}; 'smoke' and/or 'threshold=<p>'")
    s = "-smoke" if smoke else ""
    data = "--config.data.embedded_dir={W}/pretrain/data"
    stages = [
        dict(name="pretrain", command="train",
             args=["--config", f"{HERE}/pretrain_tiny.py{':smoke' if smoke else ''}"]),
        dict(name="caption", command="train", args=["--config", f"{HERE}/finetune_tiny.py:caption{s},{{W}}/pretrain"]),
        dict(name="retrieval", command="train",
             args=["--config", f"{HERE}/finetune_tiny.py:retrieval{s},{{W}}/pretrain"]),
        dict(name="capfilt", command="capfilt",
             args=["--config", f"{HERE}/capfilt_tiny.py:{'smoke,' if smoke else ''}{{W}}/pretrain",
                   "--config.captioner={W}/caption/export/captioning",
                   "--config.filter={W}/retrieval/export/retrieval",
                   f"--config.filtering.threshold={threshold}"]),
        dict(name="bootstrapped", command="train",
             args=["--config", f"{HERE}/pretrain_tiny.py:bootstrapped={{W}}/capfilt{',smoke' if smoke else ''}", data]),
        dict(name="eval_pretrain", command="eval",
             args=["--config", f"{HERE}/eval_tiny.py{':smoke' if smoke else ''}", "--checkpoint", "{W}/pretrain/export",
                   data]),
        dict(name="eval_bootstrapped", command="eval",
             args=["--config", f"{HERE}/eval_tiny.py{':smoke' if smoke else ''}", "--checkpoint",
                   "{W}/bootstrapped/export", data]),
    ]
    return ml_collections.ConfigDict(dict(stages=stages))
