"""HTTP/1.1 chunked transfer coding, decoded incrementally (RFC 9112, section 7.1).

http.client decodes a chunked body one transfer chunk per ``read1()``: a streaming upstream
writes each event as one chunk, so a slot that fell behind still made one read, one decode and
one frame per event, however many were already buffered (docs/performance.md, round 4). Fed
whatever the socket holds, :class:`ChunkedDecoder` returns the payload of every chunk in it
at once, so a late slot catches up in one step.

Bounded: a size line (with its extensions) or a trailer section longer than its limit is
refused, as is anything that is not chunked coding; the body's own size is the caller's to
bound (``max_body_bytes``).
"""

from __future__ import annotations

__all__ = ["ChunkedDecoder", "ChunkedError", "MAX_SIZE_LINE", "MAX_TRAILER_BYTES"]

MAX_SIZE_LINE = 4096            # a chunk's size line, extensions included
MAX_TRAILER_BYTES = 16 * 1024   # the trailer section after the last chunk
_HEX = frozenset(b"0123456789abcdefABCDEF")

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedError(ValueError):
    """The body is not well-formed chunked coding (or broke off inside a chunk)."""


class ChunkedDecoder:
    def __init__(self) -> None:
        self._state = _SIZE
        self._left = 0                  # bytes of the current chunk's data still to come
        self._held = b""                # an incomplete size line, CRLF or trailer line
        self._trailer = 0
        self.error: ChunkedError | None = None   # raised by the next call: the payload before it came first
        self.extra = False              # bytes came after the body's end: the connection is not reusable

    @property
    def done(self) -> bool:
        """The last chunk and the trailer section have been read."""
        return self._state == _DONE

    def feed(self, data: bytes) -> bytes:
        """The payload in ``data`` (and in what was held back from the last call). What is not
        chunked coding raises, once the payload before it was returned."""
        if self.error is not None:
            raise self.error
        if self._held:
            data, self._held = self._held + data, b""
        out: list[bytes] = []
        try:
            self._decode(data, out)
        except ChunkedError as exc:
            if not out:
                raise
            self.error = exc
        return b"".join(out)

    def _decode(self, data: bytes, out: list[bytes]) -> None:
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state == _DATA:
                take = min(self._left, end - pos)
                out.append(data[pos:pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _DATA_END
            elif state == _DATA_END:
                if end - pos < 2:
                    self._held = data[pos:]
                    break
                if data[pos:pos + 2] != b"\r\n":
                    raise ChunkedError("a chunk's data is not followed by CRLF")
                pos += 2
                self._state = _SIZE
            elif state == _DONE:
                self.extra = True
                break
            else:
                line_end = data.find(b"\n", pos)
                if line_end < 0:
                    self._hold_line(data[pos:], state)
                    break
                line = data[pos:line_end]
                pos = line_end + 1
                if state == _SIZE:
                    self._size(line)
                else:
                    self._trailer_line(line)

    def finish(self) -> None:
        """The connection ended: raises unless the body had ended."""
        if self.error is not None:
            raise self.error
        if self._state != _DONE:
            raise ChunkedError("the body ended before its last chunk")

    def _hold_line(self, partial: bytes, state: int) -> None:
        limit = MAX_SIZE_LINE if state == _SIZE else MAX_TRAILER_BYTES - self._trailer
        if len(partial) > limit:
            raise ChunkedError("a chunk size line is too long" if state == _SIZE else "the trailer is too long")
        self._held = partial

    def _size(self, line: bytes) -> None:
        if len(line) > MAX_SIZE_LINE:
            raise ChunkedError("a chunk size line is too long")
        digits = line.split(b";", 1)[0].strip(b" \t\r")
        if not digits or len(digits) > 16 or not _HEX.issuperset(digits):
            raise ChunkedError("a chunk size is not a hexadecimal number")
        size = int(digits, 16)
        if size:
            self._left, self._state = size, _DATA
        else:
            self._state = _TRAILER

    def _trailer_line(self, line: bytes) -> None:
        self._trailer += len(line) + 1
        if self._trailer > MAX_TRAILER_BYTES:
            raise ChunkedError("the trailer is too long")
        if line in (b"", b"\r"):
            self._state = _DONE
