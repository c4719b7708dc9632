"""Streaming multipart upload of a CSV file (or an Excel workbook) to the shared volume, checked as it
arrives.

FastAPI's `UploadFile` would spool the whole body to a temporary file before the route runs, so neither the
size limit nor the header check could answer early. Here the body is parsed as it streams in: the declared
length is checked before reading anything, the running size on every block, and the encoding, delimiter and
header as soon as the first 64 KiB (or the whole file, if smaller) have arrived. Nothing is held in memory
beyond one block and the header sample. A workbook (`shared.csvio.workbook.is_workbook`: its bytes, name or
type) is only size-checked here; it is read after it has arrived (`services/gateway/staging.py`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import anyio
from fastapi import HTTPException, Request
from python_multipart.multipart import MultipartParser, parse_options_header

from shared.csvio.reading import SNIFF_BYTES, CsvFormatError, CsvLayout, sniff_layout
from shared.csvio.workbook import is_workbook

FIELD = "file"
MULTIPART_OVERHEAD = 64 * 1024  # headers and boundaries around the file itself, for the Content-Length check
FLUSH_BYTES = 1 << 20


def upload_error(status: int, error: str, message: str, **details: Any) -> HTTPException:
    return HTTPException(status, detail={"error": error, "message": message, **details})


def csv_error(exc: CsvFormatError) -> HTTPException:
    """422 for a file that cannot be coded (413 when it has too many rows or too much text); the detail names
    the problem."""
    return HTTPException(413 if exc.code in ("too_many_rows", "too_large") else 422, detail=exc.as_dict())


def too_large(max_bytes: int) -> HTTPException:
    return upload_error(
        413,
        "too_large",
        f"The upload is larger than the limit of {max_bytes:,} bytes; split the file into smaller ones.",
        max_bytes=max_bytes,
    )


@dataclass
class ReceivedFile:
    path: Path
    size: int
    filename: str | None
    layout: CsvLayout | None  # None for a workbook: its sheet is read once it has arrived
    content_type: str | None = None

    @property
    def workbook(self) -> bool:
        return self.layout is None


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    filename: str | None = None


class _Receiver:
    """python-multipart callbacks: route the `file` part's bytes to a file, everything else nowhere."""

    def __init__(self, out: IO[bytes], max_bytes: int):
        self.out = out
        self.max_bytes = max_bytes
        self.part = _Part()
        self._field = b""
        self._value = b""
        self.in_file = False
        self.seen_file = False
        self.file_done = False
        self.size = 0
        self.head = bytearray()  # first SNIFF_BYTES of the file, for the header check
        self.pending = bytearray()  # bytes not yet written
        self.filename: str | None = None
        self.content_type: str | None = None
        self.over_limit = False

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self.part.headers[self._field.decode("latin-1").lower()] = self._value.decode("utf-8", "replace")
        self._field = self._value = b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.part.headers.get("content-disposition", ""))
        name = params.get(b"name")
        self.part.name = name.decode("utf-8", "replace") if name else None
        filename = params.get(b"filename")
        self.part.filename = filename.decode("utf-8", "replace") if filename else None
        # the first `file` part is the upload; a second one is ignored
        self.in_file = self.part.name == FIELD and not self.seen_file
        if self.in_file:
            self.seen_file = True
            self.filename = self.part.filename
            self.content_type = self.part.headers.get("content-type")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self.in_file or self.over_limit:
            return
        chunk = data[start:end]
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.over_limit = True
            return
        if len(self.head) < SNIFF_BYTES:
            self.head += chunk[: SNIFF_BYTES - len(self.head)]
        self.pending += chunk

    def on_part_end(self) -> None:
        if self.in_file:
            self.in_file = False
            self.file_done = True

    def flush(self) -> None:
        if self.pending:
            self.out.write(self.pending)
            self.pending = bytearray()


async def receive_csv(
    request: Request, dest: Path, *, max_bytes: int, columns: Mapping[str, str] | None = None
) -> ReceivedFile:
    """Stream the multipart field `file` of `request` to `dest`; raise HTTPException with a clear detail for
    a body that is not multipart (415), has no `file` field (422), is over `max_bytes` (413), or, for a CSV,
    whose encoding or header is wrong (422, as soon as the first block shows it; `columns` chosen by hand
    count as found, `shared.csvio.reading.mapped_header`). `dest` is removed on failure."""
    content_type = request.headers.get("content-type", "")
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise upload_error(
            415,
            "not_multipart",
            "Send the CSV as multipart/form-data with the file in the field `file` "
            "(curl -F file=@jobs.csv ...).",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD:
        raise too_large(max_bytes)

    dest.parent.mkdir(parents=True, exist_ok=True)
    out = await anyio.to_thread.run_sync(open, dest, "wb")
    receiver = _Receiver(out, max_bytes)
    parser = MultipartParser(params[b"boundary"], cast(Any, receiver.callbacks()))
    layout: CsvLayout | None = None
    checked = False
    ok = False
    try:
        async for block in request.stream():
            parser.write(block)
            if receiver.over_limit:
                raise too_large(max_bytes)
            if not checked and (len(receiver.head) >= SNIFF_BYTES or receiver.file_done):
                layout, checked = _check_head(receiver, columns), True
            if len(receiver.pending) >= FLUSH_BYTES:
                await anyio.to_thread.run_sync(receiver.flush)
        parser.finalize()
        if not receiver.seen_file:
            raise upload_error(
                422, "missing_file", "The form has no field `file`: send the CSV as -F file=@jobs.csv."
            )
        if not receiver.file_done:
            raise upload_error(400, "incomplete_upload", "The upload ended before the file was complete.")
        if not checked:
            layout = _check_head(receiver, columns)
        await anyio.to_thread.run_sync(_finish, receiver, out)
        ok = True
    except CsvFormatError as exc:
        raise csv_error(exc) from None
    except ValueError as exc:  # python-multipart's parse errors are ValueErrors
        raise upload_error(400, "bad_multipart", f"The multipart body could not be parsed: {exc}") from None
    finally:
        if not out.closed:
            out.close()
        if not ok:
            dest.unlink(missing_ok=True)
    return ReceivedFile(dest, receiver.size, receiver.filename, layout, receiver.content_type)


def _check_head(receiver: _Receiver, columns: Mapping[str, str] | None) -> CsvLayout | None:
    """The CSV's layout from its first bytes; None for a workbook."""
    head = bytes(receiver.head)
    if head and is_workbook(head[:8], receiver.filename, receiver.content_type):
        return None
    complete = receiver.file_done and receiver.size <= SNIFF_BYTES
    return sniff_layout(head, complete=complete, columns=columns)


def _finish(receiver: _Receiver, out: IO[bytes]) -> None:
    receiver.flush()
    out.flush()
    os.fsync(out.fileno())
    out.close()
