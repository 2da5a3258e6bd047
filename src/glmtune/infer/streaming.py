"""Incremental detokenization: the text of a growing id list, in cost independent of its length.

SentencePiece drops the leading space of a decode that starts mid-sentence
and byte-fallback pieces can split a UTF-8 character across tokens, so each
step decodes a short window that starts a few tokens back and emits only what
it adds beyond the window's already-emitted part (the scheme vLLM and
transformers' streamers use); an incomplete character (U+FFFD at the end)
is held back until its remaining bytes arrive.
"""

from __future__ import annotations

_REPLACEMENT = "\ufffd"
_CONTEXT = 6  # tokens decoded before the new ones so spacing and merges come out right


class IncrementalDecoder:
    """``push(id)`` returns the new text; ``text`` is everything emitted so far."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self._prefix_offset = 0  # window start
        self._read_offset = 0  # ids before this are already emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_unknown=True)

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        if self._read_offset == 0:
            full = self._decode(self.ids)
            if full.endswith(_REPLACEMENT):
                return ""
            delta, self.text = full[len(self.text):], full
            self._advance()
            return delta
        prefix_text = self._decode(self.ids[self._prefix_offset:self._read_offset])
        new_text = self._decode(self.ids[self._prefix_offset:])
        if len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT):
            return ""
        delta = new_text[len(prefix_text):]
        self.text += delta
        self._advance()
        return delta

    def _advance(self) -> None:
        self._read_offset = len(self.ids)
        self._prefix_offset = max(0, self._read_offset - _CONTEXT)

    def final_text(self) -> str:
        """The whole text, decoded at once (no held-back bytes; what the official chat returns)."""
        return self._decode(self.ids)
