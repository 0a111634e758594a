"""A CSV that arrives as byte chunks, read one record at a time: gzip, the size cap, UTF-8 and the CSV syntax.

It does what the whole-file import did in one go (decompress, cap, decode, split into records) as the bytes
arrive, with the same results: the same records starting on the same lines, and for a file with several problems
the same error. The whole-file reader met problems stage by stage (the gzip stream, then the size, then UTF-8,
then the CSV syntax), so when a stage fails here the stages before it go on reading to the end of the stream, and
the earliest stage's error is the one raised.

Memory: one decompressed piece (``READ_SIZE``) and one physical line at a time; a line longer than
``MAX_LINE_CHARS`` is refused as malformed (no valid record is that long: 1000 columns of the csv module's
128 KiB field limit are less).

Errors name a line or a byte offset, never a value.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import itertools
import zlib
from collections.abc import Iterable, Iterator

from sandbox.errors import ErrorCode, SandboxError

#: Decompressed bytes read at a time (as the whole-file reader did).
READ_SIZE = 1 << 20
MAX_LINE_CHARS = 256 * 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


def _invalid_csv(detail: str) -> SandboxError:
    return SandboxError(ErrorCode.INVALID_CSV, public_detail=detail)


def _too_large(max_bytes: int) -> SandboxError:
    return _invalid_csv(f"CSV larger than {max_bytes // (1024 * 1024)} MiB")


class _ChunkFile(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (what ``gzip.GzipFile`` reads from)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._view = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        while not self._view:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._view = memoryview(chunk)
        n = min(len(buffer), len(self._view))
        buffer[:n] = self._view[:n]
        self._view = self._view[n:]
        return n


def _raw_pieces(chunks: Iterable[bytes], max_bytes: int) -> Iterator[bytes]:
    """The CSV's bytes, gunzipped if the stream starts with the gzip magic; INVALID_CSV past ``max_bytes``."""
    it = iter(chunks)
    head = b""
    for chunk in it:
        head += chunk
        if len(head) >= 2:
            break
    source = itertools.chain([head], it)
    size = 0
    if head[:2] != _GZIP_MAGIC:
        for chunk in source:
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)
            if chunk:
                yield chunk
        return
    try:
        with gzip.GzipFile(fileobj=_ChunkFile(source)) as gz:
            while size <= max_bytes and (piece := gz.read(READ_SIZE)):  # a bomb stops at the cap
                size += len(piece)
                if size <= max_bytes:
                    yield piece
    except (OSError, EOFError, zlib.error) as exc:
        raise SandboxError(ErrorCode.INVALID_CSV, "not a valid gzip stream", log_detail=repr(exc)) from exc
    if size > max_bytes:
        raise _too_large(max_bytes)


def _text_pieces(raw: Iterator[bytes]) -> Iterator[str]:
    """UTF-8 text without a leading BOM; at the first invalid byte, the rest of ``raw`` is read (its errors come
    first), then INVALID_CSV names the byte's offset after the BOM, as ``bytes.decode("utf-8-sig")`` did."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    fed = 0  # bytes given to the decoder so far
    head: bytes | None = b""  # the first bytes, until it is known whether they start with a BOM
    pieces: Iterator[bytes | None] = itertools.chain(raw, [None])
    for piece in pieces:
        final = piece is None
        data = b"" if piece is None else piece
        if head is not None:
            head += data
            if len(head) < 3 and not final:
                continue
            data, head = (head[3:] if head.startswith(codecs.BOM_UTF8) else head), None
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            for _ in raw:  # the gzip stream and the size are checked first
                pass
            raise _invalid_csv(f"not valid UTF-8 (byte offset {fed - pending + exc.start})") from None
        fed += len(data)
        if text:
            yield text


def _lines(pieces: Iterator[str]) -> Iterator[str]:
    """Physical lines with their endings, as iterating ``io.StringIO(text, newline="")`` gives them."""
    carry: list[str] = []  # the start of a line whose end has not arrived
    carried = 0
    for piece in pieces:
        buf = "".join(carry) + piece if carry else piece
        body = buf[:-1] if buf.endswith("\r") else buf  # a final "\r" may be the first half of "\r\n"
        cut = max(body.rfind("\n"), body.rfind("\r")) + 1
        if cut:
            yield from io.StringIO(buf[:cut], newline="")
            carry, carried = [buf[cut:]], len(buf) - cut
        else:
            carry, carried = [buf], len(buf)
        if carried > MAX_LINE_CHARS:
            raise csv.Error("line too long")
    rest = "".join(carry)
    if rest:
        yield from io.StringIO(rest, newline="")


def records(chunks: Iterable[bytes], *, max_bytes: int) -> Iterator[tuple[list[str], int]]:
    """Each non-blank CSV record and the physical line (1-based) it starts on.

    INVALID_CSV for a bad gzip stream, more than ``max_bytes`` of CSV, invalid UTF-8 or malformed CSV, raised in
    the whole-file reader's order of precedence (module docstring). A consumer that stops early because of its
    own error must ``drain`` the rest first, so that an error of these stages is raised instead.
    """
    lines = _lines(_text_pieces(_raw_pieces(chunks, max_bytes)))
    reader = csv.reader(lines, strict=True)
    last = 0
    try:
        for row in reader:
            if row:
                yield row, last + 1
            last = reader.line_num
    except csv.Error:
        line = reader.line_num
        try:
            for _ in lines:  # undecodable bytes later in the file come first
                pass
        except csv.Error:
            pass
        raise _invalid_csv(f"malformed CSV near line {line}") from None


def drain(found: Iterator[object]) -> None:
    """Read what is left of ``records(...)``: raises its error if the rest of the stream has one."""
    for _ in found:
        pass
