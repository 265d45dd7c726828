"""VQA evaluation: official answer normalisation and accuracy, rank and generation inference,
results in the official server format ``[{"question_id": int, "answer": str}]``.

Accuracy (VQA v2 official evaluation, ported from its documented behaviour):

* the predicted answer: newlines/tabs -> spaces, strip, then `process_punctuation` and
  `process_digit_article` (always);
* ground-truth answers: the same whitespace clean-up; only if the annotators DISAGREE (more than one
  distinct raw answer) they get `process_punctuation` too (never the digit/article step: the
  official annotations are already normalised that way);
* accuracy = mean over the leave-one-annotator-out subsets (for 10 answers: the 10 subsets of 9)
  of ``min(#matching answers in the subset / 3, 1)``.

This is vqaEval.py as it was before GT-Vision-Lab/VQA commit a013f00 (March 2021, "Fixed processing
answers bug"); since then the official script applies punctuation AND digit/article processing to
both the ground truth and the prediction, but only when the annotators disagree (a unanimous
ground truth is compared with the raw prediction).

Normalisation: punctuation (;/[]"{}()=+\\_-><@`,?!) is deleted when it touches a space or the text
has a digit,digit comma, otherwise replaced by a space; a period not followed by a digit is deleted
(the official regex also caps this at 32 periods per answer); lowercase; number words zero..ten and
"none" -> digits; articles a/an/the dropped; contractions restored by the official evaluator's fixed
table (`CONTRACTIONS`: "dont" -> "don't", but "im", "lets", "shes" stay as they are).

Rank inference (BLIP ``rank_answer``): question states = image-grounded question encoder; the
decoder's first-token distribution after [bos] scores every candidate of the answer list by its first
token; the ``k_test`` best are scored by minus their summed token cross-entropy (over the answer's
tokens, [SEP] included, pads excluded; BLIP: ``-output.loss`` of the LM head with reduction 'none')
and the best is the answer. That cross-entropy is label-smoothed as the model's LM loss:
``label_smoothing`` defaults to ``model.config.text_config.label_smoothing`` (0.1 for original
Salesforce checkpoints, as BLIP's rank_answer; 0.0 for HF ones: the plain log-likelihood).

Generation inference decodes over every question state with an all-ones mask (as BLIP and HF), so
each batch's questions are first trimmed to the batch's longest question (BLIP tokenises with
``padding='longest'``): the pipeline's fixed-width padding must not reach the answer decoder.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Answer normalisation (official VQA semantics)

_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# The official evaluator's contraction table (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/
# vqaEval.py, ``VQAEval.contractions``), verbatim, quirks included: words are lower-cased before the
# look-up, so the mixed-case keys ("Im", "Ive", "Id've", "I'dve") never match ("im" stays "im"); some
# spellings are absent ("lets", "shes", "whore", "ive"), and "somebody'd" maps to "somebodyd".
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}


def process_punctuation(text: str) -> str:
    out = text
    digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for p in _PUNCT:
        if p + " " in text or " " + p in text or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=32)


def process_digit_article(text: str) -> str:
    words = []
    for w in text.lower().split():
        w = _NUMBER_WORDS.get(w, w)
        if w not in _ARTICLES:
            words.append(CONTRACTIONS.get(w, w))
    return " ".join(words)


def _clean_ws(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """The official processing of a predicted answer."""
    return process_digit_article(process_punctuation(_clean_ws(text)))


def vqa_accuracy(answer: str, gt_answers: Sequence[str]) -> float:
    """Official VQA accuracy of one predicted answer against the annotators' raw answers (usually 10)."""
    if not gt_answers:
        raise ValueError("no ground-truth answers")
    res = normalize_answer(answer)
    gts = [_clean_ws(a) for a in gt_answers]
    if len(set(gts)) > 1:
        gts = [process_punctuation(a) for a in gts]
    accs = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1:]
        accs.append(min(1.0, sum(a == res for a in others) / 3.0))
    return sum(accs) / len(accs)


def raw_answers(paths: str | Sequence[str]) -> dict[int, list[str]]:
    """question_id -> the annotators' raw answers, from vqa_*.json files (entries without answers
    are left out)."""
    out: dict[int, list[str]] = {}
    for path in [paths] if isinstance(paths, str) else paths:
        with open(path, encoding="utf-8") as f:
            for e in json.load(f):
                ans = e.get("answer")
                if ans:
                    out[int(e["question_id"])] = [a for a in (ans if isinstance(ans, list) else [ans])
                                                  if isinstance(a, str)]
    return out


