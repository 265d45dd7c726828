"""CapFilt (BLIP section 3.3): a captioner and a filter turn noisy web image-text pairs into a
cleaned, bootstrapped dataset.

    captioner.py   synthetic captions by nucleus sampling (BlipForConditionalGeneration)
    filter.py      ITM match probabilities of (image, text) pairs (BlipForImageTextRetrieval)
    bootstrap.py   the driver: records -> captions + scores -> decisions (resumable parts) ->
                   decisions.jsonl, the bootstrapped dataset, report.json
    report.py      counts, score quantiles and, with ground-truth noise labels, how well the
                   filter separated noisy from clean web captions
    cli.py         `blip-jax capfilt --config configs/capfilt*.py --workdir DIR`

The paper fine-tunes both models on COCO from the pretrained checkpoint; the filter drops every
text, web or synthetic, that the ITM head predicts as unmatched (p(match) <= 0.5 here, the
argmax rule), and a new model is pretrained on what is kept.
"""

from blip_jax.capfilt.captioner import Captioner
from blip_jax.capfilt.filter import Filter

__all__ = ["Captioner", "Filter"]
