"""runtime/multipart.py through the app: POST /v1/files and the audio endpoints read
their forms with the one reader, and refuse the same hostile forms the same way (each
had checks the other lacked)."""

from __future__ import annotations

import httpx
import pytest

from aigw.runtime.multipart import FormUpload, FormWords, MultipartForm

FORM = "multipart/form-data; boundary=b"
PATHS = ("/v1/files", "/v1/audio/transcriptions")


def _part(name: bytes, value: bytes, filename: bytes | None = None,
          content_type: bytes | None = None) -> bytes:
    named = b'name="' + name + b'"' + (b"" if filename is None else
                                       b'; filename="' + filename + b'"')
    typed = b"" if content_type is None else b"\r\ncontent-type: " + content_type
    return (b"--b\r\ncontent-disposition: form-data; " + named + typed + b"\r\n\r\n" + value
            + b"\r\n")


# What both endpoints read: /v1/files its purpose, the audio endpoints their model (each
# passes the other's field over: a form of both is served by both).
_FIELDS = _part(b"model", b"transcribe") + _part(b"purpose", b"batch")
_FILE = _part(b"file", b"RIFF", b"a.wav", b"audio/wav")
_END = b"--b--\r\n"


async def test_a_form_both_endpoints_read_is_served_by_both(client: httpx.AsyncClient) -> None:
    for path in PATHS:
        response = await client.post(path, content=_FIELDS + _FILE + _END,
                                     headers={"content-type": FORM})
        assert response.status_code == 200, (path, response.text)


@pytest.mark.parametrize(("content_type", "form", "param", "words"), [
    ("multipart/form-data", _FIELDS + _FILE + _END, None,
     "The multipart/form-data upload has no boundary."),
    (FORM, _FIELDS + _FILE + _FILE + _END, "file", "The upload has more than one file."),
    (FORM, _FIELDS + _part(b"upload", b"RIFF", b"a.wav") + _END, "upload",
     "A file was sent as 'upload'"),
    (FORM, _FIELDS + b"--b\r\n\r\nx\r\n" + _FILE + _END, None,
     "A part of the multipart upload has no name in its Content-Disposition."),
    (FORM, _FIELDS + b"".join(_part(b"f%d" % n, b"x") for n in range(64)) + _FILE + _END,
     None, "The upload has more than "),
    (FORM, _FIELDS + _part(b"prompt", b"x" * ((1 << 20) + 1)) + _FILE + _END, "prompt",
     "The upload's field 'prompt' is over "),
    # A control character in a part's name, its filename or content type: /v1/files
    # stored such a filename, and showed it in every listing of its files.
    (FORM, _FIELDS + _part(b"file", b"RIFF", b"a\x00.wav") + _END, "file",
     "The file's filename or content type holds a control character"),
    (FORM, _FIELDS + _part(b"file", b"RIFF", b"a.wav", b"audio/\x01wav") + _END, "file",
     "The file's filename or content type holds a control character"),
    (FORM, _FIELDS + _part(b"lang\x7f", b"en") + _FILE + _END, "lang\x7f",
     "A form field's name holds a control character"),
    (FORM, _FIELDS + _FILE, "file", "closing boundary ('--b--')"),
    (FORM, _FIELDS + _FILE + b"--b\r\nno colon\r\n\r\n", None,
     "The multipart body cannot be read"),
], ids=["no-boundary", "two-files", "misplaced-file", "no-name", "too-many-fields",
        "field-too-large", "filename-control", "content-type-control",
        "name-control", "cut-short", "unreadable"])
async def test_a_hostile_form_is_refused_alike_by_both_endpoints(
        client: httpx.AsyncClient, content_type: str, form: bytes, param: str | None,
        words: str) -> None:
    for path in PATHS:
        response = await client.post(path, content=form, headers={"content-type": content_type})
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_request")
        assert (error["param"], words in error["message"]) == (param, True), (path, error)
    listed = await client.get("/v1/files")
    assert listed.json()["data"] == []  # the upload refused kept nothing


