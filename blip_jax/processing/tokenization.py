"""Text tokenizers for BLIP.

Every tokenizer lays a caption out BERT style, ``[CLS] tokens [SEP]``, pads on the right with
``pad_token_id`` and knows BLIP's two extra specials: ``[DEC]`` (``bos_token_id``; replaces token 0
for the image-grounded decoder) and ``[ENC]`` (``enc_token_id``; replaces token 0 for image-grounded
encoding in the original code).

* ``WordPieceTokenizer``: BERT uncased WordPiece through the ``tokenizers`` library. With
  bert-base-uncased's 30522-entry vocab, [DEC] = 30522 and [ENC] = 30523 (vocab_size 30524), exactly as
  transformers' ``BertTokenizer`` + ``add_special_tokens({"bos_token": "[DEC]"})`` +
  ``add_special_tokens({"additional_special_tokens": ["[ENC]"]})`` numbers them.
* ``SentencePieceTokenizer``: a sentencepiece model trained from scratch (``train``), with the specials
  at fixed ids: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3 (sentencepiece's pad/unk/bos/eos slots, all control
  or unknown symbols), then [MASK] 4, [DEC] 5, [ENC] 6 as control symbols. Control symbols are never
  produced from input text: a literal "[DEC]" in a caption is tokenized as ordinary characters.

Differences from transformers (on purpose) are listed in ``BlipTokenizer``'s docstring.
"""

from __future__ import annotations

import abc
import io
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_NAME = "special_tokens_map.json"
ADDED_TOKENS_NAME = "added_tokens.json"
VOCAB_NAME = "vocab.txt"
TOKENIZER_JSON_NAME = "tokenizer.json"
SPM_MODEL_NAME = "spm.model"

DEFAULT_MODEL_MAX_LENGTH = 512  # BLIP's text position-embedding table; transformers' default is "unbounded".
# Anything at least this large is transformers' "no limit" sentinel (int(1e30)).
_NO_LIMIT = 10**18


class BatchEncoding(dict):
    """A dict with attribute access (``enc.input_ids``), like transformers' BatchEncoding."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _token_str(value: Any) -> str | None:
    """A special token as written by transformers: a string or an AddedToken dict {"content": ...}."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get("content")
    return str(value)


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=True)
        f.write("\n")


