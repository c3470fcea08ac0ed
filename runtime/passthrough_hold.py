"""What a pass-through request holds against its caller's tokens per minute and budgets
before it is sent, as a chat request holds its worst case (``admission.worst_case``);
the hold is settled to the usage its answer reports, or given back.

    POST, a JSON body read whole      its prompt (about ``BYTES_PER_TOKEN`` bytes a token)
      (up to max_request_bytes)       and the output it caps (max_tokens,
                                      max_completion_tokens, max_output_tokens,
                                      generationConfig.maxOutputTokens; else hold_tokens),
                                      times its ``n`` (candidateCount), capped as the
                                      deployment of the model it names (in the body, or
                                      in Gemini's path) caps a call, at its price
    POST, the same gzip or deflate    as that JSON body, read from a copy inflated (up to
      compressed (Content-Encoding)   max_request_bytes); the bytes go upstream as they came
    POST, any other body              hold_tokens, at the output price of the deployment
      (an upload, a larger one)       of the model its path names
    either, naming no model           at the dearest price of the provider's deployments;
                                      a model none serves: tokens only, as its answer
                                      is billed nothing (``passthrough._bill``)
    GET, DELETE and the rest          nothing: no model runs, and their answers are not
                                      billed (a stored response fetched again reports
                                      the usage it was billed for once)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aigw.compiler.graph import Deployment, Passthrough

from . import jsonio
from .errors import BadRequest
from .incoming import check_containers
from .passthrough_usage import Inflater, inflated

# OpenAI's rule of thumb for English text; JSON's quotes and keys make it an over-count,
# which a hold may be (settled to the answer's usage).
BYTES_PER_TOKEN = 4
# The output caps a body may name, as OpenAI's, Anthropic's and Cohere's APIs spell them.
_OUTPUT_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_GENERATION_CONFIG = ("generationConfig", "generation_config")
# The model of Gemini's /v1beta/models/<model>:generateContent (and a tuned model's).
_MODEL_IN_PATH = re.compile(r"/models/([^/:]+)")
_OBJECT_START = re.compile(rb"\s*\{")
# The most choices a hold counts (OpenAI's cap on ``n``).
_MOST_CHOICES = 128


def billed_method(method: str) -> bool:
    """Whether an answer to ``method`` is billed (and its request held): a POST alone
    runs a model."""
    return method == "POST"


@dataclass(frozen=True, slots=True)
class Asked:
    """A POST's body as its hold reads it: its size (inflated, where it came compressed)
    and the JSON object it is (None: another body)."""

    size: int
    document: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Held:
    """What a request holds before it is sent: the prompt and output tokens it may use,
    and their cost at the price of ``deployment`` (None: no deployment's price names its
    model). An answer whose usage cannot be read is billed this (``passthrough._bill``)."""

    prompt: int
    output: int
    cost: float
    deployment: Deployment | None

    @property
    def tokens(self) -> int:
        return self.prompt + self.output


NOTHING = Held(0, 0, 0.0, None)


def asked(body: bytes, encoding: str, most_bytes: int, most_containers: int) -> Asked:
    """``body`` (a POST's, read whole) as its hold reads it: a gzip or deflate one
    (``encoding``, the request's Content-Encoding) from a copy inflated up to
    ``most_bytes``; one that inflates past that, or is not what its encoding says, is
    read as no JSON.

    >>> import gzip
    >>> asked(gzip.compress(b'{"max_tokens": 9}'), "gzip", 100, 50).document
    {'max_tokens': 9}
    >>> asked(gzip.compress(b" " * 101), "gzip", 100, 50).document, asked(b"{}", "br", 9, 9)
    (None, Asked(size=2, document=None))
    """
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return Asked(len(body), _document(body, most_containers))
    text = inflated(body, encoding, most_bytes + 1) if Inflater.reads(encoding) else None
    if text is None or len(text) > most_bytes:
        return Asked(len(body), None)
    return Asked(len(text), _document(text, most_containers))


def asks_stream(path: str, body: Asked | None) -> bool:
    """Whether a request asks for its answer as a stream: its JSON body's ``"stream":
    true`` (OpenAI's, Anthropic's, Cohere's), or Gemini's ``:streamGenerateContent``."""
    if path.endswith(":streamGenerateContent"):
        return True
    return body is not None and body.document is not None and body.document.get(
        "stream") is True


def held(passthrough: Passthrough, method: str, path: str, body: Asked | None) -> Held:
    """What ``method`` on ``path`` holds before it is sent; ``body``: the request's body
    where it was read whole (None: not read, or none).

    >>> from aigw.compiler.graph import Price
    >>> from types import SimpleNamespace as D
    >>> sonnet = D(price=Price(3.0, 15.0, 0.3, 3.75), context_window=200_000,
    ...            output_cap=lambda prompt, wanted: min(wanted or 64_000, 64_000))
    >>> raw = D(prices={"claude-sonnet-4-6": sonnet}, hold_tokens=4096)
    >>> body = asked(b'{"model": "claude-sonnet-4-6", "max_tokens": 100, "messages": []}',
    ...              "", 1 << 20, 50_000)
    >>> hold = held(raw, "POST", "/v1/messages", body)  # type: ignore[arg-type]
    >>> hold.tokens, hold.cost
    (117, 0.00156375)
    >>> held(raw, "GET", "/v1/models", None).tokens  # type: ignore[arg-type]
    0
    """
    if not billed_method(method):
        return NOTHING
    document = body.document if body is not None else None
    in_path = _MODEL_IN_PATH.search(path)
    model = in_path.group(1) if in_path is not None else None
    prompt, wanted, choices = 0, None, 1
    if document is not None and body is not None:
        named = document.get("model")
        model = named if isinstance(named, str) and named else model
        prompt = -(-body.size // BYTES_PER_TOKEN)
        wanted, choices = _output_cap(document), _choices(document)
    deployment = priced(passthrough.prices, model)
    if deployment is not None:
        prompt = min(prompt, deployment.context_window)
        out = deployment.output_cap(prompt, wanted or passthrough.hold_tokens) * choices
        return Held(prompt, out, deployment.price.most(prompt, out), deployment)
    out = (wanted or passthrough.hold_tokens) * choices
    if model is not None:  # a model none of the provider's deployments serves
        return Held(prompt, out, 0.0, None)
    return Held(prompt, out, _dearest(passthrough.prices, prompt, out), None)


def _document(body: bytes, most_containers: int) -> Mapping[str, Any] | None:
    """``body`` as a JSON object; None for another body (a form, a file, a body of more
    containers than a request may hold)."""
    if _OBJECT_START.match(body) is None:
        return None
    try:
        check_containers(body, most_containers)
        document = jsonio.loads(body)
    except (ValueError, BadRequest):
        return None
    return document if isinstance(document, dict) else None


def _output_cap(document: Mapping[str, Any]) -> int | None:
    for holder in (document, *(document.get(name) for name in _GENERATION_CONFIG)):
        if not isinstance(holder, dict):
            continue
        for name in (*_OUTPUT_CAPS, "maxOutputTokens"):
            value = holder.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _choices(document: Mapping[str, Any]) -> int:
    found: object = document.get("n")
    for name in _GENERATION_CONFIG:
        config = document.get(name)
        if isinstance(config, dict) and "candidateCount" in config:
            found = config["candidateCount"]
    if isinstance(found, int) and not isinstance(found, bool) and found > 1:
        return min(found, _MOST_CHOICES)
    return 1


def _dearest(prices: Mapping[str, Deployment], prompt: int, out: int) -> float:
    return max((deployment.price.most(prompt, out) for deployment in prices.values()),
               default=0.0)


def priced(prices: Mapping[str, Deployment], model: str | None) -> Deployment | None:
    """The deployment whose price bills an answer naming ``model`` (and holds a request
    naming it): the one of that id, else the one whose id ``model`` is a dated snapshot
    of (``gpt-4o-mini-2024-07-18`` of ``gpt-4o-mini``), the longest such; None for a
    model no deployment serves.

    >>> from types import SimpleNamespace as D
    >>> priced({"gpt-4o": D(name="big"), "gpt-4o-mini": D(name="small")},
    ...        "gpt-4o-mini-2024-07-18").name  # type: ignore[dict-item]
    'small'
    """
    if model is None:
        return None
    found = prices.get(model)
    if found is not None:
        return found
    snapshots = [name for name in prices if model.startswith(name + "-")]
    return prices[max(snapshots, key=len)] if snapshots else None
