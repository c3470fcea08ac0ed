"""Requests built to break the gateway get a 4xx or an answer, never a 500: numbers too
large for a float where the shipped Cedar policies read them, and bodies nested too
deep for a recursive parser (found by a review helper)."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from hashlib import sha256
from pathlib import Path

import httpx
import pytest

from aigw.runtime.app import create_app
from aigw.runtime.batches import batch_doc
from aigw.runtime.batches.input import Checked
from aigw.runtime.live import Gateway
from aigw.runtime.store.batches import FileRow
from aigw.runtime.tokens import TokenCounter

from ..conftest import DEV_KEY, app_client
from ..fakes.openai_fake import OpenAIFake
from ..providers.conftest import dev_key_line

HUGE = "9" * 400


async def test_a_number_too_large_for_a_float_reaches_cedar_clamped(
    client: httpx.AsyncClient,
) -> None:
    """The shipped routing policies read the latency SLA and max_tokens: float() of a
    400-digit int raised OverflowError while the Cedar context was encoded."""
    chat = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    sla = await client.post("/v1/chat/completions", json=chat,
                            headers={"x-aigw-latency-sla-ms": HUGE})
    assert sla.status_code == 200, sla.text
    capped = await client.post("/v1/chat/completions", json={**chat, "max_tokens": int(HUGE)})
    assert capped.status_code == 400, capped.text  # more than any member writes
    assert capped.json()["error"]["param"] == "max_tokens"


async def test_a_body_nested_too_deep_is_a_400(client: httpx.AsyncClient) -> None:
    deep = b"[" * 40_000 + b"]" * 40_000  # fewer than max_request_json_containers
    for path in ("/api/v1/executions", "/v1/pipelines/research", "/route"):
        response = await client.post(path, content=deep,
                                     headers={"content-type": "application/json"})
        assert response.status_code == 400, (path, response.text)
        assert "recursion limit" in response.json()["error"]["message"]


MODEL_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages",
               "/v1/messages/count_tokens", "/v1/responses")
JSON_PATHS = (*MODEL_PATHS, "/v1/pipelines/research", "/api/v1/executions", "/route",
              "/evaluate")


def _with_empty_arrays(count: int) -> bytes:
    """A chat request whose field ``x`` (passed on as it came) holds ``count`` empty
    arrays: ``count + 4`` objects and arrays in all."""
    return (b'{"model":"echo","messages":[{"role":"user","content":"hi"}],"x":['
            + b",".join([b"[]"] * count) + b"]}")


async def test_a_body_of_more_json_containers_than_the_bound_is_a_400_naming_it(
    client: httpx.AsyncClient,
) -> None:
    """1 MiB of empty arrays in a field aigw passes on cost 22 MB while parsed, tiny
    messages 36 MB: 32 such requests at once took gigabytes. Counted before parsing."""
    served = await client.post("/v1/chat/completions", content=_with_empty_arrays(49_996))
    assert served.status_code == 200, served.text  # 50,000: the bound itself
    message = ("The request body holds more than 50000 JSON objects and arrays "
               "(settings.max_request_json_containers).")
    tiny_messages = (b'{"model":"echo","messages":['
                     + b",".join([b'{"role":"user"}'] * 50_000) + b"]}")
    for body in (_with_empty_arrays(49_997), b"[" * 100_000 + b"]" * 100_000, tiny_messages):
        for path in JSON_PATHS:
            response = await client.post(path, content=body,
                                         headers={"content-type": "application/json"})
            assert response.status_code == 400, (path, response.text)
            if path.startswith("/v1/messages"):  # in Anthropic's shape there
                assert response.json()["error"] == {"type": "invalid_request_error",
                                                    "message": message}
            else:
                assert response.json()["error"] == {
                    "message": message, "type": "invalid_request_error", "param": None,
                    "code": "invalid_request"}


async def test_the_json_containers_bound_is_the_settings(
    gateway_dir: Path, counter: TokenCounter
) -> None:
    config = gateway_dir / "gateway.yaml"
    config.write_text(config.read_text().replace(
        "  max_request_bytes: 4194304\n",
        "  max_request_bytes: 4194304\n  max_request_json_containers: 10\n", 1))
    gateway = Gateway(gateway_dir, counter)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://aigw.test",
            headers={"authorization": f"Bearer {DEV_KEY}"},
        ) as client:
            served = await client.post("/v1/chat/completions", content=_with_empty_arrays(6))
            assert served.status_code == 200, served.text
            refused = await client.post("/v1/chat/completions", content=_with_empty_arrays(7))
            assert refused.status_code == 400, refused.text
            assert "more than 10 JSON objects" in refused.json()["error"]["message"]
    finally:
        await gateway.aclose()


async def test_brackets_in_strings_are_text_not_json_containers(
    client: httpx.AsyncClient,
) -> None:
    code = '{"a": [1, [2]], "b\\": "[{"} ' * 20_000  # 100,000 brackets, all in a string
    response = await client.post("/v1/chat/completions", json={
        "model": "echo", "messages": [{"role": "user", "content": "hi"}], "x": [code, "{["]})
    assert response.status_code == 200, response.text


async def test_memory_for_a_body_of_containers_stays_near_its_size(
    client: httpx.AsyncClient,
) -> None:
    """Peak memory while the gateway takes 1 MiB of empty arrays: 22 MB, 21 times the
    body, when it parsed them; now it refuses them unparsed."""
    body = _with_empty_arrays(350_000)
    assert len(body) > 1 << 20
    tracemalloc.start()
    try:
        response = await client.post("/v1/chat/completions", content=body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert response.status_code == 400, response.text
    assert peak < 4 * len(body), peak


async def test_embeddings_of_token_ids_out_of_any_vocabulary_are_a_400(
    client: httpx.AsyncClient,
) -> None:
    """Negative, past int32, or none at all. Ids the gateway's own tokenizer does not know
    (100256, unused in cl100k) are another model's to read: they go as they came."""
    for given in ([99999999999], [[-1]], [[1], [2**31]], [[]], [[1], []]):
        response = await client.post("/v1/embeddings", json={"model": "embed", "input": given})
        assert response.status_code == 400, (given, response.text)
        assert response.json()["error"]["param"] == "input"
    for given in ([[15339, 1917]], [100256], [1, 2, 3, 100261]):
        known = await client.post("/v1/embeddings", json={"model": "embed", "input": given})
        assert known.status_code == 200, known.text


