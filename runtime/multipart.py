"""The gateway's one multipart/form-data reader, fed a chunk of the body at a time, and
the one place a client's hostile form is refused: POST /v1/files writes its file's bytes
to disk as they arrive (``file_bytes``); the audio endpoints and image edits, which send
their files on whole, feed the body they read within its cap (``write``, then ``end``;
image edits take several, kept apart with ``keeps_files``: ``uploads``).

A form is refused with a 400 that names what is wrong when it has no boundary; a part
with no name, or headers over ``HEADERS_MOST`` bytes; a control character in a part's
name, or in a file's filename or content type (aiohttp refuses to write one into an
upstream's form: a 502 counted against the deployment, for a client's bytes); a file
part not named as the endpoint's files are (``files``: 'file' for most), or more than
``most_files`` of them; more than ``most_fields`` fields beside the files, or one over
``field_most`` bytes; a field given twice, where the endpoint reads each once
(``unique``); a body the parser cannot read; and a form cut short, ending
before its closing boundary or before its declared length: python-multipart's
``finalize()`` takes a part the body ends inside as it was, a file cut short as a whole
one (Starlette's parser dropped it, silently).

What each endpoint's fields mean, which are required, and whether an empty file will do
are the endpoint's own.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import BadRequest, PayloadTooLarge, quoted

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

# The most bytes of a part's headers: the SDKs' are a few dozen.
HEADERS_MOST = 64 << 10
# What aiohttp refuses in a header it writes (RFC 9110, 5.5); the parser passes them on.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_PARAM_MOST = 64  # characters of a field's name an error names as its param


@dataclass(frozen=True)
class FormWords:
    """How an endpoint's refusals name what its form holds, where they differ."""

    file: str  # what goes in 'file', as "A file was sent as 'x'; <file> goes in 'file'."
    cut_short: str  # a form ended before its closing boundary, shown as ``{closing}``


@dataclass(frozen=True, slots=True)
class FormUpload:
    """One file part of a form read with ``keeps_files``, as the client sent it."""

    field: str
    filename: str
    content_type: str | None
    data: bytes


# A form's boolean field's values (what the SDKs write, and what form readers take).
_FLAGS = {"true": True, "1": True, "false": False, "0": False}


def single_field(fields: Sequence[tuple[str, str]], name: str) -> str | None:
    """A field the gateway reads itself, given at most once: a repeated one is read here
    as its first, and by an upstream perhaps as its last (text where the bill parses
    JSON, events where a whole answer is awaited)."""
    values = [value for key, value in fields if key == name]
    if len(values) > 1:
        raise BadRequest(f"'{name}' is given {len(values)} times: give it once.", param=name)
    return values[0] if values else None


def flag_field(fields: Sequence[tuple[str, str]], name: str) -> bool:
    """A boolean form field: true, false, 1 or 0 in any case (what the SDKs write, and
    what a form reader takes), False when left out; anything else a 400."""
    value = single_field(fields, name)
    if value is None:
        return False
    flag = _FLAGS.get(value.lower())
    if flag is None:
        raise BadRequest(f"Invalid value for '{name}': {quoted(value)}; expected true or false.",
                         param=name)
    return flag