def _to_id_list(ids: Any) -> list[int]:
    """Token ids from a list, tuple, numpy/jax array (1-D) or a single int."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        return [int(arr)]
    if arr.ndim != 1:
        raise ValueError(f"decode expects one sequence of ids, got an array of shape {arr.shape}")
    return [int(i) for i in arr.tolist()]


class BlipTokenizer(abc.ABC):
    """Interface every BLIP tokenizer implements (data pipelines code against this).

    Subclasses set the ``*_token_id`` attributes and implement ``_encode_plain`` (text -> ids without
    specials), ``decode``, ``vocab_size``, token<->id lookup and (de)serialisation; padding,
    truncation and tensor conversion live here so every tokenizer behaves the same.

    ``padding_side`` / ``truncation_side`` ("right" by default, or "left") and
    ``clean_up_tokenization_spaces`` mean what they mean in transformers and are read from / written to
    tokenizer_config.json; ``__call__(padding_side=...)`` overrides the padding side for one call.

    Differences from transformers, on purpose:
      * ``truncation`` defaults to False and is never switched on implicitly by ``max_length``
        (transformers truncates when only ``max_length`` is given and padding is off);
      * ``max_length`` smaller than the special tokens it must keep raises instead of silently not
        truncating;
      * ``model_max_length`` defaults to ``DEFAULT_MODEL_MAX_LENGTH`` = 512 (BLIP's text position table)
        when neither the caller nor tokenizer_config.json gives one, so ``truncation=True`` without
        ``max_length`` cuts at 512; transformers then treats the length as unlimited (int(1e30));
      * ``decode`` / ``batch_decode`` skip special tokens by default (``skip_special_tokens=True``;
        transformers defaults to False), since BLIP only ever decodes captions and answers;
      * ``return_tensors="np"`` gives int32 arrays (transformers: int64); no token_type_ids.
    """

    pad_token_id: int
    cls_token_id: int
    sep_token_id: int
    bos_token_id: int  # [DEC]
    enc_token_id: int  # [ENC]
    unk_token_id: int
    mask_token_id: int | None
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH
    padding_side: str = "right"
    truncation_side: str = "right"
    # decode's default for clean_up_tokenization_spaces (see clean_up_tokenization).
    clean_up_tokenization_spaces: bool = False

    # ------------------------------------------------------------------ abstract part
    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, including the added [DEC]/[ENC]."""

    @abc.abstractmethod
    def _encode_plain(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without [CLS]/[SEP]."""

    @abc.abstractmethod
    def decode(self, ids: Any, skip_special_tokens: bool = True,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """ids: a 1-D sequence/array of ints -> text. ``clean_up_tokenization_spaces``: None -> the
        tokenizer's ``clean_up_tokenization_spaces``; True applies ``clean_up_tokenization``."""

    @abc.abstractmethod
    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]: ...

    @abc.abstractmethod
    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]: ...

    @abc.abstractmethod
    def save_pretrained(self, folder: str | os.PathLike) -> None: ...

    @classmethod
    @abc.abstractmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> BlipTokenizer: ...

    # ------------------------------------------------------------------ shared behaviour
    @property
    def all_special_ids(self) -> list[int]:
        ids = [self.pad_token_id, self.unk_token_id, self.cls_token_id, self.sep_token_id, self.mask_token_id,
               self.bos_token_id, self.enc_token_id]
        return sorted({i for i in ids if i is not None})

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """One text -> a list of ids ([CLS] ... [SEP] when add_special_tokens)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        ids = self._encode_plain([text])[0]
        return [self.cls_token_id, *ids, self.sep_token_id] if add_special_tokens else ids

    def __call__(
        self,
        text: str | list[str],
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        add_special_tokens: bool = True,
        return_attention_mask: bool = True,
        padding_side: str | None = None,
    ) -> BatchEncoding:
        """Tokenize one text or a batch.

        Args:
          padding: False / "do_not_pad"; True / "longest" (pad to the longest in the batch);
            "max_length" (pad to ``max_length``, or ``model_max_length`` when it is None).
          truncation: True / "longest_first" cuts each sequence to ``max_length`` (``model_max_length``
            when None), keeping [CLS] and the final [SEP]; tokens go from the end, or from the start
            when ``self.truncation_side`` is "left".
          padding_side: "right" / "left" (where the padding goes); None -> ``self.padding_side``.
          return_tensors: None -> lists (a flat list for a single str); "np" -> np.int32 arrays (B, L);
            "jax" -> int32 jax.Arrays (B, L).

        Returns:
          BatchEncoding with "input_ids" and (unless return_attention_mask=False) "attention_mask"
          (1 = real token, 0 = padding).
        """
        single = isinstance(text, str)
        texts = [text] if single else text
        if not isinstance(texts, (list, tuple)):
            raise TypeError(f"text must be a str or a list of str, got {type(text).__name__}")
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(
                    f"text must be a str or a list of str, found an element of type {type(t).__name__}"
                )
        pad_mode = _padding_mode(padding)
        do_truncate = _truncation_mode(truncation)
        pad_left = _side(self.padding_side if padding_side is None else padding_side, "padding_side") == "left"
        trunc_left = _side(self.truncation_side, "truncation_side") == "left"
        if return_tensors not in (None, "np", "jax"):
            raise ValueError(f"return_tensors must be None, 'np' or 'jax', got {return_tensors!r}")

        n_special = 2 if add_special_tokens else 0
        limit = self.model_max_length if max_length is None else int(max_length)
        if do_truncate and limit < n_special:
            raise ValueError(f"max_length={limit} cannot hold the {n_special} special tokens [CLS] and [SEP]")

        sequences = []
        for ids in self._encode_plain(list(texts)):
            if do_truncate and len(ids) + n_special > limit:
                keep = limit - n_special
                ids = ids[len(ids) - keep:] if trunc_left else ids[:keep]
            if add_special_tokens:
                ids = [self.cls_token_id, *ids, self.sep_token_id]
            sequences.append(ids)

        if pad_mode == "longest":
            target = max((len(s) for s in sequences), default=0)
        elif pad_mode == "max_length":
            if limit >= _NO_LIMIT:
                raise ValueError("padding='max_length' needs max_length (model_max_length is unbounded)")
            target = limit
        else:
            target = None
        masks = [[1] * len(s) for s in sequences]
        if target is not None:
            for s, m in zip(sequences, masks):
                extra = target - len(s)
                if extra > 0:  # longer sequences stay as they are, as in transformers
                    if pad_left:
                        s[:0] = [self.pad_token_id] * extra
                        m[:0] = [0] * extra
                    else:
                        s.extend([self.pad_token_id] * extra)
                        m.extend([0] * extra)

        out = BatchEncoding()
        if return_tensors is None:
            out["input_ids"] = sequences[0] if single else sequences
            if return_attention_mask:
                out["attention_mask"] = masks[0] if single else masks
            return out
        if len({len(s) for s in sequences}) > 1:
            raise ValueError(
                "Sequences have different lengths and cannot form one array: use padding=True or "
                "padding='max_length' (with truncation=True) together with return_tensors"
            )
        width = len(sequences[0]) if sequences else 0
        ids_arr = np.asarray(sequences, dtype=np.int32).reshape(len(sequences), width)
        mask_arr = np.asarray(masks, dtype=np.int32).reshape(len(sequences), width)
        if return_tensors == "jax":
            import jax.numpy as jnp

            ids_arr, mask_arr = jnp.asarray(ids_arr), jnp.asarray(mask_arr)
        out["input_ids"] = ids_arr
        if return_attention_mask:
            out["attention_mask"] = mask_arr
        return out

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = True,
                     clean_up_tokenization_spaces: bool | None = None) -> list[str]:
        """sequences: a list of id lists or a (B, L) array -> B strings (each as ``decode``)."""
        if isinstance(sequences, np.ndarray) or hasattr(sequences, "__array__"):
            arr = np.asarray(sequences)
            if arr.ndim != 2:
                raise ValueError(f"batch_decode expects a (B, L) array, got shape {arr.shape}")
            sequences = arr.tolist()
        return [self.decode(s, skip_special_tokens=skip_special_tokens,
                            clean_up_tokenization_spaces=clean_up_tokenization_spaces) for s in sequences]

    def _set_layout_options(self, padding_side: str, truncation_side: str, clean_up_tokenization_spaces: bool,
                            source: str) -> None:
        """The options both implementations take and save alike (checked; ``source`` names the file)."""
        self.padding_side = _side(padding_side, f"{source}: padding_side")
        self.truncation_side = _side(truncation_side, f"{source}: truncation_side")
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)

    def _layout_options(self) -> dict[str, Any]:
        """Those options as tokenizer_config.json holds them."""
        return {"clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
                "padding_side": self.padding_side, "truncation_side": self.truncation_side}

    def _cleanup_wanted(self, clean_up_tokenization_spaces: bool | None) -> bool:
        if clean_up_tokenization_spaces is None:
            return bool(self.clean_up_tokenization_spaces)
        return bool(clean_up_tokenization_spaces)


def clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization``: rejoin punctuation and English contractions that
    WordPiece decoding leaves spaced out ("a dog ' s bed ." -> "a dog's bed.")."""
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