async def test_embeddings_dimensions_are_bounded(client: httpx.AsyncClient) -> None:
    """The echo provider built a vector that long: a MemoryError."""
    response = await client.post("/v1/embeddings", json={
        "model": "embed", "input": "hi", "dimensions": 99_999_999_999})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "dimensions"


async def _counted_body(sent: list[int]) -> AsyncIterator[bytes]:
    for number in range(10):
        sent.append(number)
        yield b" " * 100_000


async def test_a_caller_without_a_key_is_refused_before_its_body_is_read(
    client: httpx.AsyncClient,
) -> None:
    """Each model endpoint read up to max_request_bytes (4 MiB) before it looked at the
    key: anyone could make the gateway hold that much a connection."""
    for path in MODEL_PATHS:
        sent: list[int] = []
        response = await client.post(path, content=_counted_body(sent),
                                     headers={"authorization": "", "x-api-key": "",
                                              "content-type": "application/json"})
        assert response.status_code == 401, (path, response.text)
        assert sent == [], path


async def _oversized(sent: list[int]) -> AsyncIterator[bytes]:
    """10 MB, sent chunked (no content-length to refuse it by): past max_request_bytes
    (4 MiB) at its 42nd chunk."""
    for number in range(100):
        sent.append(number)
        yield b" " * 100_000


async def test_an_admin_body_past_the_limit_is_refused_without_reading_it_all(
    client: httpx.AsyncClient,
) -> None:
    """/route and /evaluate read the whole body into memory, then compared its size with
    max_request_bytes: an admin endpoint could be made to buffer any amount."""
    for path in ("/route", "/evaluate"):
        sent: list[int] = []
        response = await client.post(path, content=_oversized(sent),
                                     headers={"content-type": "application/json"})
        assert response.status_code == 413, (path, response.text)
        assert response.json()["error"]["code"] == "request_too_large"
        assert len(sent) < 50, path


