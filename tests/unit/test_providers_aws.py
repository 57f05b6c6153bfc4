"""SigV4 signing against AWS's published vectors, the event-stream framing against the
aws-c-event-stream vectors, AWS credential forms, and the mock's Bedrock side of the wire."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors import errors as E
from actors.core.credentials import Secret
from actors.providers.aws import AwsCredentials, EventStreamDecoder, aws_credentials, encode_event, sign_v4

# --- SigV4 -----------------------------------------------------------------------------------

# The credentials, date and region of the SigV4 test suite and of the IAM example in the docs.
SUITE = AwsCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SUITE_TOKEN = ("AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfK"
               "D8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8"
               "Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iS"
               "IlTJabIQwj2ICCR/oLxBA==")
DATE = "20150830T123600Z"


@pytest.mark.parametrize("name,method,url,body,headers,signed,signature", [
    ("get-vanilla", "GET", "https://example.amazonaws.com/", b"", {}, "host;x-amz-date",
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("get-vanilla-query-order-key-case", "GET", "https://example.amazonaws.com/?Param2=value2&Param1=value1", b"", {},
     "host;x-amz-date", "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
    ("get-header-value-trim", "GET", "https://example.amazonaws.com/", b"",
     {"My-Header1": " value1", "My-Header2": '"a   b   c"'}, "host;my-header1;my-header2;x-amz-date",
     "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"),
    ("post-vanilla", "POST", "https://example.amazonaws.com/", b"", {}, "host;x-amz-date",
     "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    ("post-header-key-sort", "POST", "https://example.amazonaws.com/", b"", {"My-Header1": "value1"},
     "host;my-header1;x-amz-date", "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"),
    ("post-x-www-form-urlencoded", "POST", "https://example.amazonaws.com/", b"Param1=value1",
     {"Content-Type": "application/x-www-form-urlencoded"}, "content-type;host;x-amz-date",
     "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
])
def test_sigv4_reproduces_the_published_test_suite(name, method, url, body, headers, signed, signature):
    out = sign_v4(method, url, body, SUITE, "us-east-1", "service", DATE, headers)
    assert out["authorization"] == (f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
                                    f"SignedHeaders={signed}, Signature={signature}")
    assert out["x-amz-date"] == DATE and out["host"] == "example.amazonaws.com"


def test_sigv4_signs_a_session_token_as_in_post_sts_header_before():
    creds = AwsCredentials(SUITE.access_key_id, SUITE.secret_access_key, SUITE_TOKEN)
    out = sign_v4("POST", "https://example.amazonaws.com/", b"", creds, "us-east-1", "service", DATE)
    assert out["x-amz-security-token"] == SUITE_TOKEN
    assert out["authorization"].endswith("SignedHeaders=host;x-amz-date;x-amz-security-token, "
                                         "Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead")


def test_sigv4_reproduces_the_iam_example_of_the_documentation():
    out = sign_v4("GET", "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08", b"", SUITE, "us-east-1",
                  "iam", DATE, {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    assert out["authorization"].endswith("SignedHeaders=content-type;host;x-amz-date, "
                                         "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7")


def test_sigv4_encodes_the_path_twice_and_leaves_default_ports_out_of_host():
    path = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    colon = sign_v4("POST", "https://bedrock-runtime.us-east-1.amazonaws.com:443" + path, b"{}", SUITE,
                    "us-east-1", "bedrock", DATE)
    assert colon["host"] == "bedrock-runtime.us-east-1.amazonaws.com"
    # Signing the once-encoded path as if it were raw gives another signature: the %3A was encoded again.
    raw = sign_v4("POST", "https://bedrock-runtime.us-east-1.amazonaws.com" + path.replace("%3A", ":"), b"{}", SUITE,
                  "us-east-1", "bedrock", DATE)
    assert colon["authorization"] != raw["authorization"]
    assert sign_v4("GET", "http://127.0.0.1:8123/", b"", SUITE, "r", "s", DATE)["host"] == "127.0.0.1:8123"


@pytest.mark.parametrize("value", [
    {"access_key_id": "AKID", "secret_access_key": "S/+k", "session_token": "T"},
    '{"AccessKeyId": "AKID", "SecretAccessKey": "S/+k", "SessionToken": "T", "Version": 1}',
    "AKID:S/+k:T",
])
def test_aws_credentials_come_in_three_forms(value):
    creds = aws_credentials(Secret(value))
    assert creds == AwsCredentials("AKID", "S/+k", "T")
    assert "S/+k" not in repr(creds) and "T'" not in repr(creds)
    assert aws_credentials(Secret("AKID:S/+k")).session_token is None


# --- event-stream framing --------------------------------------------------------------------

# aws-c-event-stream's multiple-message vector: an empty message, a payload-only message, and a
# message with one string header (content-type: application/json).
VECTOR = (bytes.fromhex("000000100000000005c248eb7d98c8ff")
          + bytes.fromhex("0000001d00000000fd528c5a") + b"{'foo':'bar'}" + bytes.fromhex("c3653936")
          + bytes.fromhex("0000003d0000002007fd83960c") + b"content-type" + bytes.fromhex("070010")
          + b"application/json" + b"{'foo':'bar'}" + bytes.fromhex("8d9c08b1"))
EXPECTED = [({}, b""), ({}, b"{'foo':'bar'}"), ({"content-type": "application/json"}, b"{'foo':'bar'}")]


def test_event_stream_decodes_the_published_vector_in_every_split():
    for size in range(1, len(VECTOR) + 1):
        decoder = EventStreamDecoder()
        messages = []
        for start in range(0, len(VECTOR), size):
            messages += decoder.feed(VECTOR[start:start + size])
        assert messages == EXPECTED and decoder.close() == []


def test_event_stream_encoder_writes_the_published_vector():
    assert b"".join(encode_event(h, p) for h, p in EXPECTED) == VECTOR


def frame(headers: bytes, payload: bytes) -> bytes:
    prelude = struct.pack(">II", 16 + len(headers) + len(payload), len(headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


def test_event_stream_reads_every_header_type():
    headers = (b"\x01t\x00" + b"\x01f\x01" + b"\x01b\x02\xff" + b"\x01s\x03\x01\x00" + b"\x01i\x04\x00\x00\x00\x2a"
               + b"\x01l\x05" + struct.pack(">q", -7) + b"\x01y\x06\x00\x02\x00\x01" + b"\x01z\x07\x00\x02hi"
               + b"\x01d\x08" + struct.pack(">q", 1_700_000_000_000) + b"\x01u\x09" + bytes(range(16)))
    (decoded, payload), = EventStreamDecoder().feed(frame(headers, b"{}"))
    assert decoded == {"t": True, "f": False, "b": -1, "s": 256, "i": 42, "l": -7, "y": b"\x00\x01", "z": "hi",
                       "d": 1_700_000_000_000, "u": bytes(range(16))}
    assert payload == b"{}"


@pytest.mark.parametrize("corrupt,match", [
    (lambda b: b[:8] + b"\x00\x00\x00\x00" + b[12:], "prelude CRC"),
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "message CRC"),
    (lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:], "message CRC"),
    (lambda b: frame(b"\x01x\x0b", b""), "unknown type 11"),
    (lambda b: frame(b"\x05ab", b""), "malformed"),
    (lambda b: (lambda p: p + struct.pack(">I", zlib.crc32(p)))(struct.pack(">II", 1 << 30, 0)), "impossible length"),
])
def test_event_stream_damage_is_a_stream_error(corrupt, match):
    data = corrupt(VECTOR[45:])
    with pytest.raises(E.StreamError, match=match):
        EventStreamDecoder().feed(data)


def test_event_stream_that_ends_inside_a_message_is_a_stream_error():
    decoder = EventStreamDecoder()
    assert decoder.feed(VECTOR[:20]) == [({}, b"")]
    with pytest.raises(E.StreamError, match="ended 4 bytes into a message"):
        decoder.close()


@given(st.lists(st.tuples(st.dictionaries(st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) < 256),
                                          st.text(max_size=50), max_size=4), st.binary(max_size=200)), max_size=5),
       st.data())
def test_event_stream_round_trips_in_any_split(messages, data):
    raw = b"".join(encode_event(h, p) for h, p in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=10)))
    decoder, out, start = EventStreamDecoder(), [], 0
    for cut in cuts + [len(raw)]:
        out += decoder.feed(raw[start:cut])
        start = cut
    assert out == [(h, p) for h, p in messages] and decoder.close() == []


# --- the mock's Bedrock ----------------------------------------------------------------------