def vqa_score(results: Sequence[dict], gt: dict[int, list[str]]) -> dict[str, float]:
    """Mean official accuracy (percent) over the results whose question has ground truth."""
    accs = [vqa_accuracy(r["answer"], gt[int(r["question_id"])]) for r in results if int(r["question_id"]) in gt]
    return {"accuracy": 100.0 * float(np.mean(accs)) if accs else float("nan"), "num_scored": float(len(accs))}


# ---------------------------------------------------------------------------------------------
# Inference


def tokenize_answers(tokenizer, answer_list: Sequence[str], bos_token_id: int, max_len: int | None = None):
    """answer_list -> ids, mask int32 (A, L_a): [bos] answer tokens [SEP], padded to the longest
    (BLIP: the tokenizer's [CLS] replaced by bos)."""
    out = tokenizer(list(answer_list), padding="longest", return_tensors="np")
    ids, mask = np.asarray(out["input_ids"], np.int32), np.asarray(out["attention_mask"], np.int32)
    if max_len is not None:
        ids, mask = ids[:, :max_len], mask[:, :max_len]
    ids[:, 0] = bos_token_id
    return ids, mask


def trim_questions(ids, mask, valid=None) -> tuple[np.ndarray, np.ndarray]:
    """Question ids / mask (B, T) -> both cut to the batch's longest question (its last attended
    column), counting only the ``valid`` rows (B,) bool when any; at least one column. Generation
    attends to every question state (an all-ones mask, as BLIP and HF), so this makes a batch padded
    to a fixed width answer as BLIP's batch padded to its longest question."""
    ids, mask = np.asarray(ids), np.asarray(mask)
    rows = mask[np.asarray(valid, bool)] if valid is not None and np.any(valid) else mask
    cols = np.nonzero(rows.any(axis=0))[0]
    n = int(cols[-1]) + 1 if cols.size else 1
    return ids[:, :n], mask[:, :n]


def rank_answers(model, question_states: jax.Array, question_mask: jax.Array, answer_ids: jax.Array,
                 answer_mask: jax.Array, k: int, label_smoothing: float = 0.0):
    """BLIP's rank_answer, batched. question_states (B, T_q, D), question_mask (B, T_q) 0/1,
    answer_ids / answer_mask (A, L_a) ([bos] first). -> (best answer index (B,) int32,
    top-k candidate indices (B, k) int32, their sequence scores (B, k) float32).

    A candidate's score is minus its summed next-token cross-entropy with ``label_smoothing`` eps
    (torch's CrossEntropyLoss semantics: ``(1 - eps) * nll + eps * mean over the vocabulary of
    -log p``); eps 0 gives the sequence log-likelihood."""
    dec = model.text_decoder
    b = question_states.shape[0]
    start = jnp.full((b, 1), answer_ids[0, 0], jnp.int32)
    first = dec(start, encoder_hidden_states=question_states, encoder_attention_mask=question_mask).logits[:, 0]
    first_lp = jax.nn.log_softmax(first.astype(jnp.float32), axis=-1)[:, answer_ids[:, 1]]  # (B, A)
    _, top = jax.lax.top_k(first_lp, k)  # (B, k)
    ids = answer_ids[top].reshape(b * k, -1)  # question-major: the decoder folds k rows per question
    mask = answer_mask[top].reshape(b * k, -1)
    logits = dec(ids, attention_mask=mask, encoder_hidden_states=question_states,
                 encoder_attention_mask=question_mask).logits.astype(jnp.float32)
    lp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    tgt = ids[:, 1:]
    tok_lp = jnp.take_along_axis(lp, tgt[..., None], axis=-1)[..., 0]
    if label_smoothing:
        tok_lp = (1 - label_smoothing) * tok_lp + label_smoothing * lp.mean(-1)
    scores = (tok_lp * mask[:, 1:]).sum(-1).reshape(b, k)
    best = jnp.take_along_axis(top, jnp.argmax(scores, axis=-1)[:, None], axis=1)[:, 0]
    return best.astype(jnp.int32), top.astype(jnp.int32), scores


