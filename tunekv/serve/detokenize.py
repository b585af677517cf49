"""Text out of token ids as they come, and the stop strings checked on it.

Decoding each new token alone breaks words that span tokens (byte-level BPE, sentencepiece's
leading spaces); decoding the whole output each step costs O(length). :class:`TextStream` decodes
a short window, the way vLLM and Hugging Face's streamers do: the text of tokens
``[prefix_offset, read_offset)`` is known, and what the new tokens add is the decode of
``[prefix_offset, end)`` past it, held back while it ends in an incomplete character."""

from __future__ import annotations

from typing import Any

__all__ = ["TextStream"]

CONTEXT_TOKENS = 6     # prompt tokens decoded before the output, so its first word spaces right
REPLACEMENT = "\ufffd"


class TextStream:
    """One choice's output text. ``push`` takes the new token ids of a step and returns the text
    that may be sent now; a stop string ends the text before it, or after it with
    ``include_stop``, once the output has more than ``min_tokens`` tokens, as in vLLM
    (``stopped_by`` is then the string). While stop strings are set, the last
    ``len(longest) - 1`` characters are held back until they cannot begin one; ``finish``
    returns what was held."""

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], stop: list[str], min_tokens: int = 0,
                 include_stop: bool = False) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = list(prompt_token_ids[-CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.stop, self.min_tokens, self.include_stop = stop, min_tokens, include_stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.output_tokens = 0
        self.text = ""          # all the output text so far (up to a stop string)
        self.sent = 0           # characters of ``text`` returned already
        self.stopped_by: str | None = None

    @property
    def stopped(self) -> bool:
        return self.stopped_by is not None

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, new_token_ids: list[int]) -> str:
        if self.stopped:
            return ""
        self.output_tokens += len(new_token_ids)
        self.ids.extend(new_token_ids)
        known = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(known) and not full.endswith(REPLACEMENT):
            self._add(full[len(known):])
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """The rest of the text when the request ends (an incomplete character included)."""
        if not self.stopped and self.read_offset < len(self.ids):
            known = self._decode(self.ids[self.prefix_offset:self.read_offset])
            self._add(self._decode(self.ids[self.prefix_offset:])[len(known):])
            self.read_offset = len(self.ids)
        return self._release(final=True)

    def _add(self, delta: str) -> None:
        start = max(0, len(self.text) - self.hold)
        self.text += delta
        if not self.stop or self.output_tokens <= self.min_tokens:
            return
        hits = [(i, s) for i, s in ((self.text.find(s, start), s) for s in self.stop) if i >= 0]
        if hits:
            at, self.stopped_by = min(hits, key=lambda hit: hit[0])
            self.text = self.text[:at + (len(self.stopped_by) if self.include_stop else 0)]

    def _release(self, final: bool) -> str:
        end = len(self.text) if final or self.stopped else max(self.sent, len(self.text) - self.hold)
        out = self.text[self.sent:end]
        self.sent = end
        return out
