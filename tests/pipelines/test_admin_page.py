"""GET /admin, the page for a person: who may see it, what it shows, and a decision on
a waiting approval made from it (with the cross-site check a browser form needs)."""

from __future__ import annotations

import asyncio
import base64
import html
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from aigw.compiler.keys import shown_moment
from aigw.runtime.app import create_app
from aigw.runtime.live import Gateway
from aigw.runtime.tokens import TokenCounter

from ..conftest import DEV_KEY, GUARD_TOKEN, OPS_EXPIRES, OPS_UNTIL, app_client
from .conftest import ALICE_KEY, Serve, Served

WAITS = """
input: {type: object}
steps:
  sign_off:
    kind: approval
    message: "Ship <b>{{ input.what }}</b>?"
    timeout_s: 60
    default: reject
output: "{{ steps.sign_off }}"
"""


def _browser(served: Served, key: str | None) -> httpx.AsyncClient:
    """A client without the fixture's bearer key: Basic credentials, as a browser sends."""
    headers = {}
    if key is not None:
        headers["authorization"] = "Basic " + base64.b64encode(f"ops:{key}".encode()).decode()
    app = create_app(served.gateway, served.workflows)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), headers=headers,
                             base_url="http://aigw.test")


async def test_only_an_admin_key_sees_the_page(serve: Serve) -> None:
    served = await serve({"ship": WAITS})
    async with _browser(served, None) as anonymous, _browser(served, ALICE_KEY) as alice, \
            _browser(served, "sk-wrong") as wrong:
        asked = await anonymous.get("/admin")
        assert asked.status_code == 401
        assert asked.headers["www-authenticate"].startswith('Basic realm="aigw admin"')
        assert (await wrong.get("/admin")).status_code == 401
        assert (await alice.get("/admin")).status_code == 403  # a key, not an admin key
        odd = await anonymous.get("/admin", headers={  # a UTF-8 password, as browsers send
            "authorization": "Basic " + base64.b64encode("ops:clé-ünïcode".encode()).decode()})
        assert odd.status_code == 401
    page = await served.http.get("/admin")  # Bearer works too
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    # Never inside another site's frame, where a decoy could trick a click on approve.
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["content-security-policy"] == "frame-ancestors 'none'"


async def test_the_page_shows_the_graph_routes_deployments_and_budgets(serve: Serve) -> None:
    served = await serve({"ship": WAITS})
    served.gateway.routing.of(served.gateway.live.graph.deployments["cheap"]).in_flight = 3
    async with _browser(served, DEV_KEY) as browser:
        text = (await browser.get("/admin")).text
    assert served.gateway.live.graph.fingerprint[:12] in text
    for name in ("fast", "smart", "cheap", "strong", "cheap-1"):
        assert f"<td>{name}</td>" in text
    assert re.search(r"<td>cheap</td>.*?<td>3</td>", text, re.S)  # in flight
    assert "Nothing is waiting." in text and "No executions yet." in text


async def test_an_approval_is_decided_from_the_page(serve: Serve) -> None:
    served = await serve({"ship": WAITS})
    started = await served.start("ship", {"what": "v2 <script>"})
    await served.wait_for(started["id"], lambda e: e["status"] == "waiting")
    async with _browser(served, DEV_KEY) as browser:
        text = (await browser.get("/admin")).text
        assert html.escape("Ship <b>v2 <script></b>?") in text  # escaped, never markup
        assert "<script>" not in text
        (action,) = re.findall(r'<form method="post" action="([^"]+)">', text)[:1]
        assert action == f"/admin/approvals/{started['id']}/sign_off"

        # A form posted from another site (or with no origin) is refused.
        for origin in ({"origin": "https://evil.test"}, {}):
            refused = await browser.post(action, data={"decision": "approve"}, headers=origin)
            assert refused.status_code == 403
        assert (await served.get(started["id"]))["status"] == "waiting"

        # Behind a proxy that terminates TLS, the page's origin is https.
        decided = await browser.post(action, data={"decision": "approve"},
                                     headers={"origin": "https://aigw.test"})
        assert decided.status_code == 303 and decided.headers["location"] == "/admin"
    done = await served.wait_for(started["id"], lambda e: e["status"] == "succeeded")
    assert done["output"]["approved"] is True and done["output"]["by"] == "dev"
    async with _browser(served, DEV_KEY) as browser:
        again = await browser.post(action, data={"decision": "reject"},
                                   headers={"referer": "http://aigw.test/admin"})
        assert again.status_code == 409  # already decided
        assert "Nothing is waiting." in (await browser.get("/admin")).text


