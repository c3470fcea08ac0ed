"""Limits, budgets and the ledger with real gateway processes, on both stores.

One currency unit per token (price 1e6 per million), so costs are token counts: a
request for "hi" is 7 prompt tokens, holds 7 + 3 (max_tokens) = 10 and costs 8.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from aigw.compiler.keys import shown_moment

from ..conftest import DEV_KEY
from ..redis_server import PrivateRedis
from .server import Server, free_port

pytestmark = pytest.mark.e2e

APP_KEY = "sk-app-0001"
HOLD, COST = 10, 8


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _gateway(root: Path, store: str, *, budget: float | None = None, tpm: int | None = None,
             latency: str = "", settings: str = "", max_parallel: int | None = None) -> Path:
    """With ``max_parallel``, key app has it, and a route ``broken`` goes to a server that
    is not there."""
    root.mkdir(parents=True, exist_ok=True)
    team = []
    if budget is not None:
        team.append(f"budget: {{amount: {budget}, period: total}}")
    if tpm is not None:
        team.append(f"limits: {{tpm: {tpm}}}")
    app_limits = broken_route = ""
    deployments = "deployments:"
    if max_parallel is not None:
        app_limits = f", limits: {{max_parallel: {max_parallel}}}"
        deployments = f"""  dead: {{type: vllm, base_url: "http://127.0.0.1:{free_port()}/v1"}}
deployments:
  broken: {{provider: dead, model: nobody-home, context_window: 8192}}"""
        broken_route = "\n  broken: {deployment: broken}"
    (root / "gateway.yaml").write_text(f"""
version: 1
settings:
  store: "{store}"
  reservation_ttl_s: 2
{settings}
providers:
  local: {{type: echo{latency}}}
{deployments}
  paid: {{provider: local, model: paid-1, context_window: 100000,
         price: {{input: 1000000, output: 1000000}}}}
routes:
  paid: {{deployment: paid}}{broken_route}
teams:
  app: {{{", ".join(team)}}}
  ops: {{}}
keys:
  app: {{team: app, sha256: {_digest(APP_KEY)}{app_limits}}}
  dev: {{team: ops, admin: true, sha256: {_digest(DEV_KEY)}}}