async def _trickled(sent: list[int]) -> AsyncIterator[bytes]:
    for number in range(50):
        sent.append(number)
        yield b" "
        await asyncio.sleep(0.05)


async def test_a_body_that_trickles_in_is_cut_off_with_a_408(
    gateway_dir: Path, counter: TokenCounter
) -> None:
    """A client with a key that sent its body a byte every few seconds held its request
    (and a connection) open for ever: a body now has body_read_timeout_s to arrive."""
    config = gateway_dir / "gateway.yaml"
    config.write_text(config.read_text().replace(
        "  max_request_bytes: 4194304\n",
        "  max_request_bytes: 4194304\n  body_read_timeout_s: 0.3\n", 1))
    gateway = Gateway(gateway_dir, counter)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://aigw.test",
            headers={"authorization": f"Bearer {DEV_KEY}", "content-type": "application/json"},
        ) as client:
            for path in JSON_PATHS:
                sent: list[int] = []
                response = await client.post(path, content=_trickled(sent))
                assert response.status_code == 408, (path, response.text)
                message = "The request body did not arrive within 0.3 s " \
                    "(settings.body_read_timeout_s)."
                if path.startswith("/v1/messages"):  # in Anthropic's shape there
                    assert response.json() == {"type": "error", "error": {
                        "type": "invalid_request_error", "message": message}}
                else:
                    assert response.json()["error"] == {
                        "message": message, "type": "invalid_request_error", "param": None,
                        "code": "request_timeout"}
                assert len(sent) < 20, path  # cut off at about 0.3 s, not read to its end
    finally:
        await gateway.aclose()


async def test_a_file_upload_that_trickles_in_is_cut_off_with_a_408(
    gateway_dir: Path, counter: TokenCounter
) -> None:
    """A POST /v1/files was read by the form parser with no deadline: a client trickling
    its upload held a worker and a connection for ever. It has body_read_timeout_s too."""
    config = gateway_dir / "gateway.yaml"
    config.write_text(config.read_text().replace(
        "  max_request_bytes: 4194304\n",
        "  max_request_bytes: 4194304\n  body_read_timeout_s: 0.3\n", 1))
    sent: list[int] = []

    async def upload() -> AsyncIterator[bytes]:
        yield (b'--b\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
               b'--b\r\ncontent-disposition: form-data; name="file"; filename="in.jsonl"'
               b"\r\n\r\n")
        async for chunk in _trickled(sent):
            yield chunk

    gateway = Gateway(gateway_dir, counter)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://aigw.test",
            headers={"authorization": f"Bearer {DEV_KEY}", "content-length": "1000",
                     "content-type": "multipart/form-data; boundary=b"},
        ) as client:
            response = await client.post("/v1/files", content=upload())
        assert response.status_code == 408, response.text
        assert response.json()["error"] == {
            "message": "The upload did not arrive within 0.3 s "
                       "(settings.body_read_timeout_s).",
            "type": "invalid_request_error", "param": None, "code": "request_timeout"}
        assert len(sent) < 20  # cut off at about 0.3 s, not read to its end
    finally:
        await gateway.aclose()


# A WAV file whose fmt chunk claims 130 bytes, past the end of the RIFF chunk holding it.
OVERRUN_WAV = (b"RIFF$\x00\x00\x00WAVEfmt \x82\x00\x00\x00\x01\x00\x01\x00@\x1f\x00\x00\x80>"
               b"\x00\x00\x02\x00\x10\x00data\x00\x00\x00\x00" + bytes(20))


async def test_an_upload_whose_wav_header_overruns_its_chunk_is_transcribed(
    client: httpx.AsyncClient,
) -> None:
    """The stdlib's wave reader raises a bare RuntimeError for a chunk that runs past
    the one holding it: the hold's estimate of the upload's length was a 500."""
    response = await client.post("/v1/audio/transcriptions", data={"model": "transcribe"},
                                 files={"file": ("a.wav", OVERRUN_WAV, "audio/wav")})
    assert response.status_code == 200, response.text
    assert response.json()["text"].startswith("echo transcript: 64 bytes")