async def _form(sent: list[int], chunks: int, size: int, pause: float) -> AsyncIterator[bytes]:
    yield b"decision=approve&comment="
    for number in range(chunks):
        sent.append(number)
        yield b"x" * size
        await asyncio.sleep(pause)


async def test_a_decision_form_is_read_within_its_bounds(serve: Serve) -> None:
    """The form was read to its end however slowly it came (a byte every few seconds
    held the request open for ever); now it has body_read_timeout_s to arrive, as every
    body has, and one past the form's bound is a 413 before the rest is read."""
    served = await serve({"ship": WAITS}, settings="  body_read_timeout_s: 0.3")
    started = await served.start("ship", {"what": "v2"})
    await served.wait_for(started["id"], lambda e: e["status"] == "waiting")
    action = f"/admin/approvals/{started['id']}/sign_off"
    form = {"origin": "http://aigw.test", "content-type": "application/x-www-form-urlencoded"}
    async with _browser(served, DEV_KEY) as browser:
        sent: list[int] = []
        slow = await browser.post(action, content=_form(sent, 50, 1, 0.05), headers=form)
        assert slow.status_code == 408, slow.text
        assert "body_read_timeout_s" in slow.text
        assert len(sent) < 20  # cut off at about 0.3 s, not read to its end
        sent = []
        large = await browser.post(action, content=_form(sent, 100, 10_000, 0), headers=form)
        assert large.status_code == 413, large.text
        assert len(sent) < 10  # 64 KiB is a form's bound
    assert (await served.get(started["id"]))["status"] == "waiting"


async def test_the_page_shows_routes_cache_and_guardrails_and_keys_expiring_soon(
    ops_dir: Path, counter: TokenCounter
) -> None:
    """Key ci-bot expires within the week: a notice at the top says so, and its row in
    the keys table is marked; its earlier secret is past its until."""
    gateway = Gateway(ops_dir, counter)
    try:
        async with app_client(gateway) as client:
            page = await client.get("/admin")
            text = page.text
            assert page.status_code == 200 and GUARD_TOKEN not in text
            assert re.search(r"<td>faq</td>.*?<td>600 s, key, by model, semantic via embed "
                             r"≥ 0.9</td>"
                             r"<td>secrets \(input: block\), pii \(input, output: redact\), "
                             r"checker \(output: log\)</td>", text, re.S)
            expires = _when(OPS_EXPIRES)
            assert _expiry_notice(text).startswith(f"ci-bot (expires {expires}). Rotate them")
            assert (f"<td>ci-bot</td><td>default</td><td></td>\n<td>all</td><td>docs</td>"
                    "<td>all</td>\n"
                    f'<td class="bad">{expires}</td><td>refused since {_when(OPS_UNTIL)}</td>'
                    ) in text
            assert ("<td>dev</td><td>default</td><td>yes</td>\n<td>all</td><td>all</td>"
                    "<td>all</td>\n"
                    '<td class="">never</td><td></td>') in text

            config = ops_dir / "gateway.yaml"  # a key past its expiry, still configured
            config.write_text(config.read_text().replace(
                f"expires: '{shown_moment(OPS_EXPIRES)}'", f"expires: '{shown_moment(OPS_UNTIL)}'"))
            assert (await gateway.reload("test")).ok
            text = (await client.get("/admin")).text
            assert _expiry_notice(text).startswith(f"ci-bot (expired {_when(OPS_UNTIL)}).")
    finally:
        await gateway.aclose()


def _expiry_notice(page: str) -> str:
    notice = re.search(r'<p class="bad">Keys expired or expiring within 7 days:\s*(.*?)</p>',
                       page, re.S)
    assert notice is not None
    return notice.group(1)


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


async def test_the_page_has_no_expiry_notice_when_no_key_expires_soon(
    client: httpx.AsyncClient,
) -> None:
    text = (await client.get("/admin")).text
    assert "<h2>Keys</h2>" in text and "expiring within 7 days" not in text