""")
    return root


def _admin(server: Server, path: str) -> dict[str, object]:
    response = httpx.get(f"{server.base_url}{path}", headers={"Authorization": f"Bearer {DEV_KEY}"})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _team_budget(server: Server) -> dict[str, float]:
    rows = _admin(server, "/admin/budgets")["data"]
    assert isinstance(rows, list)
    return next(row for row in rows if row["name"] == "app")


async def _burst(servers: list[Server], count: int) -> list[int]:
    """``count`` requests at once, spread over ``servers``; their status codes."""
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=count)) as http:
        async def one(index: int) -> int:
            server = servers[index % len(servers)]
            response = await http.post(
                f"{server.base_url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {APP_KEY}"},
                json={"model": "paid", "max_tokens": 3,
                      "messages": [{"role": "user", "content": "hi"}]},
            )
            return response.status_code
        return list(await asyncio.gather(*(one(i) for i in range(count))))


@pytest.fixture
def fleet() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def _start(stack: ExitStack, root: Path) -> Server:
    server = Server(root)
    stack.callback(server.stop)
    server.wait_ready()
    return server


@pytest.mark.parametrize("store", ["embedded", "redis"])
def test_200_concurrent_requests_never_overspend_the_budget(
    tmp_path: Path, fleet: ExitStack, private_redis: PrivateRedis, store: str
) -> None:
    budget = 8 * COST
    if store == "embedded":
        servers = [_start(fleet, _gateway(tmp_path / "gw", "embedded", budget=budget))]
    else:  # two replicas sharing one Redis
        servers = [
            _start(fleet, _gateway(tmp_path / f"gw{i}", private_redis.url, budget=budget))
            for i in range(2)
        ]
    statuses = asyncio.run(_burst(servers, 200))
    served = statuses.count(200)
    assert set(statuses) <= {200, 429}
    spent = _team_budget(servers[0])
    assert spent["spent"] == served * COST
    assert spent["spent"] <= budget + HOLD  # never more than one reservation over
    assert served >= budget // HOLD  # and the budget was actually used
    assert spent["held"] == 0
    ledger = _admin(servers[-1], "/admin/spend?group_by=key")["data"]
    assert isinstance(ledger, list)
    app_rows = [row for row in ledger if row["key"] == "app"]
    if store == "redis":  # one ledger shared by both replicas
        assert app_rows[0]["requests"] == 200 and app_rows[0]["cost"] == served * COST


def test_a_tpm_limit_shared_by_three_gateways_holds_as_one(
    tmp_path: Path, fleet: ExitStack, private_redis: PrivateRedis
) -> None:
    tpm = 60  # 6 holds of 10 tokens; refills 1 token a second
    servers = [
        _start(fleet, _gateway(tmp_path / f"gw{i}", private_redis.url, tpm=tpm))
        for i in range(3)
    ]
    started = time.monotonic()
    statuses = asyncio.run(_burst(servers, 30))
    elapsed = time.monotonic() - started
    served = statuses.count(200)
    # One limit: 60 tokens plus what refilled meanwhile; three limits would allow ~18.
    assert 6 <= served <= (tpm + elapsed * tpm / 60) // HOLD + 1, (served, elapsed)
    assert statuses.count(429) == 30 - served


def _crash_mid_streams(server: Server) -> list[Any]:
    """Three settled requests, three streams holding their reservations, then kill -9."""
    server.wait_ready()
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=APP_KEY, max_retries=0)
    for _ in range(3):  # settled before the crash
        client.chat.completions.create(model="paid", max_tokens=3,
                                       messages=[{"role": "user", "content": "hi"}])
    streams = [
        client.chat.completions.create(
            model="paid", stream=True, max_tokens=100,
            messages=[{"role": "user", "content": " ".join(f"w{i}" for i in range(40))}])
        for _ in range(3)
    ]
    for stream in streams:
        next(iter(stream))  # each stream has started and holds its reservation
    assert _team_budget(server)["held"] > 0
    server.kill()
    return streams


@pytest.mark.parametrize("store", ["embedded", "redis"])
def test_kill_9_mid_stream_loses_no_settled_record_and_leaks_no_hold(
    tmp_path: Path, private_redis: PrivateRedis, store: str
) -> None:
    url = "embedded" if store == "embedded" else private_redis.url
    root = _gateway(tmp_path / "gw", url, budget=10_000,
                    latency=", latency: {per_token_ms: 200}")
    server = Server(root)
    try:
        streams = _crash_mid_streams(server)
    finally:
        server.stop()  # a no-op after the kill; stops it if the test failed before

    restarted = Server(root, port=server.port)
    try:
        restarted.wait_ready()
        ledger = _admin(restarted, "/admin/spend?group_by=key")["data"]
        assert isinstance(ledger, list)
        app = next(row for row in ledger if row["key"] == "app")
        assert app["requests"] >= 3 and app["cost"] >= 3 * COST  # the settled ones survived
        deadline = time.monotonic() + 15
        while _team_budget(restarted)["held"] > 0:  # the crashed holds expire (TTL 2 s)
            assert time.monotonic() < deadline, "a reservation leaked"
            time.sleep(0.2)
        assert _team_budget(restarted)["spent"] == app["cost"]
    finally:
        restarted.stop()
        for stream in streams:
            stream.close()


@pytest.mark.parametrize("mode", ["fail_closed", "fail_open"])
def test_redis_outage_follows_the_configured_fail_mode(
    tmp_path: Path, fleet: ExitStack, private_redis: PrivateRedis, mode: str
) -> None:
    root = _gateway(tmp_path / "gw", private_redis.url, tpm=100_000,
                    settings=f"  store_failure: {mode}")
    server = _start(fleet, root)

    def ask() -> int:
        return httpx.post(f"{server.base_url}/v1/chat/completions",
                          headers={"Authorization": f"Bearer {APP_KEY}"}, timeout=30,
                          json={"model": "paid", "max_tokens": 3,
                                "messages": [{"role": "user", "content": "hi"}]}).status_code

    assert ask() == 200
    private_redis.stop()
    during = [ask() for _ in range(5)]
    if mode == "fail_closed":
        assert during == [503] * 5
    else:
        assert during == [200] * 5
    private_redis.start_on_same_port()
    deadline = time.monotonic() + 20
    while ask() != 200:
        assert time.monotonic() < deadline, server.log
        time.sleep(0.2)
    assert server.process.poll() is None  # nothing crashed
    assert "Traceback" not in server.log


def test_a_stream_the_client_abandons_is_settled_for_what_was_sent(
    tmp_path: Path, fleet: ExitStack
) -> None:
    root = _gateway(tmp_path / "gw", "embedded", budget=10_000,
                    latency=", latency: {per_token_ms: 100}")
    server = _start(fleet, root)
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=APP_KEY, max_retries=0)
    words = " ".join(f"w{i}" for i in range(40))
    stream = client.chat.completions.create(
        model="paid", stream=True, max_tokens=100,
        messages=[{"role": "user", "content": words}])
    chunks = iter(stream)
    for _ in range(4):
        next(chunks)
    stream.close()  # the app goes away mid-answer
    deadline = time.monotonic() + 15
    while True:
        rows = _admin(server, "/admin/spend?group_by=key")["data"]
        assert isinstance(rows, list)
        app = next((row for row in rows if row["key"] == "app"), None)
        if app is not None:
            break
        assert time.monotonic() < deadline, server.log
        time.sleep(0.1)
    budget = _team_budget(server)
    assert budget["held"] == 0
    full = 80  # the whole answer: 40 words of 2 tokens each
    assert 0 < app["tokens_out"] < full
    assert budget["spent"] == app["cost"] == app["tokens_in"] + app["tokens_out"]


_WORDS = " ".join(f"w{i}" for i in range(80))


def _stream(server: Server) -> tuple[Iterator[Any], list[Any]]:
    """A long stream of key app's, started: its chunks to come and the three received."""
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=APP_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="paid", stream=True, max_tokens=200,
        messages=[{"role": "user", "content": _WORDS}])
    chunks = iter(stream)
    return chunks, [next(chunks) for _ in range(3)]