class MultipartForm:
    """One multipart form, fed a chunk of its body at a time: its fields in order, and
    its file's name and content type once the file's part has begun (the file's bytes
    are what ``write`` returns; with ``keeps_files``, each file is kept whole, in
    ``uploads``, and ``write`` returns nothing).

    ``most_fields``: the most fields beside the files; ``field_most``: the most bytes of
    one; ``unique``: a field given twice is refused (which copy would be read? neither);
    ``files``: the names a file part may have; ``most_files``: the most file parts.
    """

    def __init__(self, content_type: str, words: FormWords, *, most_fields: int,
                 field_most: int, unique: bool = False, files: tuple[str, ...] = ("file",),
                 most_files: int = 1, keeps_files: bool = False) -> None:
        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise BadRequest("The multipart/form-data upload has no boundary.")
        self.words = words
        self.most_fields, self.field_most, self.unique = most_fields, field_most, unique
        self.files, self.most_files, self.keeps_files = files, most_files, keeps_files
        self._uploads: list[FormUpload] = []  # the files kept whole (``keeps_files``)
        self._file_count = 0
        self._fields: list[tuple[str, str]] = []
        self.filename: str | None = None  # None: no file part (yet)
        self.file_type: str | None = None  # the file part's Content-Type, if it gave one
        self._file_part = False  # the part being parsed is the file's
        self._name = ""  # the part being parsed's field name
        self._value = bytearray()  # and its value, when it is not the file
        self._header = [b"", b""]  # the header being parsed: its name and value
        self._disposition = b""
        self._part_type: bytes | None = None
        self._headers_size = 0
        self._data: list[bytes] = []  # the file's bytes the last chunk held
        self._boundary = boundary.decode("latin-1")
        self._ended = False  # the closing boundary has been read
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._part_begins, "on_part_data": self._part_data,
            "on_part_end": self._part_ends, "on_header_field": self._header_name,
            "on_header_value": self._header_value, "on_header_end": self._header_ends,
            "on_headers_finished": self._headers_end, "on_end": self._form_ends}
        self._parser = MultipartParser(boundary, callbacks)

    @property
    def fields(self) -> tuple[tuple[str, str], ...]:
        """The fields beside the file, in the order the form gave them."""
        return tuple(self._fields)

    @property
    def uploads(self) -> tuple[FormUpload, ...]:
        """The files, in the order the form gave them (``keeps_files``)."""
        return tuple(self._uploads)

    def field(self, name: str) -> str | None:
        """The value of the field ``name`` (its first), None when the form has none."""
        return next((value for key, value in self._fields if key == name), None)

    def write(self, chunk: bytes) -> bytes:
        """The file's bytes ``chunk`` held (the next of the body's chunks)."""
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise BadRequest(f"The multipart body cannot be read: {exc}") from exc
        if self.keeps_files:
            return b""  # a file's bytes go into ``uploads`` as its part ends
        data = b"".join(self._data)
        self._data.clear()
        return data

    def end(self, size: int, declared: int | None) -> None:
        """The body ended after ``size`` bytes: refused if it was not the whole form, or
        less than the ``declared`` length (its Content-Length)."""
        try:
            self._parser.finalize()
        except FormParserError as exc:
            raise BadRequest(f"The multipart body cannot be read: {exc}") from exc
        if declared is not None and size < declared:
            raise BadRequest(f"The upload was cut short: its body ended after {size} of "
                             f"the {declared} bytes its Content-Length gave.", param="file")
        if not self._ended:
            raise BadRequest(self.words.cut_short.format(closing=f"--{self._boundary}--"),
                             param="file")

    async def file_bytes(self, stream: AsyncIterator[bytes], most: int,
                         declared: int) -> AsyncIterator[bytes]:
        """The file's bytes in the form ``stream`` sends, as each chunk of it arrives; a
        form over ``most`` bytes in all is a 413, one refused (see the module) a 400."""
        size = 0
        async for chunk in stream:
            size += len(chunk)
            if size > most:
                raise PayloadTooLarge(f"The upload is over {most} bytes.")
            data = self.write(chunk)
            if data:
                yield data
        self.end(size, declared)

    def _form_ends(self) -> None:
        self._ended = True

    def _part_begins(self) -> None:
        self._file_part, self._name, self._disposition = False, "", b""
        self._part_type = None
        self._value.clear()
        self._headers_size = 0

    def _header_name(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]
        self._count_header(end - start)

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]
        self._count_header(end - start)

    def _count_header(self, size: int) -> None:
        self._headers_size += size
        if self._headers_size > HEADERS_MOST:
            raise BadRequest("A part of the multipart upload has headers over "
                             f"{HEADERS_MOST} bytes.")

    def _header_ends(self) -> None:
        name = self._header[0].lower()
        if name == b"content-disposition":
            self._disposition = self._header[1]
        elif name == b"content-type":
            self._part_type = self._header[1]
        self._header = [b"", b""]

    def _headers_end(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = _decoded(options.get(b"name", b""))
        if not name:
            raise BadRequest("A part of the multipart upload has no name in its "
                             "Content-Disposition.")
        if _CONTROL.search(name):
            raise BadRequest(f"A form field's name holds a control character ({quoted(name)}).",
                             param=_param(name))
        self._name = name
        if b"filename" not in options:
            if self.unique and any(key == name for key, _ in self._fields):
                raise BadRequest(f"The upload gives the field {quoted(name)} more than once.",
                                 param=_param(name))
            if len(self._fields) >= self.most_fields:
                raise BadRequest(f"The upload has more than {self.most_fields} fields.")
            return
        if name not in self.files:
            raise BadRequest(f"A file was sent as {quoted(name)}; {self.words.file} goes in "
                             + " or ".join(f"'{named}'" for named in self.files) + ".",
                             param=_param(name))
        if self._file_count >= self.most_files:
            raise BadRequest("The upload has more than "
                             + ("one file." if self.most_files == 1
                                else f"{self.most_files} files."), param=_param(name))
        self._file_count += 1
        filename = _decoded(options[b"filename"])
        file_type = None if self._part_type is None else _decoded(self._part_type)
        if _CONTROL.search(filename) or _CONTROL.search(file_type or ""):
            raise BadRequest("The file's filename or content type holds a control "
                             f"character ({quoted(filename)}, {quoted(file_type)}).", param="file")
        self._file_part = True
        if self.filename is None:
            self.filename, self.file_type = filename, file_type
        if self.keeps_files:
            self._uploads.append(FormUpload(name, filename, file_type, b""))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file_part:
            self._data.append(data[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > self.field_most:
            raise BadRequest(f"The upload's field {quoted(self._name)} is over "
                             f"{self.field_most} bytes.", param=_param(self._name))

    def _part_ends(self) -> None:
        if not self._file_part:
            self._fields.append((self._name, _decoded(bytes(self._value))))
        elif self.keeps_files:  # the part's bytes, whole: each file is kept apart
            self._uploads[-1] = replace(self._uploads[-1], data=b"".join(self._data))
            self._data.clear()


def _param(name: str) -> str | None:
    """A form field's name as an error's ``param``: None where it is too long to be any
    endpoint's (a part's headers may be 64 KiB, and an error repeated it whole)."""
    return name if len(name) <= _PARAM_MOST else None


def _decoded(raw: bytes) -> str:
    """A name or value as the SDKs send it (UTF-8), or as a browser may (Latin-1)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")
