"""An upload to POST /v1/files, parsed as it arrives: the file's bytes go straight to
``files_dir`` (``FileBytes.write_chunks``: under a temporary name, renamed once whole),
written once; the form's few other fields are kept in memory.

Starlette's form parser spooled the file first (to memory, then a temporary file past
1 MB), and the spool was then copied to ``files_dir``: every upload was written twice.
The fields (``purpose``, ``expires_after[...]``) are checked once the whole form has
arrived and before the file is renamed into place, wherever they were in the form, so a
refused upload leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..errors import BadRequest, PayloadTooLarge

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

# The most bytes of a field's value, or of a part's headers: the SDKs' are a few dozen.
FIELD_MOST = 64 << 10
# The most fields beside the file: OpenAI's upload takes three.
MOST_FIELDS = 8


class UploadForm:
    """The multipart form of one upload, fed a chunk of the request at a time
    (``file_bytes``): its fields, and the name of its file once its part has begun."""

    def __init__(self, content_type: str) -> None:
        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise BadRequest("The multipart/form-data upload has no boundary.")
        self.fields: dict[str, str] = {}
        self.filename: str | None = None  # None: no file part (yet)
        self._file_part = False  # the part being parsed is the file's
        self._name = ""  # the part being parsed's field name
        self._value = bytearray()  # and its value, when it is not the file
        self._header = [b"", b""]  # the header being parsed: its name and value
        self._disposition = b""
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

    async def file_bytes(self, stream: AsyncIterator[bytes], most: int,
                         declared: int) -> AsyncIterator[bytes]:
        """The file's bytes in the form ``stream`` sends, as each chunk of it arrives; a
        form over ``most`` bytes in all is a 413, one that cannot be parsed, or that ends
        before its ``declared`` length or its closing boundary, a 400."""
        size = 0
        try:
            async for chunk in stream:
                size += len(chunk)
                if size > most:
                    raise PayloadTooLarge(f"The upload is over {most} bytes.")
                self._parser.write(chunk)
                if self._data:
                    data = b"".join(self._data)
                    self._data.clear()
                    yield data
            self._parser.finalize()
        except FormParserError as exc:
            raise BadRequest(f"The multipart body cannot be read: {exc}") from exc
        # The parser's finalize() does not check the form was whole: a part the body
        # ends inside was taken as it was, a file cut short kept as a whole one.
        if size < declared:
            raise BadRequest(f"The upload was cut short: its body ended after {size} of "
                             f"the {declared} bytes its Content-Length gave.", param="file")
        if not self._ended:
            raise BadRequest("The upload was cut short: its multipart body ends before "
                             f"its closing boundary ('--{self._boundary}--').", param="file")

    def _form_ends(self) -> None:
        self._ended = True

    def _part_begins(self) -> None:
        self._file_part, self._name, self._disposition = False, "", b""
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
        if self._headers_size > FIELD_MOST:
            raise BadRequest("A part of the multipart upload has headers over "
                             f"{FIELD_MOST} bytes.")

    def _header_ends(self) -> None:
        if self._header[0].lower() == b"content-disposition":
            self._disposition = self._header[1]
        self._header = [b"", b""]

    def _headers_end(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = _decoded(options.get(b"name", b""))
        if not name:
            raise BadRequest("A part of the multipart upload has no name in its "
                             "Content-Disposition.")
        self._name = name
        if b"filename" not in options:
            if name in self.fields:  # which copy would the gateway read? neither
                raise BadRequest(f"The upload gives the field '{name}' more than once.",
                                 param=name)
            if len(self.fields) >= MOST_FIELDS:
                raise BadRequest(f"The upload has more than {MOST_FIELDS} fields.")
            return
        if name != "file":
            raise BadRequest(f"A file was sent as '{name}'; the upload goes in 'file'.",
                             param=name)
        if self.filename is not None:
            raise BadRequest("The upload has more than one file.", param="file")
        self._file_part = True
        self.filename = _decoded(options[b"filename"])

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file_part:
            self._data.append(data[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > FIELD_MOST:
            raise BadRequest(f"The upload's field '{self._name}' is over {FIELD_MOST} "
                             "bytes.", param=self._name)

    def _part_ends(self) -> None:
        if not self._file_part:
            self.fields[self._name] = _decoded(bytes(self._value))


def _decoded(raw: bytes) -> str:
    """A name or value as the SDKs send it (UTF-8), or as a browser may (Latin-1)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")
