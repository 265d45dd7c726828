"""The CapFilt filter: ITM match probabilities of image-text pairs.

A text is kept when the ITM head of a `BlipForImageTextRetrieval` predicts "match":
``softmax(itm_logits)[1] > threshold`` (0.5: the head's argmax, the paper's rule). Texts are
cleaned as in pretraining (`pre_caption`, at most ``max_words`` words) and tokenised to
``max_len`` tokens before scoring.

Each image is encoded once; its C texts (web captions and synthetic ones) are scored in one
image-grounded text-encoder pass in which the C query rows fold onto the image's shared
cross-attention keys/values (`Attention` folding), so no image state is copied per text.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from blip_jax.capfilt.captioner import replicate, split_rows


def _bucket(n: int) -> int:
    """Texts per image, rounded up to a power of two: few distinct shapes, few compiles."""
    return 1 << max(0, (n - 1).bit_length())


class Filter:
    """`filter.match_probabilities(pixel_values (B, H, W, 3), texts: B lists of str) -> B float32
    arrays` (p(match) per text, in the order given)."""

    def __init__(self, model, tokenizer, *, max_words: int = 30, max_len: int = 35, mesh=None):
        self.model, self.tokenizer, self.mesh = model, tokenizer, mesh
        self.max_words, self.max_len = max_words, max_len
        graphdef, self._state = nnx.split(model)
        if mesh is not None:  # weights replicated, image rows (and their texts) split over the devices
            self._state = replicate(self._state, mesh)

        @jax.jit
        def probabilities(state, pixel_values, ids, mask):
            """pixel_values (B, H, W, 3), ids/mask (B * C, L) image-major -> p(match) (B * C,) f32."""
            m = nnx.merge(graphdef, state)
            image_states = m.vision_model(pixel_values).last_hidden_state
            logits, _ = m.itm_logits(ids, image_states, mask)
            return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, 1]

        self._probabilities = probabilities

    def clean(self, text) -> str:
        """The text the filter scores: `pre_caption` (lowercase, punctuation out, max_words)."""
        from blip_jax.data.text import pre_caption

        return pre_caption(text, self.max_words)

    def match_probabilities(self, pixel_values, texts: list[list[str]]) -> list[np.ndarray]:
        from blip_jax.data.pipelines import tokenize

        b = len(texts)
        if b != pixel_values.shape[0]:
            raise ValueError(f"{b} text lists for {pixel_values.shape[0]} images")
        c = _bucket(max(1, max(len(t) for t in texts)))
        flat = [self.clean(t) for row in texts for t in row]
        ids = np.zeros((b * c, self.max_len), np.int32)
        mask = np.zeros((b * c, self.max_len), np.int32)
        mask[:, 0] = 1  # padding rows: one [CLS] token, scored and discarded
        if flat:
            tok_ids, tok_mask = tokenize(self.tokenizer, flat, self.max_len)
            rows = np.asarray([i * c + j for i, row in enumerate(texts) for j in range(len(row))])
            ids[rows], mask[rows] = tok_ids, tok_mask
        inputs = (pixel_values, ids, mask)
        inputs = tuple(split_rows(x, self.mesh) for x in inputs) if self.mesh is not None else map(jnp.asarray, inputs)
        probs = np.asarray(self._probabilities(self._state, *inputs))
        return [probs[i * c:i * c + len(row)] for i, row in enumerate(texts)]
