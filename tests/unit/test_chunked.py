"""HTTP/1.1 chunked coding decoded incrementally (actors/core/chunked.py): whatever the socket
holds in, the payload of every chunk in it out, bounded."""

from __future__ import annotations

import pytest

from actors.core.chunked import MAX_SIZE_LINE, MAX_TRAILER_BYTES, ChunkedDecoder, ChunkedError

EVENTS = [b"data: {\"a\": 1}\n\n", b"data: {\"b\": 22}\n\n", b"x" * 300, b"data: [DONE]\n\n"]


def chunked(parts: list[bytes], trailer: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n" + trailer + b"\r\n"


def test_everything_buffered_comes_out_in_one_call():
    decoder = ChunkedDecoder()
    assert decoder.feed(chunked(EVENTS)) == b"".join(EVENTS)
    assert decoder.done and not decoder.extra
    decoder.finish()


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64])
def test_any_split_of_the_wire_gives_the_same_payload_in_order(step):
    wire = chunked(EVENTS, trailer=b"x-checksum: 1\r\n")
    decoder = ChunkedDecoder()
    out = b"".join(decoder.feed(wire[i:i + step]) for i in range(0, len(wire), step))
    assert out == b"".join(EVENTS) and decoder.done


def test_extensions_and_upper_case_sizes_are_read():
    decoder = ChunkedDecoder()
    assert decoder.feed(b"A;name=value\r\n0123456789\r\n0\r\n\r\n") == b"0123456789" and decoder.done


def test_bytes_after_the_end_mark_the_connection_unfit_for_reuse():
    decoder = ChunkedDecoder()
    assert decoder.feed(chunked([b"ok"]) + b"HTTP/1.1 200 OK\r\n") == b"ok"
    assert decoder.done and decoder.extra


@pytest.mark.parametrize("wire,why", [
    (b"zz\r\nab\r\n", "hexadecimal"),
    (b"0x2\r\nab\r\n", "hexadecimal"),
    (b"\r\n", "hexadecimal"),
    (b"2\r\nabXY", "CRLF"),
    (b"1" * (MAX_SIZE_LINE + 1), "too long"),
    (b"0\r\n" + b"x: y\r\n" * (MAX_TRAILER_BYTES // 6 + 1), "trailer is too long"),
])
def test_what_is_not_chunked_coding_is_refused(wire, why):
    decoder = ChunkedDecoder()
    with pytest.raises(ChunkedError, match=why):
        decoder.feed(wire)
        decoder.feed(b"")   # the payload before the fault came first: the error comes with the next call


def test_a_body_that_ends_inside_a_chunk_is_an_error_at_the_end():
    decoder = ChunkedDecoder()
    assert decoder.feed(b"5\r\nabc") == b"abc"
    with pytest.raises(ChunkedError, match="before its last chunk"):
        decoder.finish()


def test_the_payload_before_a_malformed_part_is_returned_first_and_the_error_comes_next():
    decoder = ChunkedDecoder()
    assert decoder.feed(b"3\r\nabc\r\nnot-a-size\r\n") == b"abc"
    with pytest.raises(ChunkedError, match="hexadecimal"):
        decoder.feed(b"")
    with pytest.raises(ChunkedError):
        decoder.finish()


def test_a_held_partial_line_is_bounded_by_what_its_part_allows_and_named_for_it():
    decoder = ChunkedDecoder()
    line = b"0" * 16 + b";" + b"x" * (MAX_SIZE_LINE - 17)
    assert decoder.feed(line) == b"" and decoder.feed(b"\n") == b""    # exactly the bound is allowed
    decoder.feed(b"x" * (MAX_SIZE_LINE + 100))                           # a trailer line may be longer
    decoder.feed(b"\r\n\r\n")
    assert decoder.done
    too_long = ChunkedDecoder()
    with pytest.raises(ChunkedError, match="^a chunk size line is too long$"):
        too_long.feed(b"1" * (MAX_SIZE_LINE + 1))
        too_long.feed(b"")
    trailer = ChunkedDecoder()
    trailer.feed(b"0\r\n" + b"t" * (MAX_TRAILER_BYTES // 2) + b"\r\n")
    with pytest.raises(ChunkedError, match="^the trailer is too long$"):
        trailer.feed(b"t" * (MAX_TRAILER_BYTES // 2))                    # with the lines before: too long
        trailer.feed(b"")


def test_a_trailer_of_exactly_the_bound_is_read_and_errors_are_named_exactly():
    decoder = ChunkedDecoder()
    decoder.feed(b"0\r\n" + b"x" * (MAX_TRAILER_BYTES - 4) + b"\r\n\r\n")   # the end line counts too
    assert decoder.done
    cut = ChunkedDecoder()
    cut.feed(b"5\r\nab")
    with pytest.raises(ChunkedError, match="^the body ended before its last chunk$"):
        cut.finish()
    long = ChunkedDecoder()
    with pytest.raises(ChunkedError, match="^the trailer is too long$"):
        long.feed(b"0\r\n" + b"x" * (MAX_TRAILER_BYTES - 3) + b"\r\n\r\n")
        long.feed(b"")


def test_bare_newlines_end_a_body_too():
    decoder = ChunkedDecoder()
    assert decoder.feed(b"2\nok\r\n0\n\n") == b"ok" and decoder.done
