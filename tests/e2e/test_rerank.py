"""A real ``aigw serve`` process serving POST /v1/rerank over Cohere's v2 API and a vLLM
server's /v1/rerank (their fakes), and echo's local ranking: the order, top_n,
return_documents, the bill in the ledger and the access log, a fallback between the two
upstreams, and each bad request's 4xx. No rerank SDK is installed: the requests are
httpx's, as a Cohere- or Jina-shaped client sends them."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from ..fakes.cohere_fake import CohereFake, relevance
from ..fakes.openai_fake import OpenAIFake
from ..fakes.serve import serving
from .server import Server, sdk_gateway

pytestmark = pytest.mark.e2e

QUERY = "rain in the city"
DOCUMENTS = ["a sunny day at the beach", "rainy afternoon in the city centre",
             "rain in the city tonight"]


@dataclass
class Rerankers:
    cohere: CohereFake
    vllm: OpenAIFake
    client: openai.OpenAI
    server: Server

    def rerank(self, path: str = "/v1/rerank", timeout: float = 10,
               **body: Any) -> httpx.Response:
        return httpx.post(f"{self.server.base_url}{path}", json=body, timeout=timeout,
                          headers={"authorization": f"Bearer {DEV_KEY}"})


@pytest.fixture
def rerankers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rerankers]:
    cohere, vllm = CohereFake(), OpenAIFake(name="fake-vllm")
    monkeypatch.setenv("FAKE_COHERE_KEY", cohere.api_key)
    monkeypatch.setenv("FAKE_VLLM_KEY", vllm.api_key)
    with serving(cohere.app) as cohere_url, serving(vllm.app) as vllm_url, \
            sdk_gateway(tmp_path / "gw", (
                "providers:\n"
                f'  cohere: {{type: cohere, base_url: "{cohere_url}", '
                'api_key: "${FAKE_COHERE_KEY}"}\n'
                f'  gpu: {{type: openai_compatible, base_url: "{vllm_url}/v1", '
                'api_key: "${FAKE_VLLM_KEY}"}\n'
                "  local: {type: echo}\n"
                "deployments:\n"
                "  cohere-rerank: {provider: cohere, model: rerank-v3.5, kind: rerank,\n"
                "                  context_window: 4096, price: {per_1k_search_units: 2.0}}\n"
                "  bge: {provider: gpu, model: BAAI/bge-reranker-v2-m3, kind: rerank,\n"
                "        context_window: 8192, price: {input: 1.0}}\n"
                "  echo-rerank: {provider: local, model: echo-rerank, kind: rerank,"
                " context_window: 8}\n"
                "  echo-chat: {provider: local, model: echo-1, context_window: 8192}\n"
                "  slow-cohere: {provider: cohere, model: rerank-v3.5, kind: rerank,\n"
                "                context_window: 4096, timeout_s: 0.5,\n"
                "                price: {per_1k_search_units: 2.0}}\n"
                "groups:\n"
                "  rerank: {members: [cohere-rerank, bge], retry: {attempts: 0}}\n"
                "  slow: {members: [slow-cohere], retry: {attempts: 0}}\n"
                "routes:\n"
                "  slow: {group: slow}\n"
                "  rerank: {group: rerank}\n"
                "  cohere: {deployment: cohere-rerank}\n"
                "  bge: {deployment: bge}\n"
                "  local: {deployment: echo-rerank}\n"
                "  chat: {deployment: echo-chat}\n"
            )) as (client, server):
        yield Rerankers(cohere, vllm, client, server)


def _ledger(server: Server, request_id: str) -> tuple[Any, ...]:
    row = server.ledger_row(request_id)
    return row["route"], row["deployment"], row["status"], row["tokens_in"], row["cost"]


def test_cohere_ranks_best_first_with_top_n_and_documents(rerankers: Rerankers) -> None:
    response = rerankers.rerank(model="cohere", query=QUERY, documents=[
        DOCUMENTS[0], {"text": DOCUMENTS[1]}, DOCUMENTS[2]], top_n=2, return_documents=True)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [row["index"] for row in body["results"]] == [2, 1]
    assert body["results"][0] == {"index": 2, "relevance_score": relevance(QUERY, DOCUMENTS[2]),
                                  "document": {"text": DOCUMENTS[2]}}
    assert body["meta"]["billed_units"] == {"search_units": 1}
    assert response.headers["x-aigw-deployment"] == "cohere-rerank"
    sent = rerankers.cohere.script
    # v2 takes strings only, and has no return_documents: the gateway adds the texts.
    assert sent.requests[-1] == {"model": "rerank-v3.5", "query": QUERY,
                                 "documents": DOCUMENTS, "top_n": 2}
    assert sent.headers[-1]["authorization"] == f"Bearer {rerankers.cohere.api_key}"

    plain = rerankers.rerank(model="cohere", query=QUERY, documents=DOCUMENTS,
                             max_tokens_per_doc=512).json()
    assert [row["index"] for row in plain["results"]] == [2, 1, 0]
    assert all("document" not in row for row in plain["results"])
    assert sent.requests[-1]["max_tokens_per_doc"] == 512


def test_search_units_are_billed_in_the_ledger_and_logged(rerankers: Rerankers) -> None:
    rerankers.cohere.search_units = 3  # a long document counted as several, say
    response = rerankers.rerank(model="cohere", query=QUERY, documents=DOCUMENTS)
    request_id = response.headers["x-request-id"]
    route, deployment, status, tokens_in, cost = _ledger(rerankers.server, request_id)
    assert (route, deployment, status) == ("cohere", "cohere-rerank", 200)
    assert tokens_in > 0
    assert cost == pytest.approx(3 * 2.0 / 1000)  # $2 per 1,000 search units
    line = rerankers.server.access_line(request_id)
    assert line is not None
    assert (line["endpoint"], line["route"], line["status"]) == ("rerank", "cohere", 200)
    assert line["cost"] == pytest.approx(0.006)


def test_cohere_clients_path_v2_rerank_is_the_same_endpoint(rerankers: Rerankers) -> None:
    """Cohere's SDK (``cohere.ClientV2(base_url=gateway)``) posts to /v2/rerank: no cohere
    package is installed, so this is the request it sends, by httpx."""
    v2 = rerankers.rerank("/v2/rerank", model="cohere", query=QUERY, documents=DOCUMENTS,
                          top_n=2, max_tokens_per_doc=512)
    assert v2.status_code == 200, v2.text
    v1 = rerankers.rerank(model="cohere", query=QUERY, documents=DOCUMENTS, top_n=2,
                          max_tokens_per_doc=512)
    assert v2.json()["results"] == v1.json()["results"]
    assert v2.json()["meta"]["billed_units"] == {"search_units": 1}
    assert rerankers.cohere.script.requests[0] == rerankers.cohere.script.requests[1]
    request_id = v2.headers["x-request-id"]
    line = rerankers.server.access_line(request_id)
    assert line is not None
    assert (line["endpoint"], line["route"], line["status"]) == ("rerank", "cohere", 200)
    assert _ledger(rerankers.server, request_id)[:3] == ("cohere", "cohere-rerank", 200)


def test_a_call_cut_short_is_billed_its_search_units_too(rerankers: Rerankers) -> None:
    """A call cut at its attempt's timeout (as at the route's deadline, a hedge that lost,
    a shutdown) went out, and Cohere bills it: the ledger's estimate of it holds the
    search units it would be billed (120 documents: 2), not its tokens alone."""
    rerankers.cohere.script.actions.append(Action(delay_s=3))
    response = rerankers.rerank(model="slow", query=QUERY, documents=DOCUMENTS * 40)
    assert response.status_code == 504, response.text
    with sqlite3.connect(rerankers.server.root / "aigw.sqlite") as ledger:
        cut = ledger.execute("SELECT deployment, tokens_in, cost_nanos / 1e9 FROM ledger "
                             "WHERE estimated").fetchall()
    ledger.close()
    [(deployment, tokens_in, cost)] = cut
    assert deployment == "slow-cohere" and tokens_in > 0
    assert cost == pytest.approx(2 * 2.0 / 1000)  # $2 per 1,000 search units


def test_a_client_that_leaves_stops_the_call_billed_as_cut_short(
    rerankers: Rerankers,
) -> None:
    """A client that stops waiting (a timeout of its own) stops the call, as a chat's:
    a 499, and the call that went out billed its tokens and search units as cut short.
    It ran on to its end, a 200 no one received."""
    rerankers.cohere.script.actions.append(Action(delay_s=3))
    with pytest.raises(httpx.TimeoutException):
        rerankers.rerank(timeout=0.5, model="cohere", query=QUERY, documents=DOCUMENTS * 40)
    rows: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + 10
    while len(rows) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        with sqlite3.connect(rerankers.server.root / "aigw.sqlite") as ledger:
            rows = ledger.execute("SELECT status, estimated, tokens_in > 0, "
                                  "cost_nanos / 1e9 FROM ledger ORDER BY estimated").fetchall()
        ledger.close()
    assert rows == [(499, 0, 0, 0.0), (499, 1, 1, pytest.approx(2 * 2.0 / 1000))]


def test_a_vllm_server_ranks_through_its_rerank_endpoint(rerankers: Rerankers) -> None:
    response = rerankers.rerank(model="bge", query=QUERY, documents=DOCUMENTS, top_n=1,
                                max_tokens_per_doc=64)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [row["index"] for row in body["results"]] == [2]
    # Its own count of tokens, billed at the input price.
    tokens = sum(len(QUERY.split()) + len(text.split()) for text in DOCUMENTS)
    assert body["usage"] == {"total_tokens": tokens}
    sent = rerankers.vllm.script.requests[-1]
    assert sent == {"model": "BAAI/bge-reranker-v2-m3", "query": QUERY, "documents": DOCUMENTS,
                    "top_n": 1}  # max_tokens_per_doc is Cohere's: not sent
    assert rerankers.vllm.script.headers[-1]["authorization"] == \
        f"Bearer {rerankers.vllm.api_key}"
    _, _, _, tokens_in, cost = _ledger(rerankers.server, response.headers["x-request-id"])
    assert (tokens_in, cost) == (tokens, pytest.approx(tokens / 1_000_000))


def test_a_failing_upstream_falls_back_to_the_next_member(rerankers: Rerankers) -> None:
    rerankers.cohere.script.actions.append(Action(status=500))
    response = rerankers.rerank(model="rerank", query=QUERY, documents=DOCUMENTS)
    assert response.status_code == 200, response.text
    assert (response.headers["x-aigw-deployment"], response.headers["x-aigw-attempts"]) == (
        "bge", "2")
    assert [row["index"] for row in response.json()["results"]] == [2, 1, 0]
    assert len(rerankers.cohere.script.requests) == 1  # it was tried first


def test_echo_ranks_offline_by_shared_words(rerankers: Rerankers) -> None:
    body = rerankers.rerank(model="local", query="Rain city", documents=DOCUMENTS).json()
    assert [(row["index"], row["relevance_score"]) for row in body["results"]] == [
        (2, 1.0), (1, 0.5), (0, 0.0)]  # "rainy" is not "rain"
    tied = rerankers.rerank(model="local", query="city", documents=DOCUMENTS, top_n=2).json()
    assert [row["index"] for row in tied["results"]] == [1, 2]  # in the documents' order


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"documents": []}, "documents", "'documents' must hold 1 to 1000 documents; it holds 0"),
    ({"documents": ["x"] * 1001}, "documents", "it holds 1001"),
    ({"top_n": 0}, "top_n", "'top_n' must be 1 to the number of documents (3); it is 0"),
    ({"top_n": 4}, "top_n", "it is 4"),
    ({"documents": ["a", {"title": "b"}]}, "documents[1]",
     "'documents[1]' must be a string or an object with a 'text' string"),
    ({"query": ""}, "query", "'query'"),
    ({"model": "chat"}, "model", "'chat' is a chat model; it does not serve rerank"),
    ({"model": "local", "query": "one two three four five six seven eight nine ten"}, "query",
     "echo-rerank takes a query of at most 8 tokens; this one has 10"),
])
def test_bad_requests_are_refused_naming_the_field(
    rerankers: Rerankers, body: dict[str, Any], param: str, words: str,
) -> None:
    response = rerankers.rerank(**{"model": "cohere", "query": QUERY, "documents": DOCUMENTS,
                                   **body})
    assert response.status_code in (400, 422), response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert words in error["message"]
    assert rerankers.cohere.script.requests == []  # refused before any call went out


def test_an_unknown_model_is_a_404_and_a_rerank_route_is_no_chat_model(
    rerankers: Rerankers,
) -> None:
    missing = rerankers.rerank(model="nope", query=QUERY, documents=DOCUMENTS)
    assert missing.status_code == 404
    assert missing.json()["error"]["param"] == "model"
    with pytest.raises(openai.BadRequestError) as refused:
        rerankers.client.chat.completions.create(
            model="cohere", messages=[{"role": "user", "content": "hi"}])
    assert "cohere-rerank is a rerank model" in str(refused.value)
    with pytest.raises(openai.BadRequestError) as embedded:
        rerankers.client.embeddings.create(model="cohere", input="hi")
    assert "'cohere' is a rerank model; it does not serve embeddings" in str(embedded.value)
