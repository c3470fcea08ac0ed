"""What a pass-through request holds before it is sent (runtime/passthrough_hold.py):
its body's model and output cap at that model's deployment's price (a gzipped body's
read inflated), else hold_tokens at the provider's dearest; nothing for a request that
runs no model."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from aigw.compiler.graph import Passthrough
from aigw.runtime.passthrough_hold import asked, asks_stream, held

from ..providers.conftest import compiled

MOST_CONTAINERS = 50_000
MOST_BYTES = 1 << 20


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Passthrough]:
    graph = compiled(tmp_path_factory.mktemp("hold"), """
        providers:
          openai: {type: openai, api_key: sk-provider-0123456789}
          google: {type: gemini, api_key: AIza-provider-0123456789}
        deployments:
          mini: {provider: openai, model: gpt-4o-mini, context_window: 1000,
                 max_output_tokens: 300, price: {input: 1000000, output: 2000000}}
          big: {provider: openai, model: gpt-4o, context_window: 100000,
                price: {input: 3000000, output: 10000000}}
          flash: {provider: google, model: gemini-2.5-flash, context_window: 100000,
                  price: {input: 1000000, output: 1000000}}
        routes: {mini: {deployment: mini}, big: {deployment: big}, flash: {deployment: flash}}
        passthrough:
          openai-raw: {provider: openai, paths: ["/v1/**"], methods: [GET, POST]}
          gemini-raw: {provider: google, paths: ["/v1beta/**"], methods: [POST],
                       hold_tokens: 50}
        """)
    return dict(graph.passthrough)


def _body(document: object) -> bytes:
    return json.dumps(document).encode()


def _held(passthrough: Passthrough, method: str, path: str, body: bytes | None,
          most_containers: int = MOST_CONTAINERS, encoding: str = "") -> tuple[int, float]:
    """The tokens and cost ``body`` (sent in ``encoding``) holds."""
    read = asked(body, encoding, MOST_BYTES, most_containers) if body is not None else None
    hold = held(passthrough, method, path, read)
    return hold.tokens, hold.cost


def test_a_json_body_holds_its_prompt_and_output_cap_at_its_models_price(
        raw: dict[str, Passthrough]) -> None:
    body = _body({"model": "gpt-4o-mini", "max_completion_tokens": 100, "n": 2,
                  "messages": [{"role": "user", "content": "x" * 80}]})
    prompt = -(-len(body) // 4)
    assert _held(raw["openai-raw"], "POST", "/v1/chat/completions", body) == (
        prompt + 200, prompt * 1 + 200 * 2)
    # An output cap past the deployment's is held at the deployment's (300).
    body = _body({"model": "gpt-4o-mini-2024-07-18", "max_tokens": 5000, "input": "hi"})
    prompt = -(-len(body) // 4)
    assert _held(raw["openai-raw"], "POST", "/v1/responses", body) == (prompt + 300, prompt + 600)


def test_gemini_names_its_model_in_the_path_and_its_cap_in_generation_config(
        raw: dict[str, Passthrough]) -> None:
    body = _body({"contents": [], "generationConfig": {"maxOutputTokens": 70}})
    prompt = -(-len(body) // 4)
    assert _held(raw["gemini-raw"], "POST", "/v1beta/models/gemini-2.5-flash:generateContent",
                 body) == (prompt + 70, prompt + 70)
    # Not JSON (a file, or gzip sent as no encoding): its hold_tokens, at that model's price.
    assert _held(raw["gemini-raw"], "POST", "/v1beta/models/gemini-2.5-flash:generateContent",
                 gzip.compress(body)) == (50, 50)


def test_a_body_naming_no_model_is_held_at_the_dearest_and_an_unpriced_one_at_nothing(
        raw: dict[str, Passthrough]) -> None:
    assert _held(raw["openai-raw"], "POST", "/v1/files", None) == (4096, 4096 * 10)
    body = _body({"model": "o9-unknown", "max_tokens": 10})
    prompt = -(-len(body) // 4)
    assert _held(raw["openai-raw"], "POST", "/v1/chat/completions", body) == (prompt + 10, 0.0)


def test_what_runs_no_model_holds_nothing(raw: dict[str, Passthrough]) -> None:
    assert _held(raw["openai-raw"], "GET", "/v1/responses/resp_1", None) == (0, 0.0)
    # A body of more containers than a request may hold is not parsed: its model is not
    # known, and it holds hold_tokens at the dearest.
    bomb = b'{"model": "gpt-4o-mini", "max_tokens": 1, "x": [' + b"[]," * 60 + b"[]]}"
    assert _held(raw["openai-raw"], "POST", "/v1/chat/completions", bomb, 50) == (
        4096, 4096 * 10)


def test_a_compressed_body_holds_what_its_inflated_copy_says(
        raw: dict[str, Passthrough]) -> None:
    body = _body({"model": "gpt-4o-mini", "max_tokens": 100,
                  "messages": [{"role": "user", "content": "hello " * 40}]})
    plain = _held(raw["openai-raw"], "POST", "/v1/chat/completions", body)
    assert plain[0] == -(-len(body) // 4) + 100
    deflated = zlib.compress(body)
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    for sent, encoding in ((gzip.compress(body), "gzip"), (gzip.compress(body), " GZip"),
                           (deflated, "deflate"),
                           (raw_deflate.compress(body) + raw_deflate.flush(), "deflate")):
        assert _held(raw["openai-raw"], "POST", "/v1/chat/completions", sent,
                     encoding=encoding) == plain, encoding
    # One it cannot inflate (br, a lie, past the bound read): hold_tokens at the dearest.
    big = _body({"model": "gpt-4o-mini", "max_tokens": 1, "input": " " * MOST_BYTES})
    for sent, encoding in ((body, "br"), (body, "gzip"), (gzip.compress(big), "gzip")):
        assert _held(raw["openai-raw"], "POST", "/v1/chat/completions", sent,
                     encoding=encoding) == (4096, 4096 * 10), encoding


def test_a_request_asks_for_a_stream_in_its_body_or_geminis_path() -> None:
    def asking(path: str, document: object, encoding: str = "") -> bool:
        body = _body(document)
        sent = gzip.compress(body) if encoding else body
        return asks_stream(path, asked(sent, encoding, MOST_BYTES, MOST_CONTAINERS))

    assert asking("/v1/chat/completions", {"stream": True})
    assert asking("/v1/messages", {"stream": True}, encoding="gzip")
    assert not asking("/v1/chat/completions", {"stream": False})
    assert not asking("/v1/chat/completions", {"stream": "true"})
    assert asks_stream("/v1beta/models/gemini-2.5-flash:streamGenerateContent", None)
    assert not asks_stream("/v1/files", None)