def _side(value: Any, name: str) -> str:
    if value not in ("right", "left"):
        raise ValueError(f"{name} must be 'right' or 'left', got {value!r}")
    return value


def _padding_mode(padding: bool | str) -> str | None:
    if padding is True or padding == "longest":
        return "longest"
    if padding is False or padding is None or padding == "do_not_pad":
        return None
    if padding == "max_length":
        return "max_length"
    raise ValueError(f"padding must be False, True, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")


def _truncation_mode(truncation: bool | str) -> bool:
    if truncation is True or truncation in ("longest_first", "only_first"):
        return True
    if truncation is False or truncation is None or truncation == "do_not_truncate":
        return False
    raise ValueError(
        f"truncation must be a bool, 'longest_first', 'only_first' or 'do_not_truncate', got {truncation!r}"
    )


# ====================================================================== WordPiece
class WordPieceTokenizer(BlipTokenizer):
    """BERT WordPiece (uncased by default) with BLIP's [DEC]/[ENC] appended to the vocabulary.

    Build with ``from_vocab_file("vocab.txt")`` or ``from_pretrained(folder)`` (a transformers
    tokenizer folder: tokenizer.json and/or vocab.txt, plus tokenizer_config.json /
    special_tokens_map.json / added_tokens.json when present).

    ``clean_up_tokenization_spaces`` (decode's default) is True for a tokenizer built from a vocab.txt
    alone, as transformers 4's BertTokenizer and the original BLIP decode; a folder's
    tokenizer_config.json value wins. A tokenizer_config.json without the key reads as True too
    (transformers 4), except one written by transformers 5 (it has a "backend" key), which reads as False
    as transformers 5 does.

    With a tokenizer.json, ``do_lower_case`` / ``strip_accents`` / ``tokenize_chinese_chars`` from
    tokenizer_config.json or from ``from_pretrained`` keyword arguments replace its normalizer by the
    BertNormalizer they describe, as transformers does; an option given nowhere is taken from the
    tokenizer.json's BertNormalizer (transformers: BertTokenizer's default).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        pad_token: str = "[PAD]",
        unk_token: str = "[UNK]",
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
        mask_token: str | None = "[MASK]",
        bos_token: str = "[DEC]",
        enc_token: str = "[ENC]",
        model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
        padding_side: str = "right",
        truncation_side: str = "right",
        clean_up_tokenization_spaces: bool = True,
        source: str = "<memory>",
    ):
        """``tokenizer``: a ``tokenizers.Tokenizer`` with a WordPiece model. Missing specials are added
        (in the order [PAD] [UNK] [CLS] [SEP] [MASK] [DEC] [ENC], so new ones get ids after the vocab)."""
        from tokenizers import AddedToken, processors

        # transformers saves whatever padding/truncation its last call switched on into tokenizer.json;
        # here __call__ owns both, so the Rust-side state must be off.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tok = tokenizer
        self.do_lower_case = do_lower_case
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.model_max_length = int(model_max_length)
        self._set_layout_options(padding_side, truncation_side, clean_up_tokenization_spaces, source)
        self.pad_token, self.unk_token = pad_token, unk_token
        self.cls_token, self.sep_token = cls_token, sep_token
        self.mask_token, self.bos_token, self.enc_token = mask_token, bos_token, enc_token

        base = tokenizer.get_vocab(with_added_tokens=False)
        for name, tok in (("pad", pad_token), ("unk", unk_token), ("cls", cls_token), ("sep", sep_token)):
            if tok not in base and tokenizer.token_to_id(tok) is None:
                raise ValueError(f"{source}: the vocabulary has no {name} token {tok!r}")
        # Specials must be "added tokens" so that they are matched verbatim in raw text and skipped by
        # decode(skip_special_tokens=True), as transformers does; [DEC]/[ENC] get fresh ids if absent.
        specials = [pad_token, unk_token, cls_token, sep_token, mask_token, bos_token, enc_token]
        existing = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
        for tok in specials:
            if tok is not None and tok not in existing:
                if tok == mask_token and tok not in base:
                    continue  # a vocab without [MASK] is fine; BLIP never uses it
                tokenizer.add_special_tokens([AddedToken(tok, special=True, normalized=False)])

        self.pad_token_id = tokenizer.token_to_id(pad_token)
        self.unk_token_id = tokenizer.token_to_id(unk_token)
        self.cls_token_id = tokenizer.token_to_id(cls_token)
        self.sep_token_id = tokenizer.token_to_id(sep_token)
        self.mask_token_id = tokenizer.token_to_id(mask_token) if mask_token is not None else None
        if self.mask_token_id is None:
            self.mask_token = None
        self.bos_token_id = tokenizer.token_to_id(bos_token)
        self.enc_token_id = tokenizer.token_to_id(enc_token)
        # Kept only for tokenizer.json consumers (transformers); __call__ adds [CLS]/[SEP] itself.
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{cls_token}:0 $A:0 {sep_token}:0",
            pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
            special_tokens=[(cls_token, self.cls_token_id), (sep_token, self.sep_token_id)],
        )

    # ------------------------------------------------------------------ constructors
    @staticmethod
    def _read_vocab(path: str) -> dict[str, int]:
        """vocab.txt: one token per line, id = line number (a repeated token keeps its last line).

        Read by the tokenizers library as transformers 5 does: lines end at "\n" and trailing
        whitespace ("\r", spaces) is dropped from each token."""
        from tokenizers.models import WordPiece

        with open(path, "rb") as f:
            data = f.read()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not a UTF-8 text vocabulary: {e}") from e
        vocab = dict(WordPiece.read_file(path)) if data else {}
        if not vocab:
            raise ValueError(f"{path} is empty: a WordPiece vocabulary needs one token per line")
        return vocab

    @classmethod
    def from_vocab(
        cls,
        vocab: dict[str, int],
        *,
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        unk_token: str = "[UNK]",
        source: str = "<memory>",
        **kwargs: Any,
    ) -> WordPieceTokenizer:
        """Build BERT's pipeline (BertNormalizer -> BertPreTokenizer -> WordPiece) around ``vocab``."""
        from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
        from tokenizers.models import WordPiece

        if unk_token not in vocab:
            raise ValueError(f"{source}: the vocabulary has no unknown token {unk_token!r}")
        tok = Tokenizer(WordPiece(vocab, unk_token=unk_token, max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=tokenize_chinese_chars, strip_accents=strip_accents,
            lowercase=do_lower_case,
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        return cls(tok, do_lower_case=do_lower_case, strip_accents=strip_accents,
                   tokenize_chinese_chars=tokenize_chinese_chars, unk_token=unk_token, source=source,
                   **kwargs)

    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike, **kwargs: Any) -> WordPieceTokenizer:
        """A BERT ``vocab.txt`` -> tokenizer. kwargs: do_lower_case, strip_accents, special token strings,
        model_max_length."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"WordPiece vocabulary file not found: {path}")
        return cls.from_vocab(cls._read_vocab(path), source=path, **kwargs)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **overrides: Any) -> WordPieceTokenizer:
        """A transformers-style tokenizer folder (or a vocab.txt / tokenizer.json path)."""
        folder = os.fspath(folder)
        if os.path.isfile(folder):
            if folder.endswith(".json"):
                return cls._from_tokenizer_json(folder, {}, overrides)
            return cls.from_vocab_file(folder, **overrides)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"Tokenizer folder not found: {folder}")
        options = _read_hf_config(folder)
        tokenizer_json = os.path.join(folder, TOKENIZER_JSON_NAME)
        if os.path.isfile(tokenizer_json):
            return cls._from_tokenizer_json(tokenizer_json, options, overrides)
        vocab_path = os.path.join(folder, VOCAB_NAME)
        if not os.path.isfile(vocab_path):
            raise FileNotFoundError(
                f"No WordPiece vocabulary in {folder}: expected {TOKENIZER_JSON_NAME} or {VOCAB_NAME}"
            )
        vocab = cls._read_vocab(vocab_path)
        added_path = os.path.join(folder, ADDED_TOKENS_NAME)
        added = _read_json(added_path) if os.path.isfile(added_path) else {}
        if not isinstance(added, dict):
            raise ValueError(f"{added_path} must map tokens to ids")
        kwargs = {**options, **overrides}
        tok = cls.from_vocab(vocab, source=vocab_path, **kwargs)
        # Legacy saves list [DEC]/[ENC] (or other added tokens) in added_tokens.json; their ids must agree.
        for token, idx in sorted(added.items(), key=lambda kv: kv[1]):
            if tok._tok.token_to_id(token) is None:
                from tokenizers import AddedToken

                tok._tok.add_tokens([AddedToken(token, normalized=False)])
            if tok._tok.token_to_id(token) != idx:
                raise ValueError(
                    f"{added_path}: token {token!r} should have id {idx} "
                    f"but gets {tok._tok.token_to_id(token)}"
                )
        return tok

    @classmethod
    def _from_tokenizer_json(cls, path: str, options: dict, overrides: dict) -> WordPieceTokenizer:
        from tokenizers import Tokenizer

        spec = _read_json(path)
        model_type = (spec.get("model") or {}).get("type") if isinstance(spec, dict) else None
        if model_type != "WordPiece":
            raise ValueError(f"{path}: expected a WordPiece tokenizer.json, found model type {model_type!r}")
        try:
            tok = Tokenizer.from_str(json.dumps(spec))
        except Exception as e:  # the Rust side raises plain Exception subclasses
            raise ValueError(f"{path} could not be loaded by the tokenizers library: {e}") from e
        from tokenizers import normalizers

        normalizer = spec.get("normalizer") or {}
        kwargs = dict(options)
        if normalizer.get("type") == "BertNormalizer":  # only for options given nowhere else
            kwargs.setdefault("do_lower_case", normalizer.get("lowercase", True))
            kwargs.setdefault("strip_accents", normalizer.get("strip_accents"))
            kwargs.setdefault("tokenize_chinese_chars", normalizer.get("handle_chinese_chars", True))
        kwargs.setdefault("unk_token", spec["model"].get("unk_token", "[UNK]"))
        kwargs.update(overrides)
        kwargs.setdefault("do_lower_case", True)
        kwargs.setdefault("strip_accents", None)
        kwargs.setdefault("tokenize_chinese_chars", True)
        # As transformers' BertTokenizer: the options rebuild the normalizer, so tokenize() and the
        # attributes (and what save_pretrained writes) always agree.
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=kwargs["tokenize_chinese_chars"],
            strip_accents=kwargs["strip_accents"], lowercase=kwargs["do_lower_case"],
        )
        return cls(tok, source=path, **kwargs)

    # ------------------------------------------------------------------ encoding / decoding
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    def _encode_plain(self, texts: list[str]) -> list[list[int]]:
        # One text at a time rather than encode_batch: the batch call starts Rust threads, after which a
        # fork (grain worker processes) disables them with a warning. Captions are short, so this is cheap.
        return [self._tok.encode(t, add_special_tokens=False).ids for t in texts]

    def tokenize(self, text: str) -> list[str]:
        """Text -> WordPiece strings (no [CLS]/[SEP])."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def decode(self, ids: Any, skip_special_tokens: bool = True,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """Join WordPieces ("##" pieces glued on, " ," -> ","), as transformers' fast tokenizer does;
        with clean-up (None -> ``self.clean_up_tokenization_spaces``) also "dog ' s" -> "dog's" etc."""
        ids = _to_id_list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"Token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        text = self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        if self._cleanup_wanted(clean_up_tokenization_spaces):
            text = clean_up_tokenization(text)
        return text

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        if isinstance(ids, (int, np.integer)):
            return self._tok.id_to_token(int(ids))
        return [self._tok.id_to_token(int(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        def one(t: str) -> int:
            i = self._tok.token_to_id(t)
            return self.unk_token_id if i is None else i

        return one(tokens) if isinstance(tokens, str) else [one(t) for t in tokens]

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write tokenizer.json, vocab.txt (+ added_tokens.json), tokenizer_config.json and
        special_tokens_map.json: loadable by ``from_pretrained`` and by transformers' BertTokenizer."""
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        self._tok.save(os.path.join(folder, TOKENIZER_JSON_NAME))
        base = self._tok.get_vocab(with_added_tokens=False)
        by_id = sorted(base.items(), key=lambda kv: kv[1])
        # vocab.txt encodes ids by line number, so it is only exact for a gap-free vocabulary.
        if [i for _, i in by_id] == list(range(len(by_id))):
            with open(os.path.join(folder, VOCAB_NAME), "w", encoding="utf-8") as f:
                f.writelines(token + "\n" for token, _ in by_id)
            added = {t: i for t, i in self._tok.get_vocab(with_added_tokens=True).items() if i >= len(by_id)}
            _write_json(os.path.join(folder, ADDED_TOKENS_NAME), added)
        specials = {
            "pad_token": self.pad_token, "unk_token": self.unk_token, "cls_token": self.cls_token,
            "sep_token": self.sep_token, "bos_token": self.bos_token,
        }
        if self.mask_token is not None:
            specials["mask_token"] = self.mask_token
        config = {
            **specials,
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.do_lower_case,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "model_max_length": self.model_max_length,
            **self._layout_options(),
            # transformers 5 reads extra_special_tokens, 4.x additional_special_tokens.
            "extra_special_tokens": [self.enc_token],
            "additional_special_tokens": [self.enc_token],
        }
        if self.enc_token != "[ENC]":
            config["enc_token"] = self.enc_token
        _write_json(os.path.join(folder, TOKENIZER_CONFIG_NAME), config)
        _write_json(os.path.join(folder, SPECIAL_TOKENS_MAP_NAME),
                    {**specials, "additional_special_tokens": [self.enc_token]})

    def __repr__(self) -> str:
        return (f"WordPieceTokenizer(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
                f"bos=[DEC]:{self.bos_token_id}, enc=[ENC]:{self.enc_token_id})")


def _read_hf_config(folder: str) -> dict[str, Any]:
    """WordPieceTokenizer options from tokenizer_config.json / special_tokens_map.json, if present."""
    merged: dict[str, Any] = {}
    for name in (SPECIAL_TOKENS_MAP_NAME, TOKENIZER_CONFIG_NAME):  # tokenizer_config wins
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            data = _read_json(path)
            if not isinstance(data, dict):
                raise ValueError(f"{path} must hold a JSON object")
            merged.update(data)
    options: dict[str, Any] = {}
    for key in ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "padding_side", "truncation_side"):
        if key in merged:
            options[key] = merged[key]
    if "clean_up_tokenization_spaces" in merged:  # null reads as False, as in transformers
        options["clean_up_tokenization_spaces"] = bool(merged["clean_up_tokenization_spaces"])
    elif "backend" in merged:  # written by transformers 5, whose default is False
        options["clean_up_tokenization_spaces"] = False
    for key in ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token", "bos_token"):
        if merged.get(key) is not None:
            options[key] = _token_str(merged[key])
    # [ENC] itself is listed under extra/additional_special_tokens; only a non-default name is recorded.
    if merged.get("enc_token") is not None:
        options["enc_token"] = _token_str(merged["enc_token"])
    max_len = merged.get("model_max_length")
    if isinstance(max_len, (int, float)) and max_len < _NO_LIMIT:
        options["model_max_length"] = int(max_len)
    return options


