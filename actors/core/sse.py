"""Incremental Server-Sent Events decoder.

Implements the WHATWG HTML "event stream interpretation" rules exactly:
https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

Provider conventions such as a final ``data: [DONE]`` are deliberately not
interpreted here; they arrive as ordinary events.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NoReturn

from actors.core.streaming import too_large

__all__ = ["SseChunk", "SseDecoder", "decode_sse_stream"]


@dataclass(frozen=True, slots=True)
class SseChunk:
    """One dispatched event.

    ``event`` defaults to "message"; ``id`` is the stream's last event ID when
    the event was dispatched ("" if none); ``retry`` is a valid ``retry`` field
    from this event's own block, in milliseconds.
    """

    event: str
    data: str
    id: str
    retry: int | None


# SseChunk's frozen __init__ sets each field with object.__setattr__; writing
# the slots through their descriptors halves what every event costs to build.
_new_object = object.__new__
_set_event, _set_data, _set_id, _set_retry = (
    SseChunk.__dict__[name].__set__ for name in ("event", "data", "id", "retry")
)


def _chunk(event: str, data: str, id: str, retry: int | None) -> SseChunk:
    """Same as ``SseChunk(event, data, id, retry)``, twice as fast."""
    chunk = _new_object(SseChunk)
    _set_event(chunk, event)
    _set_data(chunk, data)
    _set_id(chunk, id)
    _set_retry(chunk, retry)
    return chunk


class SseDecoder:
    """Turns an event-stream byte stream, fed in arbitrary pieces, into events.

    Any split of the same bytes yields the same events. With ``max_line`` set, a line, or
    one event's data, longer than that many bytes raises :class:`ResponseTooLarge` as soon
    as it is seen, so a runaway line is never held whole.
    """

    __slots__ = (
        "_max_line",
        "_tail_len",
        "_at_start",
        "_tail",
        "_skip_lf",
        "_data",
        "_event",
        "_id",
        "_retry",
        "_last_event_id",
    )

    def __init__(self, max_line: int | None = None) -> None:
        self._max_line = max_line
        self._last_event_id = ""
        self._reset()

    def _reset(self) -> None:
        # Until the first line is complete, a leading BOM may still be split.
        self._at_start = True
        # Bytes after the last line terminator seen so far: an unfinished line.
        # A list, so a huge line arriving in many pieces is joined only once.
        self._tail: list[bytes] = []
        self._tail_len = 0
        # The previous feed ended in CR, so a leading LF completes that CRLF.
        self._skip_lf = False
        # The data buffer as its lines; an empty list is an empty buffer.
        self._data: list[str] = []
        self._event = ""
        # The spec's last event ID buffer: last_event_id catches up at blank lines.
        self._id = ""
        self._retry: int | None = None

    @property
    def last_event_id(self) -> str:
        """The stream's last event ID, as of the most recent blank line."""
        return self._last_event_id

    def feed(self, data: bytes) -> list[SseChunk]:
        """Decode the next piece of the stream and return the events it completes."""
        if self._skip_lf and data:
            self._skip_lf = False
            if data[0] == 0x0A:
                data = data[1:]
        # Lines are found and split as bytes and each value is decoded on its
        # own. CR, LF, ":" and " " are ASCII: they never occur inside a UTF-8
        # sequence nor extend an invalid one, so this equals decoding the whole
        # stream first, and a character cut at a chunk boundary waits in the tail.
        lf = data.rfind(b"\n")
        cr = data.rfind(b"\r")
        cut = (lf if lf > cr else cr) + 1
        max_line = self._max_line
        if not cut:
            if data:
                self._tail.append(data)
                self._tail_len += len(data)
                if max_line is not None and self._tail_len > max_line:
                    self._too_large(max_line)
            return []
        block = data[:cut]
        if self._tail:
            self._tail.append(block)
            block = b"".join(self._tail)
            self._tail.clear()
        self._tail_len = 0
        if cut < len(data):
            self._tail.append(data[cut:])
            self._tail_len = len(data) - cut
            if max_line is not None and self._tail_len > max_line:
                self._too_large(max_line)
        if cr >= 0:  # the tail never holds a terminator, so this covers the block
            self._skip_lf = cr == len(data) - 1
            block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._at_start:
            self._at_start = False
            # The UTF-8 decode algorithm drops one byte order mark, no more.
            if block.startswith(b"\xef\xbb\xbf"):
                block = block[3:]
        lines = block.split(b"\n")
        lines.pop()  # block ends with a terminator, so the last item is b""
        # No line can be longer than its block: only a big block is checked line by line.
        if max_line is not None and len(block) > max_line and max(map(len, lines)) > max_line:
            self._too_large(max_line)

        events: list[SseChunk] = []
        emit = events.append
        data_lines = self._data
        event_type = self._event
        event_id = self._id
        retry = self._retry
        last_event_id = self._last_event_id
        for line in lines:
            if not line:
                last_event_id = event_id
                if data_lines:
                    emit(_chunk(event_type or "message", "\n".join(data_lines), event_id, retry))
                    data_lines = []
                event_type = ""
                retry = None
            elif line[:6] == b"data: ":  # nearly every line of a real stream
                data_lines.append(line[6:].decode("utf-8", "replace"))
            else:
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    data_lines.append(value.decode("utf-8", "replace"))
                elif name == b"event":
                    event_type = value.decode("utf-8", "replace")
                elif name == b"id":
                    if b"\0" not in value:
                        event_id = value.decode("utf-8", "replace")
                elif name == b"retry" and value.isdigit():  # ASCII digits only
                    try:
                        retry = int(value)
                    except ValueError:
                        pass  # more digits than sys.int_max_str_digits: unusable
        if max_line is not None and data_lines and sum(map(len, data_lines)) > max_line:
            self._too_large(max_line)  # one event's data, spread over many lines and feeds
        self._data = data_lines
        self._event = event_type
        self._id = event_id
        self._retry = retry
        self._last_event_id = last_event_id
        return events

    def _too_large(self, limit: int) -> NoReturn:
        self._reset()
        raise too_large("max_line_bytes", limit)

    def close(self) -> list[SseChunk]:
        """End the stream: drop any unfinished event and get ready for a new stream.

        Always returns ``[]`` because the spec discards an event that is not
        terminated by a blank line. ``last_event_id`` is kept so a caller can
        send it as ``Last-Event-ID`` when reconnecting.
        """
        self._reset()
        return []


def decode_sse_stream(chunks: Iterable[bytes]) -> Iterator[SseChunk]:
    """Yield the events of a byte stream given as an iterable of chunks."""
    decoder = SseDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
    yield from decoder.close()
