"""Text cleaning exactly as BLIP's data code does it (REFERENCE.md section 3).

`pre_caption` and `pre_question` reproduce the original `data/utils.py` behaviour character for
character, because captions/questions seen at fine-tuning and evaluation must be tokenized the
way the released checkpoints were trained.
"""

from __future__ import annotations

import re

# Characters the original replaces (captions) or deletes (questions). Note that ',' '?' and '\''
# survive in both: BLIP kept them, and pretrained checkpoints expect them.
_PUNCT = re.compile(r"([.!\"()*#:;~])")
_MULTI_SPACE = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int = 50) -> str:
    """Lower-cases, replaces `. ! " ( ) * # : ; ~` by spaces, collapses runs of whitespace,
    strips, and keeps at most `max_words` space-separated words."""
    caption = _PUNCT.sub(" ", caption.lower())
    caption = _MULTI_SPACE.sub(" ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption


def pre_question(question: str, max_ques_words: int = 50) -> str:
    """Lower-cases, deletes `. ! " ( ) * # : ; ~`, strips trailing spaces, keeps at most
    `max_ques_words` words. Unlike `pre_caption` it neither collapses inner whitespace nor strips
    leading spaces (the original does not either)."""
    question = _PUNCT.sub("", question.lower())
    question = question.rstrip(" ")
    words = question.split(" ")
    if len(words) > max_ques_words:
        question = " ".join(words[:max_ques_words])
    return question


def caption_problem(caption: object) -> str | None:
    """Returns a skip reason ('bad_caption' / 'empty_caption') for unusable caption values, or
    None when `caption` is a usable string. Empty means empty after cleaning."""
    if not isinstance(caption, str):
        return "bad_caption"
    if not pre_caption(caption):
        return "empty_caption"
    return None