FORM = "multipart/form-data; boundary=b"
FILE_PART = (b'--b\r\ncontent-disposition: form-data; name="file"; filename="in.jsonl"\r\n\r\n'
             b"{}\r\n")


async def test_an_upload_the_form_parser_cannot_read_is_an_invalid_request(
    client: httpx.AsyncClient,
) -> None:
    """Starlette's request.form() turned its parser's error into an HTTPException, which
    came back as a 400 of type server_error, code internal_error: a client's broken
    multipart body read as the gateway's own fault. The upload's own parser
    (runtime/multipart.py) names what is wrong, as a client's error."""
    purpose = b'--b\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
    for content_type, body, message in (
        ("multipart/form-data", FILE_PART + b"--b--\r\n",
         "The multipart/form-data upload has no boundary."),
        (FORM, purpose + FILE_PART + FILE_PART + b"--b--\r\n",
         "The upload has more than one file."),
        (FORM, b"--b\r\n\r\nx\r\n--b--\r\n",
         "A part of the multipart upload has no name in its Content-Disposition."),
        (FORM, purpose * 2 + FILE_PART + b"--b--\r\n",
         "The upload gives the field 'purpose' more than once."),
        (FORM, purpose + b"".join(
            b'--b\r\ncontent-disposition: form-data; name="f%d"\r\n\r\nx\r\n' % number
            for number in range(8)) + FILE_PART + b"--b--\r\n",
         "The upload has more than 8 fields."),
    ):
        response = await client.post("/v1/files", content=body,
                                     headers={"content-type": content_type})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_request")
        assert error["message"] == message


async def test_an_upload_with_numbers_int_cannot_read_is_a_400(client: httpx.AsyncClient) -> None:
    """str.isdigit() passes '²' (which int() refuses), '٣٦٠٠' (which it reads as 3600)
    and 5,000 digits (past int()'s limit): each of expires_after[seconds] and
    Content-Length was a 500, or an expiry written in no digits OpenAI reads."""
    for seconds in ("²", "9" * 5000, "٣٦٠٠"):
        response = await client.post("/v1/files", data={
            "purpose": "batch", "expires_after[anchor]": "created_at",
            "expires_after[seconds]": seconds}, files={"file": ("in.jsonl", b"{}")})
        assert response.status_code == 400, (seconds, response.text)
        assert response.json()["error"]["param"] == "expires_after.seconds"
    for length in ("²".encode("latin-1"), b"9" * 5000):
        response = await client.post("/v1/files", content=FILE_PART + b"--b--\r\n",
                                     headers={"content-type": FORM, "content-length": length})
        assert response.status_code == 400, (length, response.text)
        assert "Content-Length" in response.json()["error"]["message"]


async def test_a_batch_line_nested_too_deep_fails_the_batch_not_the_request(
    client: httpx.AsyncClient,
) -> None:
    """json.loads raises RecursionError, not ValueError, for a line nested thousands
    deep: creating the batch was a 500. The line is an invalid_json_line, as OpenAI
    reports a line it cannot parse."""
    good = (b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", '
            b'"body": {"model": "embed", "input": "x"}}\n')
    deep_body = good.replace(b'"x"', b"[" * 100_000 + b"]" * 100_000)
    for deep in (b"[" * 100_000 + b"]" * 100_000, deep_body):
        uploaded = await client.post("/v1/files", data={"purpose": "batch"},
                                     files={"file": ("in.jsonl", good + deep + b"\n")})
        assert uploaded.status_code == 200, uploaded.text
        response = await client.post("/v1/batches", json={
            "input_file_id": uploaded.json()["id"], "endpoint": "/v1/embeddings",
            "completion_window": "24h"})
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "failed"
        assert response.json()["errors"]["data"] == [{
            "code": "invalid_json_line", "line": 2,
            "message": "This line is not parseable as valid JSON.", "param": None}]