def answer_questions(model, batches: Iterable[dict], tokenizer, mesh, *, method: str = "rank",
                     answer_list: Sequence[str] | None = None, k_test: int = 128, num_beams: int = 3,
                     max_length: int = 10, min_length: int = 1, label_smoothing: float | None = None) -> list[dict]:
    """Answer every question of the VQA eval batches (``pixel_values``, ``question_input_ids``,
    ``question_attention_mask``, ``question_id``, ``mask``) -> [{"question_id", "answer"}] sorted
    by question order (all processes get all results).

    label_smoothing (rank only): of the candidates' sequence loss; None = the model's
    ``text_config.label_smoothing``."""
    from blip_jax.data.distributed import make_global_batch
    from blip_jax.evaluation.retrieval import data_axes, split_model, to_host

    if method not in ("rank", "generate"):
        raise ValueError(f"method must be 'rank' or 'generate', got {method!r}")
    axes = data_axes(mesh)
    keys = ("pixel_values", "question_input_ids", "question_attention_mask", "question_id", "mask", "index")
    answers: dict[int, tuple[int, str]] = {}
    if method == "rank":
        if not answer_list:
            raise ValueError("rank inference needs answer_list")
        graphdef, state = split_model(model, mesh)
        a_ids, a_mask = tokenize_answers(tokenizer, answer_list, model.config.text_config.bos_token_id)
        k = min(k_test, len(answer_list))
        if label_smoothing is None:
            label_smoothing = float(model.config.text_config.label_smoothing)
        log.info("VQA rank inference: k_test %d, label smoothing %g", k, label_smoothing)

        @jax.jit
        def step(state, pixel_values, q_ids, q_mask, a_ids, a_mask):
            m = nnx.merge(graphdef, state)
            img = m.vision_model(pixel_values).last_hidden_state
            q_states = m.encode_question(q_ids, img, q_mask)
            return rank_answers(m, q_states, q_mask, a_ids, a_mask, k, label_smoothing)[0]

        for batch in batches:
            g = make_global_batch({kk: batch[kk] for kk in keys}, mesh, axes)
            best = to_host(step(state, g["pixel_values"], g["question_input_ids"], g["question_attention_mask"],
                                jnp.asarray(a_ids), jnp.asarray(a_mask)))
            for qid, ok, idx, i in zip(to_host(g["question_id"]), to_host(g["mask"]), best, to_host(g["index"])):
                if ok:
                    answers[int(i)] = (int(qid), answer_list[int(idx)])
    else:
        from blip_jax.evaluation.captioning import _gather_processes

        for batch in batches:
            ok = np.asarray(batch["mask"]).astype(bool)
            q_ids, q_mask = trim_questions(batch["question_input_ids"], batch["question_attention_mask"], ok)
            out = np.asarray(model.generate(q_ids, batch["pixel_values"], attention_mask=q_mask, num_beams=num_beams,
                                            max_length=max_length, min_length=min_length))
            fixed = np.zeros((out.shape[0], max_length), np.int32)
            fixed[:, : out.shape[1]] = out[:, :max_length]
            meta = np.stack([np.where(ok, batch["index"], -1), np.asarray(batch["question_id"])], 1).astype(np.int32)
            fixed, meta = _gather_processes(fixed, meta, to_host)
            for row, (i, qid) in zip(fixed, meta):
                if i >= 0:
                    answers[int(i)] = (int(qid), tokenizer.decode(row.tolist(), skip_special_tokens=True).strip())
    return [{"question_id": answers[i][0], "answer": answers[i][1]} for i in sorted(answers)]


def evaluate_vqa(model, batches: Iterable[dict], tokenizer, mesh, workdir: str, *, name: str = "vqa",
                 step: int | None = None, gt_answers: dict[int, list[str]] | None = None,
                 **kwargs) -> dict[str, float]:
    """Answer, write ``<workdir>/<name>_results[_step<N>].json`` (server format) and, where ground
    truth is given, ``<name>_metrics[...].json`` with the official accuracy."""
    from blip_jax.files import write_json_atomic

    results = answer_questions(model, batches, tokenizer, mesh, **kwargs)
    suffix = "" if step is None else f"_step{step}"
    metrics = {"num_questions": float(len(results))}
    if gt_answers:
        metrics.update(vqa_score(results, gt_answers))
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        write_json_atomic(os.path.join(workdir, f"{name}_results{suffix}.json"), results, indent=1)
        write_json_atomic(os.path.join(workdir, f"{name}_metrics{suffix}.json"), metrics, indent=1)
    return metrics