# ====================================================================== SentencePiece
# Fixed layout of the reserved ids (see the module docstring).
SPM_SPECIALS = {"pad": ("[PAD]", 0), "unk": ("[UNK]", 1), "cls": ("[CLS]", 2), "sep": ("[SEP]", 3),
                "mask": ("[MASK]", 4), "bos": ("[DEC]", 5), "enc": ("[ENC]", 6)}


class SentencePieceTokenizer(BlipTokenizer):
    """A sentencepiece (unigram or BPE) tokenizer with BLIP's specials at fixed low ids.

    Lowercases (and NFKC-normalises, sentencepiece's default rule) its input when ``do_lower_case``, both
    for training and encoding, like BLIP's uncased BERT setup. ``clean_up_tokenization_spaces``
    defaults to False: sentencepiece already restores the original spacing.
    """

    def __init__(self, model_proto: bytes, *, do_lower_case: bool = True,
                 model_max_length: int = DEFAULT_MODEL_MAX_LENGTH, padding_side: str = "right",
                 truncation_side: str = "right", clean_up_tokenization_spaces: bool = False,
                 source: str = "<memory>"):
        import sentencepiece as spm

        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError depending on version
            raise ValueError(f"{source} is not a valid sentencepiece model: {e}") from e
        self._proto = bytes(model_proto)
        self.do_lower_case = do_lower_case
        self.model_max_length = int(model_max_length)
        self._set_layout_options(padding_side, truncation_side, clean_up_tokenization_spaces, source)
        self.source = source
        ids = {}
        for name, (piece, _) in SPM_SPECIALS.items():
            i = self._sp.piece_to_id(piece)
            # piece_to_id maps unknown pieces to the unk id, so check the round trip.
            if self._sp.id_to_piece(i) != piece:
                if name == "mask":
                    ids[name] = None
                    continue
                raise ValueError(
                    f"{source}: the sentencepiece model has no {piece} piece; train it with "
                    "SentencePieceTokenizer.train, which reserves [PAD] [UNK] [CLS] [SEP] [MASK] [DEC] [ENC]"
                )
            ids[name] = i
        self.pad_token_id, self.unk_token_id = ids["pad"], ids["unk"]
        self.cls_token_id, self.sep_token_id = ids["cls"], ids["sep"]
        self.mask_token_id, self.bos_token_id, self.enc_token_id = ids["mask"], ids["bos"], ids["enc"]

    # ------------------------------------------------------------------ constructors
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        *,
        out_dir: str | os.PathLike | None = None,
        model_prefix: str | os.PathLike | None = None,
        model_type: str = "unigram",
        do_lower_case: bool = True,
        character_coverage: float = 1.0,
        model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
        num_threads: int = 1,
        **trainer_kwargs: Any,
    ) -> SentencePieceTokenizer:
        """Train a model on ``texts`` (empty lines skipped). The specials sit at ids 0-6:
        [PAD] [UNK] [CLS] [SEP] [MASK] [DEC] [ENC].

        ``out_dir`` -> ``save_pretrained(out_dir)``; ``model_prefix`` -> ``{prefix}.model`` and
        ``{prefix}.vocab`` as sentencepiece writes them; neither -> kept in memory only.
        ``trainer_kwargs`` go to ``SentencePieceTrainer.train`` (e.g. ``hard_vocab_limit=False`` for tiny
        corpora, ``byte_fallback=True``). One thread by default: training is then deterministic.
        """
        import sentencepiece as spm

        if model_type not in ("unigram", "bpe", "char", "word"):
            raise ValueError(f"model_type must be 'unigram', 'bpe', 'char' or 'word', got {model_type!r}")

        def lines() -> Iterable[str]:
            for t in texts:
                if not isinstance(t, str):
                    raise TypeError(f"training texts must be str, got {type(t).__name__}")
                t = t.lower() if do_lower_case else t
                # The trainer reads line by line: newlines inside a text would split it.
                t = " ".join(t.split())
                if t:
                    yield t

        s = SPM_SPECIALS
        options = dict(
            vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage,
            pad_id=s["pad"][1], pad_piece=s["pad"][0], unk_id=s["unk"][1], unk_piece=s["unk"][0],
            bos_id=s["cls"][1], bos_piece=s["cls"][0], eos_id=s["sep"][1], eos_piece=s["sep"][0],
            control_symbols=[s["mask"][0], s["bos"][0], s["enc"][0]],
            num_threads=num_threads, minloglevel=2,
        )
        options.update(trainer_kwargs)
        writer = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(sentence_iterator=iter(lines()), model_writer=writer, **options)
        except RuntimeError as e:
            raise ValueError(f"sentencepiece training failed: {e}") from e
        tok = cls(writer.getvalue(), do_lower_case=do_lower_case, model_max_length=model_max_length)
        if model_prefix is not None:
            prefix = os.fspath(model_prefix)
            os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
            with open(prefix + ".model", "wb") as f:
                f.write(tok._proto)
            with open(prefix + ".vocab", "w", encoding="utf-8") as f:
                for i in range(tok.vocab_size):
                    f.write(f"{tok._sp.id_to_piece(i)}\t{tok._sp.get_score(i)}\n")
            tok.source = prefix + ".model"
        if out_dir is not None:
            tok.save_pretrained(out_dir)
        return tok

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> SentencePieceTokenizer:
        """A ``.model`` file -> tokenizer. kwargs: do_lower_case, model_max_length, padding_side,
        truncation_side, clean_up_tokenization_spaces."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"sentencepiece model file not found: {path}")
        with open(path, "rb") as f:
            proto = f.read()
        return cls(proto, source=path, **kwargs)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **overrides: Any) -> SentencePieceTokenizer:
        """A folder written by ``save_pretrained`` (spm.model + tokenizer_config.json), or a .model path."""
        folder = os.fspath(folder)
        if os.path.isfile(folder):
            return cls.from_file(folder, **overrides)
        model_path = _find_spm_model(folder)
        if model_path is None:
            raise FileNotFoundError(f"No sentencepiece model in {folder}: expected {SPM_MODEL_NAME}")
        kwargs: dict[str, Any] = {}
        config_path = os.path.join(folder, TOKENIZER_CONFIG_NAME)
        if os.path.isfile(config_path):
            config = _read_json(config_path)
            if not isinstance(config, dict):
                raise ValueError(f"{config_path} must hold a JSON object")
            if "do_lower_case" in config:
                kwargs["do_lower_case"] = bool(config["do_lower_case"])
            max_len = config.get("model_max_length")
            if isinstance(max_len, (int, float)) and max_len < _NO_LIMIT:
                kwargs["model_max_length"] = int(max_len)
            for key in ("padding_side", "truncation_side"):
                if key in config:
                    kwargs[key] = config[key]
            if "clean_up_tokenization_spaces" in config:
                kwargs["clean_up_tokenization_spaces"] = bool(config["clean_up_tokenization_spaces"])
        kwargs.update(overrides)
        return cls.from_file(model_path, **kwargs)

    # ------------------------------------------------------------------ encoding / decoding
    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def _prepare(self, text: str) -> str:
        return text.lower() if self.do_lower_case else text

    def _encode_plain(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode([self._prepare(t) for t in texts], out_type=int)

    def tokenize(self, text: str) -> list[str]:
        return self._sp.encode(self._prepare(text), out_type=str)

    def decode(self, ids: Any, skip_special_tokens: bool = True,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """Pieces -> text; specials are dropped, or written as "[DEC]" etc. separated by spaces.
        ``clean_up_tokenization_spaces`` (None -> the attribute, False by default) applies
        ``clean_up_tokenization`` afterwards."""
        ids = _to_id_list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"Token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        special = set(self.all_special_ids)
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in special:
                if run:
                    parts.append(self._sp.decode(run))
                    run = []
                if not skip_special_tokens:
                    parts.append(self._sp.id_to_piece(i))
            else:
                run.append(i)
        if run:
            parts.append(self._sp.decode(run))
        # Stripping drops the stray space a lone "▁" piece leaves next to a removed [UNK]/special.
        text = " ".join(p.strip() for p in parts if p.strip())
        return clean_up_tokenization(text) if self._cleanup_wanted(clean_up_tokenization_spaces) else text

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        if isinstance(ids, (int, np.integer)):
            return self._sp.id_to_piece(int(ids))
        return [self._sp.id_to_piece(int(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self._sp.piece_to_id(tokens)
        return [self._sp.piece_to_id(t) for t in tokens]

    def get_vocab(self) -> dict[str, int]:
        return {self._sp.id_to_piece(i): i for i in range(self.vocab_size)}

    # ------------------------------------------------------------------ saving
    def serialized_model_proto(self) -> bytes:
        return self._proto

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write spm.model and tokenizer_config.json (tokenizer_type "sentencepiece")."""
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, SPM_MODEL_NAME), "wb") as f:
            f.write(self._proto)
        config = {
            "tokenizer_class": "BlipSentencePieceTokenizer",
            "tokenizer_type": "sentencepiece",
            "model_file": SPM_MODEL_NAME,
            "do_lower_case": self.do_lower_case,
            "model_max_length": self.model_max_length,
            **self._layout_options(),
            "special_token_ids": {piece: i for piece, i in (
                ("[PAD]", self.pad_token_id), ("[UNK]", self.unk_token_id), ("[CLS]", self.cls_token_id),
                ("[SEP]", self.sep_token_id), ("[MASK]", self.mask_token_id), ("[DEC]", self.bos_token_id),
                ("[ENC]", self.enc_token_id)) if i is not None},
        }
        _write_json(os.path.join(folder, TOKENIZER_CONFIG_NAME), config)

    def __repr__(self) -> str:
        return (f"SentencePieceTokenizer(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
                f"source={self.source!r})")


