"""What a pass-through request holds before it is sent (runtime/passthrough_hold.py):
its body's model and output cap at that model's deployment's price, else hold_tokens at
the provider's dearest; nothing for a request that runs no model."""

from __future__ import annotations

import json

import pytest

from aigw.compiler.graph import Passthrough
from aigw.runtime.passthrough_hold import held

from ..providers.conftest import compiled

MOST_CONTAINERS = 50_000


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


def test_a_json_body_holds_its_prompt_and_output_cap_at_its_models_price(
        raw: dict[str, Passthrough]) -> None:
    body = _body({"model": "gpt-4o-mini", "max_completion_tokens": 100, "n": 2,
                  "messages": [{"role": "user", "content": "x" * 80}]})
    prompt = -(-len(body) // 4)
    assert held(raw["openai-raw"], "POST", "/v1/chat/completions", body,
                MOST_CONTAINERS) == (prompt + 200, prompt * 1 + 200 * 2)
    # An output cap past the deployment's is held at the deployment's (300).
    body = _body({"model": "gpt-4o-mini-2024-07-18", "max_tokens": 5000, "input": "hi"})
    prompt = -(-len(body) // 4)
    assert held(raw["openai-raw"], "POST", "/v1/responses", body,
                MOST_CONTAINERS) == (prompt + 300, prompt + 600)


def test_gemini_names_its_model_in_the_path_and_its_cap_in_generation_config(
        raw: dict[str, Passthrough]) -> None:
    body = _body({"contents": [], "generationConfig": {"maxOutputTokens": 70}})
    prompt = -(-len(body) // 4)
    assert held(raw["gemini-raw"], "POST", "/v1beta/models/gemini-2.5-flash:generateContent",
                body, MOST_CONTAINERS) == (prompt + 70, prompt + 70)
    # Not JSON (a file, compressed): its hold_tokens, at that model's price.
    assert held(raw["gemini-raw"], "POST", "/v1beta/models/gemini-2.5-flash:generateContent",
                b"\x1f\x8b...", MOST_CONTAINERS) == (50, 50)


def test_a_body_naming_no_model_is_held_at_the_dearest_and_an_unpriced_one_at_nothing(
        raw: dict[str, Passthrough]) -> None:
    assert held(raw["openai-raw"], "POST", "/v1/files", None, MOST_CONTAINERS) == (
        4096, 4096 * 10)
    body = _body({"model": "o9-unknown", "max_tokens": 10})
    prompt = -(-len(body) // 4)
    assert held(raw["openai-raw"], "POST", "/v1/chat/completions", body,
                MOST_CONTAINERS) == (prompt + 10, 0.0)


def test_what_runs_no_model_holds_nothing(raw: dict[str, Passthrough]) -> None:
    assert held(raw["openai-raw"], "GET", "/v1/responses/resp_1", None, MOST_CONTAINERS) == (
        0, 0.0)
    # A body of more containers than a request may hold is not parsed: its model is not
    # known, and it holds hold_tokens at the dearest.
    bomb = b'{"model": "gpt-4o-mini", "max_tokens": 1, "x": [' + b"[]," * 60 + b"[]]}"
    assert held(raw["openai-raw"], "POST", "/v1/chat/completions", bomb, 50) == (
        4096, 4096 * 10)