def _reload(server: Server, root: Path, old: str, new: str) -> None:
    config = root / "gateway.yaml"
    config.write_text(config.read_text().replace(old, new))
    reloaded = httpx.post(f"{server.base_url}/admin/reload",
                          headers={"Authorization": f"Bearer {DEV_KEY}"}, timeout=30)
    assert reloaded.status_code == 200, reloaded.text


def _text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _stopped_by_reload(
    tmp_path: Path, fleet: ExitStack, old: str, new: str
) -> tuple[Server, openai.APIError, list[Any]]:
    """A stream on a gateway that stops streams over budget, and a reload (``old`` made
    ``new`` in its config) mid-stream: the error that stopped it and what came first."""
    root = _gateway(tmp_path / "gw", "embedded", budget=10_000,
                    latency=", latency: {per_token_ms: 40}",
                    settings="  stop_streams_over_budget: true")
    server = _start(fleet, root)
    chunks, received = _stream(server)
    _reload(server, root, old, new)
    with pytest.raises(openai.APIError) as stopped:
        for chunk in chunks:
            received.append(chunk)
    return server, stopped.value, received


def test_a_budget_cut_by_reload_stops_streams_mid_flight(
    tmp_path: Path, fleet: ExitStack
) -> None:
    server, stopped, received = _stopped_by_reload(tmp_path, fleet, "amount: 10000",
                                                   "amount: 5")
    assert "budget" in str(stopped).lower()
    assert 0 < len(_text(received)) < len(_WORDS)  # cut mid-answer
    metrics = httpx.get(f"{server.base_url}/metrics").text  # BudgetExhausted reads it
    assert 'aigw_budget_refusals_total{name="app",scope="team"} 1.0' in metrics