def _find_spm_model(folder: str) -> str | None:
    config_path = os.path.join(folder, TOKENIZER_CONFIG_NAME)
    if os.path.isfile(config_path):
        config = _read_json(config_path)
        if isinstance(config, dict) and isinstance(config.get("model_file"), str):
            path = os.path.join(folder, config["model_file"])
            if os.path.isfile(path):
                return path
    path = os.path.join(folder, SPM_MODEL_NAME)
    if os.path.isfile(path):
        return path
    models = sorted(f for f in os.listdir(folder) if f.endswith(".model"))
    return os.path.join(folder, models[0]) if len(models) == 1 else None


def load_tokenizer(path: str | os.PathLike, **kwargs: Any) -> BlipTokenizer:
    """Pick the tokenizer class from what ``path`` holds.

    A ``.model`` file or a folder with one (or a tokenizer_config.json saying "sentencepiece") ->
    SentencePieceTokenizer; a vocab.txt / tokenizer.json file or a folder with either ->
    WordPieceTokenizer. A hub id is read from its snapshot (huggingface_hub's cache).
    """
    from blip_jax.checkpoints.io import processor_path

    path = processor_path(path)
    if os.path.isfile(path):
        if path.endswith(".model"):
            return SentencePieceTokenizer.from_file(path, **kwargs)
        return WordPieceTokenizer.from_pretrained(path, **kwargs)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Tokenizer path not found: {path}")
    config_path = os.path.join(path, TOKENIZER_CONFIG_NAME)
    config = _read_json(config_path) if os.path.isfile(config_path) else {}
    says_spm = isinstance(config, dict) and config.get("tokenizer_type") == "sentencepiece"
    if says_spm or _find_spm_model(path):
        return SentencePieceTokenizer.from_pretrained(path, **kwargs)
    if any(os.path.isfile(os.path.join(path, name)) for name in (TOKENIZER_JSON_NAME, VOCAB_NAME)):
        return WordPieceTokenizer.from_pretrained(path, **kwargs)
    raise FileNotFoundError(
        f"No tokenizer files in {path} (found {sorted(os.listdir(path))}): expected {VOCAB_NAME} or "
        f"{TOKENIZER_JSON_NAME} (WordPiece) or {SPM_MODEL_NAME} / *.model (sentencepiece)"
    )