async def test_a_multipart_content_type_is_read_whatever_its_case(
    client: httpx.AsyncClient,
) -> None:
    """A media type is case-insensitive (RFC 9110, 8.3.1): 'Multipart/Form-Data' was
    refused as not multipart by the audio endpoints and /v1/files."""
    audio = (b'--b\r\ncontent-disposition: form-data; name="model"\r\n\r\ntranscribe\r\n'
             b'--b\r\ncontent-disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
             b"RIFF\r\n--b--\r\n")
    upload = (b'--b\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
              + FILE_PART + b"--b--\r\n")
    for path, body in (("/v1/audio/transcriptions", audio), ("/v1/audio/translations", audio),
                       ("/v1/files", upload)):
        response = await client.post(path, content=body, headers={
            "content-type": "Multipart/Form-Data; boundary=b"})
        assert response.status_code == 200, (path, response.text)


OTHER_KEY = "sk-hostile-other-team"


async def test_a_cursor_of_another_owners_file_or_batch_is_no_cursor(
    gateway_dir: Path, counter: TokenCounter
) -> None:
    """The SQLite store placed ``after`` wherever the id was, whoever owned it: a listing
    cut short by another team's file id told that the file exists (and the Redis store,
    which looks in the owner's own index, did not)."""
    config = gateway_dir / "gateway.yaml"
    other = f"  other: {{team: t2, sha256: {sha256(OTHER_KEY.encode()).hexdigest()}}}\n"
    config.write_text(config.read_text().replace("teams:\n", "teams:\n  t2: {}\n", 1)
                      .replace("keys:\n", "keys:\n" + other, 1))
    gateway = Gateway(gateway_dir, counter)
    try:
        store = await gateway.store.batches()
        assert store is not None
        for file_id, owner, created_at in (("file-theirs", "team:default", 1000),
                                           ("file-mine", "team:t2", 2000)):
            await store.put_file(FileRow(file_id, owner, "in.jsonl", "batch", 2, created_at))
        for batch_id, owner, created_at in (("batch_theirs", "team:default", 1000),
                                            ("batch_mine", "team:t2", 2000)):
            doc = batch_doc("/v1/embeddings", "file-mine", Checked(1, ()), None, created_at,
                            retention_s=3600, max_line_bytes=1 << 20)
            await store.put_batch(batch_id, owner, "other", {**doc, "id": batch_id})
        async with app_client(gateway, OTHER_KEY) as client:
            files = await client.get("/v1/files", params={"after": "file-theirs"})
            assert [row["id"] for row in files.json()["data"]] == ["file-mine"], files.text
            batches = await client.get("/v1/batches", params={"after": "batch_theirs"})
            assert [row["id"] for row in batches.json()["data"]] == ["batch_mine"], batches.text
    finally:
        await gateway.aclose()


async def test_a_transcription_form_that_repeats_a_field_the_gateway_reads_is_a_400(
    client: httpx.AsyncClient,
) -> None:
    """The gateway read the first response_format (or stream) of a form, and sent them
    all on: an upstream that reads the last answered in a format the gateway did not
    expect (text where it parses JSON for the bill, events where it waits for a whole
    answer), a 502 for a call the provider billed."""
    for field, values in (("response_format", ["json", "text"]), ("stream", ["false", "true"]),
                          ("model", ["transcribe", "transcribe"]),
                          ("temperature", ["0", "0.5"])):
        response = await client.post(
            "/v1/audio/transcriptions", data={"model": "transcribe", field: values},
            files={"file": ("a.wav", b"RIFF", "audio/wav")})
        assert response.status_code == 400, (field, response.text)
        assert response.json()["error"] == {
            "message": f"'{field}' is given 2 times: give it once.",
            "type": "invalid_request_error", "param": field, "code": "invalid_request"}
    several = await client.post(  # a list's fields, and prompts, may repeat (each checked)
        "/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF", "audio/wav")},
        data={"model": "transcribe", "timestamp_granularities[]": ["word", "segment"],
              "prompt": ["one", "two"]})
    assert several.status_code == 200, several.text