def test_a_key_revoked_by_reload_stops_its_streams_saying_so(
    tmp_path: Path, fleet: ExitStack
) -> None:
    """Its stream was stopped with "The budget ran out during this stream"."""
    _server, stopped, received = _stopped_by_reload(
        tmp_path, fleet, f"  app: {{team: app, sha256: {_digest(APP_KEY)}}}\n", "")
    assert "revoked" in str(stopped), stopped
    assert "budget" not in str(stopped).lower()
    assert 0 < len(_text(received)) < len(_WORDS)


def test_a_stream_begun_before_its_keys_expiry_goes_to_its_end_billed_to_the_key(
    tmp_path: Path, fleet: ExitStack
) -> None:
    """A key is checked when its request starts, as OpenAI checks one: a stream that its
    key's ``expires`` passes goes on to its end (its budget checks, which stop a revoked
    key's streams, do not stop it), and is billed to the key; the next request is a 401."""
    root = _gateway(tmp_path / "gw", "embedded", budget=10_000,
                    latency=", latency: {per_token_ms: 60}",
                    settings="  stop_streams_over_budget: true")
    server = _start(fleet, root)
    expires = int(time.time()) + 5
    _reload(server, root, f"sha256: {_digest(APP_KEY)}",
            f"sha256: {_digest(APP_KEY)}, expires: '{shown_moment(expires)}'")
    chunks, received = _stream(server)  # about ten seconds of answer, begun before expiry
    late = 0
    for chunk in chunks:
        received.append(chunk)
        late += time.time() > expires + 0.5
    assert late > 16  # the server sent on past the expiry (and checked the budget there)
    assert _text(received).split() == _WORDS.split()
    assert received[-1].choices == [] or received[-1].choices[0].finish_reason == "stop"
    deadline = time.monotonic() + 10
    while not (rows := _admin(server, "/admin/spend?group_by=key")["data"]):
        assert time.monotonic() < deadline, server.log
        time.sleep(0.1)
    assert isinstance(rows, list)
    [app] = rows
    assert (app["key"], app["requests"], app["errors"]) == ("app", 1, 0)
    assert app["tokens_out"] == 160  # the whole answer: 80 words of 2 tokens each
    budget = _team_budget(server)
    assert (budget["spent"], budget["held"]) == (app["cost"], 0)
    assert app["cost"] == app["tokens_in"] + app["tokens_out"]
    with pytest.raises(openai.AuthenticationError) as expired:
        _ask(_client(server, APP_KEY))
    assert expired.value.body["code"] == "key_expired"  # type: ignore[index]


