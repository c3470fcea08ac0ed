"""POST /v1/files through the app: an upload is written once, into files_dir as it
arrives, and one refused, cut off or oversized leaves nothing there."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from aigw.runtime.app import create_app
from aigw.runtime.batches.runner import FileBytes
from aigw.runtime.errors import PayloadTooLarge
from aigw.runtime.live import Gateway

from ..conftest import DEV_KEY, app_client

_PIECE = b'{"custom_id": "x"}\n' * 3449  # 65,531 bytes, sent again and again


async def _upload(client: httpx.AsyncClient, pieces: int, purpose: str = "batch",
                  before_tail: Callable[[], None] = lambda: None,
                  length: int | None = None) -> httpx.Response:
    """POST /v1/files of ``pieces`` copies of ``_PIECE``, streamed as a client sends it
    (its Content-Length up front, ``length`` if given), ``purpose`` after the file;
    ``before_tail`` is called once the file's bytes are sent, before the form's end."""
    head = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n"
            b"Content-Type: application/jsonl\r\n\r\n")
    tail = (b"\r\n--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
            + purpose.encode() + b"\r\n--b--\r\n")

    async def body() -> AsyncIterator[bytes]:
        yield head
        for _ in range(pieces):
            yield _PIECE
        before_tail()
        yield tail

    sent = len(head) + pieces * len(_PIECE) + len(tail)
    return await client.post("/v1/files", content=body(), headers={
        "content-type": "multipart/form-data; boundary=b",
        "content-length": str(sent if length is None else length)})


def _files_in(gateway: Gateway) -> list[str]:
    folder = gateway.root / gateway.live.graph.settings.files_dir
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


async def test_an_upload_is_written_to_disk_without_being_held_in_memory(
        gateway: Gateway) -> None:
    """An upload was read whole into memory before it was written (up to files_max_bytes,
    200 MB, per upload at once): it is copied to files_dir a chunk at a time."""
    pieces = 480  # 31 MB
    async with app_client(gateway) as client:
        tracemalloc.start()
        try:
            response = await _upload(client, pieces)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert response.status_code == 200, response.text
    assert response.json()["bytes"] == pieces * len(_PIECE)
    assert _files_in(gateway) == [response.json()["id"]]
    assert peak < 8 << 20, peak  # a few chunks, not the 31 MB


async def test_an_upload_is_written_once_straight_into_files_dir(gateway: Gateway) -> None:
    """An upload was spooled whole (to memory, then a temporary file), then copied into
    files_dir: written twice. Its bytes reach files_dir, under a temporary name, as they
    arrive; it is renamed once the form is whole and its fields are checked, and an
    upload refused on the way (its purpose, past files_max_bytes) leaves nothing."""
    config = gateway.root / "gateway.yaml"
    config.write_text(config.read_text().replace("settings:\n", "settings:\n"
                                                 "  files_max_bytes: 4194304\n", 1))
    assert (await gateway.reload("test")).ok
    folder = gateway.root / gateway.live.graph.settings.files_dir
    arrived: list[int] = []

    def look() -> None:  # the file's bytes are sent, the form's end not yet
        arrived.extend(path.stat().st_size for path in folder.glob(".file-*.part"))

    async with app_client(gateway) as client:
        response = await _upload(client, 40, before_tail=look)
        assert response.status_code == 200, response.text
        assert arrived and arrived[0] >= 39 * len(_PIECE), arrived  # written as it came
        assert _files_in(gateway) == [response.json()["id"]]
        refused = await _upload(client, 3, purpose="fine-tune", before_tail=look)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "purpose"
        assert _files_in(gateway) == [response.json()["id"]]  # its part was removed
        over = await _upload(client, 4194304 // len(_PIECE) + 1, length=1000)  # it lied
        assert over.status_code == 413, over.text
        assert _files_in(gateway) == [response.json()["id"]]


def _part(name: str, value: bytes, filename: str | None = None) -> bytes:
    named = f'name="{name}"' + ("" if filename is None else f'; filename="{filename}"')
    return f"--b\r\nContent-Disposition: form-data; {named}\r\n\r\n".encode() + value + b"\r\n"


_PURPOSE = _part("purpose", b"batch")


@pytest.mark.parametrize(("form", "param", "message"), [
    (_PURPOSE + b"--b--\r\n", "file", "Missing required parameter: 'file'."),
    (_PURPOSE + _part("upload", b"{}", "a.jsonl") + b"--b--\r\n", "upload",
     "A file was sent as 'upload'; the upload goes in 'file'."),
    (_PURPOSE + _part("file", b"{}", "a") + _part("file", b"{}", "b") + b"--b--\r\n",
     "file", "The upload has more than one file."),
    (b"".join(_part(f"f{n}", b"x") for n in range(9)) + b"--b--\r\n", None,
     "The upload has more than 8 fields."),
    (_PURPOSE + _part("file", b"{}", "a") + b"--b\r\nno colon\r\n\r\n", None,
     "The multipart body cannot be read"),
])
async def test_a_refused_form_is_a_400_that_leaves_nothing(
        client: httpx.AsyncClient, gateway: Gateway, form: bytes, param: str | None,
        message: str) -> None:
    response = await client.post("/v1/files", content=form, headers={
        "content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith(message)
    assert response.json()["error"]["param"] == param
    assert _files_in(gateway) == []


async def test_an_upload_cut_short_is_a_400_that_says_so(
        client: httpx.AsyncClient, gateway: Gateway) -> None:
    """python-multipart's finalize() does not check the form was whole: a file whose body
    ended inside it was stored as a whole one (its purpose sent first), and one cut before
    its part began was 'Missing required parameter: file'."""
    whole = _PURPOSE + _part("file", b'{"custom_id": "a"}\n{"custom_id": "b"}', "a.jsonl")
    short = "The upload was cut short: its multipart body ends before its closing boundary"
    for form in (whole, whole[:-20], _PURPOSE):
        response = await client.post("/v1/files", content=form, headers={
            "content-type": "multipart/form-data; boundary=b"})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["message"] == f"{short} ('--b--').", form
        assert response.json()["error"]["param"] == "file"
    stopped = await _upload(client, 2, length=3 * len(_PIECE))  # it promised more than it sent
    assert stopped.status_code == 400, stopped.text
    assert stopped.json()["error"]["message"].startswith(
        "The upload was cut short: its body ended after 131239 of the 196593 bytes")
    assert _files_in(gateway) == []


async def _cut_upload(gateway: Gateway, pieces: int) -> list[dict[str, Any]]:
    """An upload whose client goes (``http.disconnect``) after ``pieces`` of its file, sent
    to the app as a server does; what the app sent back."""
    head = (b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n")
    messages = [{"type": "http.request", "body": head, "more_body": True},
                *({"type": "http.request", "body": _PIECE, "more_body": True}
                  for _ in range(pieces)), {"type": "http.disconnect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if len(messages) > 1 else messages[0]

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/files", "raw_path": b"/v1/files",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("aigw.test", 80), "headers": [
                 (b"authorization", f"Bearer {DEV_KEY}".encode()),
                 (b"content-type", b"multipart/form-data; boundary=b"),
                 (b"content-length", str(len(head) + 40 * len(_PIECE)).encode())]}
    await create_app(gateway)(scope, receive, send)
    return sent


async def test_a_failed_upload_leaves_no_file(gateway: Gateway, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    sent = await _cut_upload(gateway, 20)  # the client went before the end
    assert _files_in(gateway) == [] and "unhandled error" not in caplog.text
    assert sent[0]["status"] == 400  # the client's doing, not the gateway's (it was a 500)
    assert b"The upload was cut short: the client closed the connection" in sent[1]["body"]
    files = FileBytes(anyio.Path(tmp_path / "files"))

    async def gone() -> AsyncIterator[bytes]:
        yield _PIECE
        raise OSError("the spool could not be read")

    with pytest.raises(OSError):
        await files.write_chunks("file-a", gone(), 1 << 20)
    with pytest.raises(PayloadTooLarge):
        await files.write_chunks("file-b", _pieces(3), 2 * len(_PIECE))
    assert list((tmp_path / "files").iterdir()) == []
    assert await files.write_chunks("file-c", _pieces(2), 2 * len(_PIECE)) == 2 * len(_PIECE)
    assert [path.name for path in (tmp_path / "files").iterdir()] == ["file-c"]


async def _pieces(count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield _PIECE
