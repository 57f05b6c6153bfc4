"""What of an upstream's error text may reach a caller: the provider's message, never its internals.

A provider (or an OpenAI-compatible server in front of a model) sometimes answers an error
with a stack trace: its source files, its paths, its code. The caller gets the message
without them; the node's log keeps the whole body. Pure: text in, text out.
"""

from __future__ import annotations

import re

__all__ = ["strip_internals", "trimmed", "for_log", "LOG_BODY_CHARS"]

LOG_BODY_CHARS = 16 * 1024    # of an upstream's error body, in the node's log

# One line of a stack trace, in the languages servers are written in.
_FRAME_LINES = re.compile(
    r"""^\s*(?:
        Traceback\ \(most\ recent\ call\ last\):.*        # Python's header
      | File\ "[^"]*",\ line\ \d+.*                       # Python: File "...", line N, in f
      | at\ [\w$.<>\[\]/:-]+\s*\(.*\)\s*$                # Java, JavaScript: at pkg.Class.method(File.java:12)
      | at\ (?:async\ )?[^\s]*\s*\(?[/\\]?[^\s()]*:\d+(?::\d+)?\)?\s*$   # JavaScript: at /app/x.js:1:7
      | goroutine\ \d+\ \[.*\]:\s*$                      # Go: goroutine 1 [running]:
      | [\w./*()-]+\([^)]*\)\s*$                          # Go: main.main() (a call line before its file)
      | (?:[A-Za-z]:)?[/\\][^\s:]+\.\w+:\d+(?:\ \+0x[0-9a-f]+)?\s*$   # Go: /src/main.go:12 +0x1d
      | \.\.\.\ \d+\ more\s*$                             # Java: ... 12 more
      | During\ handling\ of\ the\ above\ exception.*    # Python: chained exceptions
      | The\ above\ exception\ was\ the\ direct\ cause.*
    )""", re.VERBOSE)
_SOURCE_EXT = r"(?:py|pyc|pyx|js|mjs|cjs|ts|go|java|kt|scala|rb|rs|php|cs|cpp|cc|c|h|so|dll|jar|class|ex|exs)"
# A file path: a source file anywhere, or any path under a filesystem root a server's files live in.
# URL paths (/v1/chat/completions) are the provider's own vocabulary and stay.
_PATHS = re.compile(
    r"(?:[A-Za-z]:\\|\\\\)[^\s\"'<>|]+"                                              # C:\... \\server\...
    r"|(?<![\w/.:-])(?:~|\.{1,2})?/(?:[\w.@+~-]+/)*[\w.@+~-]+\." + _SOURCE_EXT + r"\b(?::\d+)*"   # .../x.py:12
    r"|(?<![\w/.:-])/(?:home|usr|opt|var|srv|tmp|etc|root|lib|lib64|app|apps|workspace|mnt|proc|sys|dev|run"
    r"|Users|private|nix|snap|code|src|data)(?:/[\w.@+~-]+)+/?")
_BLANKS = re.compile(r"\n{3,}")


def strip_internals(text: str) -> str:
    """``text`` without stack-trace lines and with file paths replaced by ``[path]``.

    A body that was nothing but a trace keeps its last line (the exception and its
    message), so the caller still learns what the upstream said went wrong.
    """
    if not isinstance(text, str) or not text:
        return text
    lines = text.splitlines()
    kept: list[str] = []
    dropped = False
    skip_code = False
    for line in lines:
        if _FRAME_LINES.match(line):
            dropped = True
            # A Python frame is followed by the source line it ran, indented deeper.
            skip_code = line.lstrip().startswith("File ")
            continue
        if skip_code and line.startswith((" ", "\t")) and line.strip():
            skip_code = False
            continue
        skip_code = False
        kept.append(line)
    out = "\n".join(kept).strip()
    out = _PATHS.sub("[path]", out)
    out = _BLANKS.sub("\n\n", out)
    if dropped:
        out = (out + " (stack trace removed)") if out else "the upstream answered with a stack trace (removed)"
    return out


def _text(body: bytes | str | None) -> str:
    if isinstance(body, (bytes, bytearray)):
        return bytes(body).decode("utf-8", "replace")
    return body if isinstance(body, str) else ""


def trimmed(body: bytes | str | None, caller_chars: int = 500) -> bool:
    """Did the caller get less than this body says (a trace or path removed, or cut to length)?"""
    text = _text(body).strip()
    return len(text) > caller_chars or strip_internals(text) != text


def for_log(body: bytes | str | None, limit: int = LOG_BODY_CHARS) -> str:
    """An upstream's whole error body for the node's log: secrets masked, bounded, on one line."""
    from actors.core.classify import _SECRET_PATTERNS   # the masks of every message (classify imports this module)

    text = _SECRET_PATTERNS.sub("[redacted]", _text(body))
    cut = len(text) > limit
    return text[:limit].replace("\n", "\\n") + ("…" if cut else "")