def test_a_redis_outage_mid_stream_leaves_streams_in_flight_alone(
    tmp_path: Path, fleet: ExitStack, private_redis: PrivateRedis
) -> None:
    """fail_closed refuses new requests while Redis is down; a stream already admitted
    goes on and settles through the outbox. Its budget check, which found the store
    unavailable, cut it with a store_unavailable error event."""
    root = _gateway(tmp_path / "gw", private_redis.url, budget=10_000,
                    latency=", latency: {per_token_ms: 20}",
                    settings="  stop_streams_over_budget: true\n  store_failure: fail_closed")
    server = _start(fleet, root)
    chunks, received = _stream(server)
    private_redis.stop()
    received += list(chunks)  # to its end, with no error event
    assert received[-1].choices == [] or received[-1].choices[0].finish_reason is not None
    assert _text(received).split() == _WORDS.split()
    refused = httpx.post(f"{server.base_url}/v1/chat/completions",
                         headers={"Authorization": f"Bearer {APP_KEY}"}, timeout=30,
                         json={"model": "paid", "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 503  # new requests are refused (fail_closed)
    assert server.log.count("go on without their budget checks") == 1  # once, not a chunk


def _held_stream(client: openai.OpenAI) -> openai.Stream[Any]:
    """A stream of key app's that runs for about seven seconds, its first chunk read (it
    holds its place from before its first chunk to after its last)."""
    stream = client.chat.completions.create(
        model="paid", stream=True, max_tokens=200,
        messages=[{"role": "user", "content": _WORDS}])
    next(iter(stream))
    return stream


def _ask(client: openai.OpenAI, model: str = "paid") -> None:
    client.chat.completions.create(model=model, max_tokens=3,
                                   messages=[{"role": "user", "content": "hi"}])


def _until_served(client: openai.OpenAI) -> None:
    """Until a request is served: a place is given back as the gateway sees its request
    end, which may be a moment after its client has; within two seconds, less than what
    is left of any stream or call the test has left to run."""
    deadline = time.monotonic() + 2
    while True:
        try:
            return _ask(client)
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "a place under max_parallel was never freed"
            time.sleep(0.1)


@pytest.mark.parametrize("store", ["embedded", "redis"])
def test_max_parallel_holds_a_place_from_a_requests_start_to_its_end(
    tmp_path: Path, fleet: ExitStack, private_redis: PrivateRedis, store: str
) -> None:
    """A key with max_parallel: 2: a third request while two streams run is a 429
    naming the limit; a place is given back when a stream ends, when its client leaves
    (a stream, or a call that timed out), and when a call fails. On Redis the two places
    are shared by both replicas."""
    latency = ", latency: {per_token_ms: 30}"
    if store == "embedded":
        servers = [_start(fleet, _gateway(tmp_path / "gw", "embedded", latency=latency,
                                          max_parallel=2))]
    else:
        servers = [_start(fleet, _gateway(tmp_path / f"gw{i}", private_redis.url,
                                          latency=latency, max_parallel=2))
                   for i in range(2)]
    clients = [openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=APP_KEY, max_retries=0)
               for server in servers]
    first, second = _held_stream(clients[0]), _held_stream(clients[-1])
    with pytest.raises(openai.RateLimitError) as refused:
        _ask(clients[0])
    assert refused.value.status_code == 429
    assert refused.value.body == {
        "message": "Concurrency limit reached for key 'app' on requests in flight "
                   "(max_parallel): Limit 2, In flight 2. Try again when one of them has ended.",
        "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}
    assert refused.value.response.headers["retry-after"] == "1"

    first.close()  # its client leaves mid-stream
    _until_served(clients[0])
    third = _held_stream(clients[0])
    with pytest.raises(openai.RateLimitError):
        _ask(clients[-1])
    assert list(second)  # to its end
    _until_served(clients[-1])
    assert list(third)
    for _ in range(3):  # more failed calls than places
        with pytest.raises(openai.APIStatusError) as failed:
            _ask(clients[0], "broken")
        assert failed.value.status_code >= 500
    fourth = _held_stream(clients[0])  # the failed calls left both places free
    with pytest.raises(openai.APITimeoutError):  # a call whose client stops waiting
        clients[-1].with_options(timeout=0.5).chat.completions.create(
            model="paid", max_tokens=200, messages=[{"role": "user", "content": _WORDS}])
    _until_served(clients[-1])  # its answer would take five seconds more
    fourth.close()


OLD_APP_KEY = "sk-app-0000"


def _client(server: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)


def test_a_rotation_added_by_reload_takes_both_secrets_as_one_key_until_the_old_ones_until(
    tmp_path: Path, fleet: ExitStack
) -> None:
    """Key app gets its earlier secret back under previous: by a reload. Either secret is
    key app: one max_parallel place between them, one name in the ledger. Past its
    until, the old secret is refused with no reload, and the new one goes on."""
    root = _gateway(tmp_path / "gw", "embedded", latency=", latency: {per_token_ms: 30}",
                    max_parallel=1)
    server = _start(fleet, root)
    new, old = _client(server, APP_KEY), _client(server, OLD_APP_KEY)
    with pytest.raises(openai.AuthenticationError):
        _ask(old)
    until = int(time.time()) + 15
    _reload(server, root, "limits: {max_parallel: 1}",
            f"limits: {{max_parallel: 1}}, previous: [{{sha256: {_digest(OLD_APP_KEY)}, "
            f"until: '{shown_moment(until)}'}}]")

    held = _held_stream(old)  # the old secret holds key app's one place
    with pytest.raises(openai.RateLimitError) as refused:
        _ask(new)
    assert "for key 'app'" in refused.value.message
    held.close()
    _until_served(new)
    _ask(old)
    ledger = _admin(server, "/admin/spend?group_by=key")["data"]
    assert isinstance(ledger, list) and [row["key"] for row in ledger] == ["app"]
    graph = _admin(server, "/admin/status")["graph"]
    assert isinstance(graph, dict)
    assert graph["keys"]["app"] == {
        "team": "app", "admin": False, "routes": None, "mcp_servers": None,
        "passthrough": None,
        "expires_at": None, "expired": False,
        "previous": [{"until": shown_moment(until), "refused": False}]}

    time.sleep(max(0.0, until - time.time()) + 0.2)
    with pytest.raises(openai.AuthenticationError) as retired:
        _ask(old)
    assert retired.value.body == {
        "message": f"This API key was replaced; the key 'app' stopped accepting it at "
                   f"{shown_moment(until)}.",
        "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
    _ask(new)


def test_a_key_past_its_expiry_is_refused_401_key_expired_without_a_reload(
    tmp_path: Path, fleet: ExitStack
) -> None:
    root = _gateway(tmp_path / "gw", "embedded")
    server = _start(fleet, root)
    expires = int(time.time()) + 4
    _reload(server, root, f"sha256: {_digest(APP_KEY)}",
            f"sha256: {_digest(APP_KEY)}, expires: '{shown_moment(expires)}'")
    client = _client(server, APP_KEY)
    _ask(client)
    graph = _admin(server, "/admin/status")["graph"]
    assert isinstance(graph, dict)
    assert graph["keys"]["app"] == {
        "team": "app", "admin": False, "routes": None, "mcp_servers": None,
        "passthrough": None,
        "expires_at": shown_moment(expires), "expired": False, "previous": []}
    assert [item["code"] for item in graph["warnings"]] == ["AGW348"]  # within 7 days

    time.sleep(max(0.0, expires - time.time()) + 0.2)
    with pytest.raises(openai.AuthenticationError) as expired:
        _ask(client)
    assert expired.value.status_code == 401
    assert expired.value.body == {
        "message": f"The API key 'app' expired at {shown_moment(expires)}.",
        "type": "invalid_request_error", "param": None, "code": "key_expired"}
    assert _admin(server, "/admin/status")["graph"]["keys"]["app"]["expired"] is True  # type: ignore[index]
    # The access log names the key whose client still sends it (the ledger has no record:
    # a refusal before admission costs nothing).
    # On /v1/messages (its own error handling) as on /v1/chat/completions.
    messages = httpx.post(f"{server.base_url}/v1/messages", headers={"x-api-key": APP_KEY},
                          json={"model": "paid", "max_tokens": 3,
                                "messages": [{"role": "user", "content": "hi"}]})
    assert messages.status_code == 401
    refused = [json.loads(line) for line in server.log.splitlines()
               if line.startswith("{") and '"key_expired"' in line]
    assert [(line["status"], line["key"], line["team"]) for line in refused] == [
        (401, "app", "app")] * 2
