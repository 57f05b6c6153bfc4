"""The stream channel's signed frames: what a reader believes, and what it refuses."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.core.frames import (FrameCodec, FrameDecoder, FrameRefused, MAC_BYTES, chunk_body, chunk_fields)
from actors.runtime.stream_sender import _target
from actors.security import wire


def ring(*lines: str) -> wire.KeyRing:
    return wire.KeyRing(wire.parse_keys("\n".join(lines), "test"), "test")


A = f"a:{'a' * 40}"
B = f"b:{'b' * 40}"


def test_a_frame_round_trips_and_splits_anywhere():
    codec = FrameCodec(ring(A))
    frames = codec.encode({"hello": "t"}) + codec.encode(chunk_body("req_1", 0, "héllo", []))
    for cut in range(len(frames) + 1):
        decoder = FrameDecoder(FrameCodec(ring(A)))
        bodies = decoder.feed(frames[:cut]) + decoder.feed(frames[cut:])
        assert bodies == [{"hello": "t"}, {"r": "req_1", "s": 0, "t": "héllo"}]


@given(st.binary(min_size=1, max_size=64), st.integers(min_value=4, max_value=200))
def test_any_altered_byte_is_refused(noise, position):
    frame = bytearray(FrameCodec(ring(A)).encode(chunk_body("req_1", 3, "some text", [])))
    position = 4 + position % (len(frame) - 4)    # after the length: the signed part or the MAC
    frame[position] ^= noise[0] or 1
    with pytest.raises(FrameRefused):
        FrameDecoder(FrameCodec(ring(A))).feed(bytes(frame))


def test_a_frame_signed_with_an_unknown_key_is_refused_and_any_key_of_the_ring_is_accepted():
    from_b = FrameCodec(ring(B)).encode({"hello": "t"})
    with pytest.raises(FrameRefused, match="key"):
        FrameDecoder(FrameCodec(ring(A))).feed(from_b)
    assert FrameDecoder(FrameCodec(ring(A, B))).feed(from_b) == [{"hello": "t"}]   # a rotation's old key


def test_an_oversized_length_is_refused_before_any_body_is_buffered():
    decoder = FrameDecoder(FrameCodec(ring(A)), max_frame_bytes=1024)
    with pytest.raises(FrameRefused, match="1025 bytes"):
        decoder.feed(struct.pack(">I", 1025))


def test_a_signed_body_that_is_not_a_json_object_is_refused():
    key = ring(A).signing
    for body in (b"[1, 2]", b"\xff not json"):
        signed = bytes([len(key.key_id)]) + key.key_id.encode() + body
        frame = struct.pack(">I", len(signed) + MAC_BYTES) + signed + key.mac(signed)
        with pytest.raises(FrameRefused):
            FrameDecoder(FrameCodec(ring(A))).feed(frame)


def test_chunk_fields_accept_only_well_formed_chunks():
    assert chunk_fields(chunk_body("r", 2, "x", [{"index": 0}])) == ("r", 2, "x", [{"index": 0}])
    for bad in ({"s": 0}, {"r": "r", "s": -1}, {"r": "r", "s": True}, {"r": "r", "s": "0"}, {"r": 1, "s": 0},
                {"r": "r", "s": 0, "t": 5}, {"r": "r", "s": 0, "c": ["x"]}, {"r": "r", "s": 0, "c": {}}):
        assert chunk_fields(bad) is None, json.dumps(bad)


def test_a_worker_only_takes_a_port_and_a_token_from_a_request():
    assert _target({"port": 4000, "token": "t"}) == (4000, "t")
    for bad in (None, "127.0.0.1:4000", {"port": 0, "token": "t"}, {"port": 70000, "token": "t"},
                {"port": True, "token": "t"}, {"port": "4000", "token": "t"}, {"port": 4000, "token": ""},
                {"port": 4000, "token": "t" * 65}, {"port": 4000}):
        assert _target(bad) is None, bad


def test_a_first_frame_bound_applies_to_the_greeting_only():
    codec = FrameCodec(ring(A))
    hello, big = codec.encode({"hello": "t"}), codec.encode(chunk_body("req_1", 0, "x" * 5000, []))
    decoder = FrameDecoder(FrameCodec(ring(A)), first_frame_bytes=512)
    assert len(decoder.feed(hello + big)) == 2        # the greeting, then a chunk larger than its bound
    with pytest.raises(FrameRefused, match="at most 512"):
        FrameDecoder(FrameCodec(ring(A)), first_frame_bytes=512).feed(big)


def test_the_wire_form_of_a_frame_is_compact_utf8_json_after_the_key_id():
    key = ring(A).signing
    frame = FrameCodec(ring(A)).encode({"r": "x", "s": 0, "t": "é"})
    signed = b"\x01a" + '{"r":"x","s":0,"t":"é"}'.encode("utf-8")
    assert frame == struct.pack(">I", len(signed) + MAC_BYTES) + signed + key.mac(signed)


def _signed(body: bytes) -> bytes:
    key = ring(A).signing
    signed = bytes([len(key.key_id)]) + key.key_id.encode() + body
    return struct.pack(">I", len(signed) + MAC_BYTES) + signed + key.mac(signed)


@pytest.mark.parametrize("frame, reason", [
    (struct.pack(">I", MAC_BYTES) + b"\x00" * MAC_BYTES, "^truncated frame$"),
    (struct.pack(">I", MAC_BYTES + 1) + b"\x00" * (MAC_BYTES + 1), "^signed with a key this process does not accept$"),
    (_signed(b"{}")[:-1] + b"\x00", "^bad signature$"),
    (_signed(b""), "^not JSON$"),
    (_signed(b"[1]"), "^not a JSON object$"),
])
def test_each_refusal_says_why(frame, reason):
    with pytest.raises(FrameRefused, match=reason):
        FrameDecoder(FrameCodec(ring(A))).feed(frame)


def test_a_frame_of_exactly_the_size_bound_is_read():
    body = chunk_body("req_1", 0, "x" * 100, [])
    frame = FrameCodec(ring(A)).encode(body)
    exact = struct.unpack(">I", frame[:4])[0]
    assert FrameDecoder(FrameCodec(ring(A)), max_frame_bytes=exact).feed(frame) == [body]
    assert chunk_fields({"r": "r", "s": 1}) == ("r", 1, "", [])