async def test_a_form_cut_short_after_a_file_holding_its_closing_delimiter_is_refused(
        client: httpx.AsyncClient) -> None:
    """The audio form's was the body searched for '--b--': a file that holds it (not at a
    line's start, so not a delimiter) passed for a whole form, and a field the body ended
    inside went unread, the call made without it."""
    form = (_FIELDS + _part(b"file", b"RIFF x--b--", b"a.wav")
            + _part(b"language", b"en") + _END)
    for path in PATHS:
        served = await client.post(path, content=form, headers={"content-type": FORM})
        assert served.status_code == 200, (path, served.text)
        cut = await client.post(path, content=form[:-12], headers={"content-type": FORM})
        assert cut.status_code == 400, (path, cut.text)
        error = cut.json()["error"]
        assert (error["param"], "closing boundary ('--b--')" in error["message"]) == (
            "file", True), (path, error)


@pytest.mark.parametrize(("fields", "param"), [
    ({b"purpose": b"y" * 60_000}, "purpose"),
    ({b"purpose": b"batch", b"expires_after[anchor]": b"y" * 60_000}, "expires_after.anchor"),
    ({b"purpose": b"batch", b"expires_after[anchor]": b"created_at",
      b"expires_after[seconds]": b"9" * 60_000}, "expires_after.seconds"),
], ids=["purpose", "anchor", "seconds"])
async def test_an_uploads_bad_field_is_shown_cut_short(
        client: httpx.AsyncClient, fields: dict[bytes, bytes], param: str) -> None:
    """A field's value (up to 64 KiB) was repeated whole in its 400."""
    form = b"".join(_part(name, value) for name, value in fields.items()) + _FILE + _END
    response = await client.post("/v1/files", content=form, headers={"content-type": FORM})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert len(error["message"]) < 300 and "(60000 characters)" in error["message"], error


_LONG = b"y" * 60_000  # within a field's bytes (1 MiB on the audio endpoints)
_NAME = b"y" * 4_000  # within the parser's bound on a part's header (4 KiB and some)


@pytest.mark.parametrize(("path", "form", "param"), [
    ("/v1/files", _part(b"purpose", b"batch") + _part(_NAME, b"1") + _part(_NAME, b"2")
     + _FILE + _END, None),
    ("/v1/files", _part(b"purpose", b"batch") + _part(_NAME, b"RIFF", b"a.wav") + _END, None),
    ("/v1/files", _part(b"purpose", b"batch") + _part(b"\x01" + _NAME, b"x") + _FILE + _END,
     None),
    ("/v1/files", _part(b"purpose", b"batch") + _part(b"file", b"RIFF", b"\x01" + _NAME)
     + _END, "file"),
    ("/v1/audio/transcriptions", _FIELDS + _part(b"response_format", _LONG) + _FILE + _END,
     "response_format"),
    ("/v1/audio/transcriptions", _FIELDS + _part(b"stream", _LONG) + _FILE + _END, "stream"),
    ("/v1/audio/transcriptions", _FIELDS + _part(b"temperature", _LONG) + _FILE + _END,
     "temperature"),
], ids=["field-name-twice", "file-part-name", "control-name", "control-filename",
        "response-format", "stream", "temperature"])
async def test_a_forms_long_name_or_value_is_shown_cut_short(
        client: httpx.AsyncClient, path: str, form: bytes, param: str | None) -> None:
    """An audio field's value (up to 1 MiB), or a part's name or filename (4 KiB), was
    repeated whole in its 400 (a name in its param too), as the files' purpose was: an
    answer as large as the form, four times that where each byte is escaped."""
    response = await client.post(path, content=form, headers={"content-type": FORM})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert len(error["message"]) < 400 and " characters)" in error["message"], error


def test_several_files_are_kept_apart_whatever_the_chunks() -> None:
    """An image edit's form (``keeps_files``): each file whole under its own name, in the
    form's order, however the body's chunks cut its parts."""
    first, second = bytes(range(256)) + b"\r\n--a", b"\x89PNG\r\n" * 40
    body = (_part(b"prompt", b"a cat") + _part(b"image[]", first, b"a.png", b"image/png")
            + _part(b"image[]", second, b"b.png") + _part(b"mask", b"M", b"m.png") + _END)
    form = MultipartForm(FORM, FormWords(file="an image", cut_short="cut"), most_fields=8,
                         field_most=64, files=("image[]", "mask"), most_files=3,
                         keeps_files=True)
    for start in range(0, len(body), 7):
        assert form.write(body[start:start + 7]) == b""
    form.end(len(body), None)
    assert form.fields == (("prompt", "a cat"),)
    assert form.uploads == (FormUpload("image[]", "a.png", "image/png", first),
                            FormUpload("image[]", "b.png", None, second),
                            FormUpload("mask", "m.png", None, b"M"))
