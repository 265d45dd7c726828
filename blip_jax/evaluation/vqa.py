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

Normalisation: punctuation (;/[]"{}()=+\\_-><@`,?!) is deleted when it touches a space or the text
has a digit,digit comma, otherwise replaced by a space; a period not followed by a digit is deleted
(the official regex also caps this at 32 periods per answer); lowercase; number words zero..ten and
"none" -> digits; articles a/an/the dropped; apostrophe-less contractions restored ("dont" ->
"don't").

Rank inference (BLIP ``rank_answer``): question states = image-grounded question encoder; the
decoder's first-token distribution after [bos] scores every candidate of the answer list by its first
token; the ``k_test`` best are scored by their full sequence log-likelihood (sum over the answer's
tokens, [SEP] included, pads excluded) and the best is the answer. BLIP's original sums
label-smoothed (0.1) cross-entropies here; we use the plain log-likelihood (``label_smoothing`` 0.0
by default; pass 0.1 to reproduce the original exactly).
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
# Canonical contractions; every spelling with some apostrophes left out maps back to the canonical one.
_CANONICAL_CONTRACTIONS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd
he'd've he's how'd how'll how's i'd i'd've i'm i've isn't it'd it'd've it'll let's ma'am mightn't mightn't've
might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've she'd she's should've
shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd someone'd've someone'll
someone's something'd something'd've something'll that's there'd there'd've there're there's they'd
they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's
where'd where's where've who'd who'd've who'll who're who's who've why'll why're why's won't would've
wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()


_REAL_WORDS = ("ill", "its", "well", "were", "wed", "hell", "shell", "id", "shed")


def _contraction_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for canon in _CANONICAL_CONTRACTIONS:
        parts = canon.split("'")
        n = len(parts) - 1
        for keep in range(2 ** n - 1):  # every subset of apostrophes kept, except all of them
            s = parts[0]
            for j in range(n):
                s += ("'" if keep >> j & 1 else "") + parts[j + 1]
            table.setdefault(s, canon)
    for word in _REAL_WORDS:  # apostrophe-less forms that are words of their own stay as they are
        table.pop(word, None)
    return table


CONTRACTIONS = _contraction_table()


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


def rank_answers(model, question_states: jax.Array, question_mask: jax.Array, answer_ids: jax.Array,
                 answer_mask: jax.Array, k: int, label_smoothing: float = 0.0):
    """BLIP's rank_answer, batched. question_states (B, T_q, D), question_mask (B, T_q) 0/1,
    answer_ids / answer_mask (A, L_a) ([bos] first). -> (best answer index (B,) int32,
    top-k candidate indices (B, k) int32, their sequence scores (B, k) float32)."""
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
                     max_length: int = 10, min_length: int = 1, label_smoothing: float = 0.0) -> list[dict]:
    """Answer every question of the VQA eval batches (``pixel_values``, ``question_input_ids``,
    ``question_attention_mask``, ``question_id``, ``mask``) -> [{"question_id", "answer"}] sorted
    by question order (all processes get all results)."""
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
            out = np.asarray(model.generate(batch["question_input_ids"], batch["pixel_values"],
                                            attention_mask=batch["question_attention_mask"], num_beams=num_beams,
                                            max_length=max_length, min_length=min_length))
            fixed = np.zeros((out.shape[0], max_length), np.int32)
            fixed[:, : out.shape[1]] = out[:, :max_length]
            ok = np.asarray(batch["mask"]).astype(bool)
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