def _transcription_form(file_disposition: bytes, file_type: bytes = b"audio/wav") -> bytes:
    return (b'--b\r\ncontent-disposition: form-data; name="model"\r\n\r\nwhisper\r\n'
            b"--b\r\ncontent-disposition: form-data; " + file_disposition
            + b"\r\ncontent-type: " + file_type + b"\r\n\r\nRIFF\r\n--b--\r\n")


@asynccontextmanager
async def _openai_audio(root: Path, counter: TokenCounter,
                        url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway in-process whose routes ``whisper`` (whisper-1) and ``transcribe``
    (gpt-4o-transcribe) are on the OpenAI fake at ``url``, each deployment's circuit
    breaker opened by one failure."""
    root.mkdir()
    deployments = "".join(f"""
  {model}:
    provider: openai
    model: {model}
    kind: transcription
    context_window: 8000
    circuit_breaker: {{consecutive_failures: 1, cooldown_s: 60}}""" for model in (
        "whisper-1", "gpt-4o-transcribe"))
    (root / "gateway.yaml").write_text(f"""version: 1
providers:
  openai: {{type: openai, base_url: "{url}/v1", api_key: "${{FAKE_OPENAI_KEY}}"}}
deployments:{deployments}
routes:
  whisper: {{deployment: whisper-1}}
  transcribe: {{deployment: gpt-4o-transcribe}}
""" + dev_key_line())
    gateway = Gateway(root, counter)
    try:
        async with app_client(gateway) as client:
            yield client
    finally:
        await gateway.aclose()


async def test_a_form_part_named_with_a_control_character_is_a_400(
    tmp_path: Path, counter: TokenCounter, openai_upstream: tuple[OpenAIFake, str]
) -> None:
    """The form parser takes a NUL (or any control character but CR and LF) in a part's
    name, filename or content type; aiohttp refuses to write one into the upstream's
    form (a header injection, it says): a 502, counted against the deployment, whose
    circuit breaker one client could open for everyone."""
    fake, url = openai_upstream
    async with _openai_audio(tmp_path / "gw", counter, url) as client:
        for body, param in (
            (_transcription_form(b'name="file"; filename="a\x00.wav"'), "file"),
            (_transcription_form(b'name="file"; filename="a.wav"', b"audio/\x01wav"), "file"),
            (_transcription_form(b'name="file"; filename="a.wav"').replace(
                b'name="model"', b'name="model"; x=1\r\n\r\nwhisper\r\n--b\r\n'
                b'content-disposition: form-data; name="lang\x7f"', 1), "lang\x7f"),
        ):
            response = await client.post("/v1/audio/transcriptions", content=body,
                                         headers={"content-type": FORM})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == param
        assert not fake.script.requests  # refused before any call
        served = await client.post("/v1/audio/transcriptions",
                                   content=_transcription_form(b'name="file"; filename="a"'),
                                   headers={"content-type": FORM})
        assert served.status_code == 200, served.text  # its breaker was not opened


async def test_a_transcriptions_stream_flag_is_sent_as_the_gateway_read_it(
    tmp_path: Path, counter: TokenCounter, openai_upstream: tuple[OpenAIFake, str]
) -> None:
    """'stream' was streamed unless it read false or 0, and sent on as written: an
    upstream that reads only 'true' answered '1' or 'yes' whole, where the gateway
    waited for events, a 502 counted against the deployment (its breaker opened by a
    client). Now true, false, 1 and 0 are read (any case) and sent as true or false;
    anything else is a 400."""
    fake, url = openai_upstream
    async with _openai_audio(tmp_path / "gw", counter, url) as client:
        upload = {"file": ("a.wav", b"RIFF", "audio/wav")}
        for given in ("yes", "no", ""):
            refused = await client.post("/v1/audio/transcriptions", files=upload,
                                        data={"model": "transcribe", "stream": given})
            assert refused.status_code == 400, (given, refused.text)
            assert refused.json()["error"]["param"] == "stream"
        assert not fake.script.requests  # refused before any call
        for given, streamed in (("1", True), ("TRUE", True), ("0", False), ("False", False)):
            response = await client.post("/v1/audio/transcriptions", files=upload,
                                         data={"model": "transcribe", "stream": given})
            assert response.status_code == 200, (given, response.text)
            assert response.headers["content-type"].startswith(
                "text/event-stream" if streamed else "application/json"), given
            assert fake.script.requests[-1]["stream"] == ("true" if streamed else "false")


async def test_a_transcription_form_cut_short_is_named_so(client: httpx.AsyncClient) -> None:
    """The form parser drops a part the body ends inside, silently: an upload cut short
    in its file was 'Missing required parameter: file', and one cut in a field after
    the file went on without that field."""
    whole = (b'--b\r\ncontent-disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
             b'RIFF\r\n--b\r\ncontent-disposition: form-data; name="model"\r\n\r\ntranscribe'
             b"\r\n--b--\r\n")
    served = await client.post("/v1/audio/transcriptions", content=whole,
                               headers={"content-type": FORM})
    assert served.status_code == 200, served.text
    for cut in (whole[:70], whole[:-9], b""):
        response = await client.post("/v1/audio/transcriptions", content=cut,
                                     headers={"content-type": FORM})
        assert response.status_code == 400, response.text
        assert response.json()["error"] == {
            "message": "The multipart body ends before its closing boundary ('--b--'): it "
                       "was cut short.",
            "type": "invalid_request_error", "param": "file", "code": "invalid_request"}


_HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", {"stream": "yes"}, "stream"),
    ("/v1/chat/completions", {"stream": 1}, "stream"),
    ("/v1/chat/completions", {"stream": True, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage"),
    ("/v1/chat/completions", {"logprobs": "true"}, "logprobs"),
    ("/v1/chat/completions", {"parallel_tool_calls": 0}, "parallel_tool_calls"),
    ("/v1/chat/completions", {"store": "no"}, "store"),
    ("/v1/completions", {"stream": "yes"}, "stream"),
    ("/v1/completions", {"echo": "yes"}, "echo"),
    ("/v1/responses", {"stream": "yes"}, "stream"),
    ("/v1/responses", {"store": "yes"}, "store"),
    ("/v1/responses", {"parallel_tool_calls": "false"}, "parallel_tool_calls"),
], ids=["chat-stream-a-string", "chat-stream-a-number", "chat-include-usage", "chat-logprobs",
        "chat-parallel-tool-calls", "chat-store", "completions-stream", "completions-echo",
        "responses-stream", "responses-store", "responses-parallel-tool-calls"])
async def test_a_boolean_parameter_of_another_type_is_a_400_naming_it(
        client: httpx.AsyncClient, path: str, body: dict[str, object], param: str) -> None:
    """"stream": "yes" was read as true (pydantic's lax bool takes "yes", "on", 1), and
    the extras passed on (logprobs, parallel_tool_calls, store) as they came: OpenAI
    refuses each as a 400 naming the parameter."""
    asked = ({"prompt": "hi"} if path == "/v1/completions"
             else {"input": "hi"} if path == "/v1/responses" else {"messages": _HI})
    response = await client.post(path, json={"model": "echo", **asked, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert "boolean" in error["message"]


async def test_a_boolean_parameter_of_another_type_is_a_400_on_messages_and_gemini(
        client: httpx.AsyncClient) -> None:
    """Anthropic's and Google's APIs refuse them too, each in its own error shape."""
    for body in ({"stream": "yes"},
                 {"tool_choice": {"type": "auto", "disable_parallel_tool_use": "yes"}}):
        response = await client.post("/v1/messages", json={
            "model": "echo", "max_tokens": 5, "messages": _HI, **body})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert "boolean" in response.json()["error"]["message"]
    response = await client.post("/v1beta/models/echo:generateContent", json={
        "contents": [{"role": "user", "parts": [{"text": "hi", "thought": "yes"}]}]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    for answered in ({"stream": False, "store": None, "logprobs": False},
                     {"parallel_tool_calls": True}):
        served = await client.post("/v1/chat/completions", json={
            "model": "echo", "messages": _HI, **answered})
        assert served.status_code == 200, served.text
