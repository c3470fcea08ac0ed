"""Hot reload in-process: a good config is swapped in, a broken one never replaces the graph."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx

from aigw.runtime.app import create_app
from aigw.runtime.live import Gateway

CHAT = "/v1/chat/completions"
MESSAGE = {"role": "user", "content": "hi"}


def _add_route(gateway_dir: Path, name: str) -> None:
    config = gateway_dir / "gateway.yaml"
    config.write_text(
        config.read_text().replace(
            "routes:                           # the model names apps send\n",
            f"routes:                           # the model names apps send\n"
            f"  {name}: {{deployment: echo-large}}\n",
        )
    )


async def test_reload_swaps_in_the_new_graph(
    client: httpx.AsyncClient, gateway: Gateway, gateway_dir: Path
) -> None:
    old = gateway.live.graph.fingerprint
    missing = await client.post(CHAT, json={"model": "brand-new", "messages": [MESSAGE]})
    assert missing.status_code == 404
    _add_route(gateway_dir, "brand-new")

    response = await client.post("/admin/reload")

    assert response.status_code == 200
    report = response.json()
    assert report["ok"] is True
    assert report["fingerprint"] != old
    served = await client.post(CHAT, json={"model": "brand-new", "messages": [MESSAGE]})
    assert served.status_code == 200
    assert served.headers["x-aigw-graph"] == report["fingerprint"]


async def test_broken_config_keeps_the_old_graph_and_reports_why(
    client: httpx.AsyncClient, gateway: Gateway, gateway_dir: Path
) -> None:
    old = gateway.live.graph.fingerprint
    config = gateway_dir / "gateway.yaml"
    config.write_text(config.read_text().replace("provider: local", "provider: lcoal", 1))

    response = await client.post("/admin/reload")

    assert response.status_code == 422
    report = response.json()
    assert report["ok"] is False
    assert [d["code"] for d in report["diagnostics"] if d["severity"] == "error"] == ["AGW301"]
    assert gateway.live.graph.fingerprint == old
    still = await client.post(CHAT, json={"model": "fast", "messages": [MESSAGE]})
    assert still.status_code == 200
    assert still.headers["x-aigw-graph"] == old
    status = (await client.get("/admin/status")).json()
    assert status["last_reload"]["ok"] is False
    assert status["last_reload"]["diagnostics"][0]["message"].startswith("deployment 'echo-small'")


async def test_a_request_keeps_the_graph_it_started_with(
    gateway: Gateway, gateway_dir: Path
) -> None:
    config = gateway_dir / "gateway.yaml"
    config.write_text(
        config.read_text().replace(
            "local: {type: echo}", "local: {type: echo, latency: {per_token_ms: 40}}"
        )
    )
    await gateway.reload("test")
    slow_graph = gateway.live.graph.fingerprint
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://aigw.test",
        headers={"Authorization": "Bearer sk-aigw-dev"},
    ) as http:
        payload = {
            "model": "fast",
            "stream": True,
            "messages": [{"role": "user", "content": "one two three four five"}],
        }
        async with http.stream("POST", CHAT, json=payload) as response:
            stream = response.aiter_text()
            first = await anext(stream)
            _add_route(gateway_dir, "later")
            report = await gateway.reload("test")
            rest = "".join([part async for part in stream])
        assert report.ok and report.fingerprint != slow_graph
        assert response.headers["x-aigw-graph"] == slow_graph
        assert (first + rest).rstrip().endswith("data: [DONE]")
        assert '"five"' in first + rest


async def test_a_reload_says_which_changed_settings_wait_for_a_restart(
    client: httpx.AsyncClient, gateway: Gateway, gateway_dir: Path
) -> None:
    config = gateway_dir / "gateway.yaml"
    config.write_text(config.read_text().replace(
        "  max_request_bytes: 4194304\n",
        "  max_request_bytes: 2097152\n  cache_max_entries: 5\n  store_failure: fail_open\n"
        "  execution_lease_s: 90\n  log_level: error\n  files_dir: elsewhere\n"
        "  batches_concurrency: 2\n  batch_concurrency: 2\n"))
    level = logging.getLogger("aigw").level
    try:
        report = (await client.post("/admin/reload")).json()
        reloaded_level = logging.getLogger("aigw").level
    finally:  # the logger is the process's: later tests log as before
        logging.getLogger("aigw").setLevel(level)
    assert report["ok"] is True
    # The store and its cache were opened with the first graph's, the pipeline runner
    # started with its lease, the batch runner with its folder and slots (a batch's own
    # concurrency is read as it starts); the request limit is read per request, so it
    # applies now, as does the log level (it was set once, at start, and a reload said
    # nothing).
    assert report["restart_needed"] == ["store_failure", "cache_max_entries",
                                        "execution_lease_s", "files_dir",
                                        "batches_concurrency"]
    assert gateway.live.graph.settings.max_request_bytes == 2097152
    assert reloaded_level == logging.ERROR


def _series(text: str, name: str) -> dict[str, float]:
    """The samples of ``name`` in a scrape, by their label text."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line[len(name):].rpartition(" ")
            found[labels] = float(value)
    return found


async def test_reloads_and_the_graph_served_are_in_the_metrics(
    client: httpx.AsyncClient, gateway: Gateway, gateway_dir: Path
) -> None:
    """A failed reload was in the log and /admin/status only (of whichever worker
    answered): nothing to alert on, and no way to see workers serving different graphs."""
    first = gateway.live.graph.fingerprint
    config = gateway_dir / "gateway.yaml"
    good = config.read_text()
    config.write_text(good.replace("provider: local", "provider: lcoal", 1))
    assert (await client.post("/admin/reload")).status_code == 422
    config.write_text(good)
    _add_route(gateway_dir, "brand-new")
    new = (await client.post("/admin/reload")).json()["fingerprint"]
    text = (await client.get("/metrics")).text
    assert _series(text, "aigw_config_reloads_total") == {
        '{outcome="failed"}': 1.0, '{outcome="ok"}': 1.0}
    assert _series(text, "aigw_graph_info") == {f'{{fingerprint="{new}"}}': 1.0}
    assert new != first
    assert _series(text, "aigw_config_last_reload_success_timestamp_seconds")[""] > 0
