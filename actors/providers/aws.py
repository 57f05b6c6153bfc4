"""The two AWS protocols Bedrock needs, small enough to own: Signature Version 4 request
signing and the binary event-stream framing (``application/vnd.amazon.eventstream``).

References: the SigV4 signing process and its published test suite, and the event-stream
encoding (prelude, headers, payload, CRC32s) used by every AWS streaming API.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from actors.core.credentials import Secret
from actors.errors import AuthenticationError, StreamError, ResponseTooLarge
from actors.providers.base import json_or_none

__all__ = ["AwsCredentials", "aws_credentials", "amz_date", "sign_v4", "EventStreamDecoder", "encode_event"]


@dataclass(frozen=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


_CREDENTIAL_FORMS = ("a mapping or JSON object with access_key_id and secret_access_key (or AWS credential_process "
                     "output), or 'ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]'")


def aws_credentials(secret: Secret | None, provider: str = "bedrock") -> AwsCredentials:
    """AWS credentials from a session's secret. Errors say which forms work, never what was given."""
    value = secret.reveal() if secret is not None else None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            value = json_or_none(text)
        elif text.count(":") in (1, 2):  # secret keys and session tokens never contain ":"
            value = dict(zip(("access_key_id", "secret_access_key", "session_token"), text.split(":")))
    if isinstance(value, Mapping):
        key_id = value.get("access_key_id") or value.get("AccessKeyId")
        secret_key = value.get("secret_access_key") or value.get("SecretAccessKey")
        if isinstance(key_id, str) and key_id and isinstance(secret_key, str) and secret_key:
            token = value.get("session_token") or value.get("SessionToken")
            return AwsCredentials(key_id, secret_key, token if isinstance(token, str) and token else None)
    raise AuthenticationError(f"AWS credentials must be {_CREDENTIAL_FORMS}", provider=provider)


# --- Signature Version 4 -----------------------------------------------------------------

def amz_date(unix: float | None = None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if unix is None else unix))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _host(url_parts: Any) -> str:
    host = url_parts.netloc.rpartition("@")[2]
    default = {"https": ":443", "http": ":80"}.get(url_parts.scheme)
    return host[: -len(default)] if default and host.endswith(default) else host


def _canonical_query(query: str) -> str:
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in parse_qsl(query, keep_blank_values=True))
    return "&".join(f"{k}={v}" for k, v in pairs)


def sign_v4(method: str, url: str, body: bytes, credentials: AwsCredentials, region: str, service: str,
            date: str, headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """The headers that sign one request: host, x-amz-date, x-amz-security-token (with a
    session token), the given ``headers`` (signed too) and authorization.

    ``url`` is the URL as sent, its path already percent-encoded. Every service but S3 wants
    the path encoded once more in the canonical request, so ``:`` in a Bedrock model id
    (``%3A`` on the wire) is signed as ``%253A``.
    """
    parts = urlsplit(url)
    signed = {name.lower(): value for name, value in (headers or {}).items()}
    signed["host"] = _host(parts)
    signed["x-amz-date"] = date
    if credentials.session_token:
        signed["x-amz-security-token"] = credentials.session_token
    names = sorted(signed)
    canonical_headers = "".join(f"{name}:{' '.join(signed[name].split())}\n" for name in names)
    canonical = "\n".join((method.upper(), quote(parts.path or "/", safe="/~"), _canonical_query(parts.query),
                           canonical_headers, ";".join(names), _sha256(body)))
    scope = f"{date[:8]}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(("AWS4-HMAC-SHA256", date, scope, _sha256(canonical.encode())))
    key = ("AWS4" + credentials.secret_access_key).encode()
    for part in (date[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    signed["authorization"] = (f"AWS4-HMAC-SHA256 Credential={credentials.access_key_id}/{scope}, "
                               f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return signed


# --- event-stream framing ------------------------------------------------------------------

# total length, headers length, CRC32 of those 8 bytes; the message ends with a CRC32 of all before it.
_PRELUDE = struct.Struct(">III")
_MIN_MESSAGE = _PRELUDE.size + 4
# The AWS limits (16 MiB payload, 128 KiB headers): a larger length is corruption, not a message to wait for.
_MAX_MESSAGE = _MIN_MESSAGE + 16 * 1024 * 1024 + 128 * 1024
# Header value types with a fixed width: byte, short, integer, long, timestamp (ms), uuid.
_FIXED = {2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q", 9: "16s"}


def _headers(data: bytes) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    i = 0
    while i < len(data):
        size = data[i]
        name = data[i + 1:i + 1 + size].decode("utf-8")
        kind = data[i + 1 + size]
        i += 2 + size
        if kind in (0, 1):
            value: Any = kind == 0
        elif kind in _FIXED:
            (value,) = struct.unpack_from(_FIXED[kind], data, i)
            i += struct.calcsize(_FIXED[kind])
        elif kind in (6, 7):
            (length,) = struct.unpack_from(">H", data, i)
            value = data[i + 2:i + 2 + length]
            value = value.decode("utf-8") if kind == 7 else bytes(value)
            i += 2 + length
        else:
            raise StreamError(f"event-stream header {name!r} has unknown type {kind}")
        headers[name] = value
    if i != len(data):
        raise StreamError("event-stream headers overrun their length")
    return headers


class EventStreamDecoder:
    """Messages, as (headers, payload), from an event stream fed in arbitrary pieces.

    Both CRCs of every message are checked: a flipped bit is a StreamError, never an event.
    """

    def __init__(self, provider: str = "bedrock", max_message: int | None = None) -> None:
        self._buffer = bytearray()
        self._provider = provider
        self._max_message = max_message  # the deployment's max_line_bytes: one message is one event

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= _PRELUDE.size:
            total, headers_length, prelude_crc = _PRELUDE.unpack_from(self._buffer)
            if zlib.crc32(self._buffer[:8]) != prelude_crc:
                raise StreamError("event-stream prelude CRC mismatch", provider=self._provider)
            if not _MIN_MESSAGE <= total <= _MAX_MESSAGE or headers_length > total - _MIN_MESSAGE:
                raise StreamError(f"event-stream message of impossible length {total}", provider=self._provider)
            if self._max_message is not None and total > self._max_message:
                raise ResponseTooLarge(f"an event-stream message of {total} bytes passed the deployment's "
                                       f"max_line_bytes ({self._max_message} bytes)", provider=self._provider,
                                       limit="max_line_bytes", limit_bytes=self._max_message)
            if len(self._buffer) < total:
                break
            message = bytes(self._buffer[:total])
            del self._buffer[:total]
            if zlib.crc32(message[:-4]) != struct.unpack_from(">I", message, total - 4)[0]:
                raise StreamError("event-stream message CRC mismatch", provider=self._provider)
            try:
                headers = _headers(message[_PRELUDE.size:_PRELUDE.size + headers_length])
            except (IndexError, struct.error, UnicodeDecodeError):
                raise StreamError("event-stream headers are malformed", provider=self._provider) from None
            messages.append((headers, message[_PRELUDE.size + headers_length:-4]))
        return messages

    def close(self) -> list[tuple[dict[str, Any], bytes]]:
        if self._buffer:
            raise StreamError(f"the event stream ended {len(self._buffer)} bytes into a message",
                              provider=self._provider)
        return []


def encode_event(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers (the mock provider's side of the wire)."""
    head = b"".join(bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v
                    for n, v in ((name.encode(), value.encode()) for name, value in headers.items()))
    prelude = struct.pack(">II", _MIN_MESSAGE + len(head) + len(payload), len(head))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + head + payload
    return message + struct.pack(">I", zlib.crc32(message))
