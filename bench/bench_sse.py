"""Throughput of actors.core.sse against sseclient-py on an OpenAI-style token stream.

Usage: python bench/bench_sse.py [--mb 20] [--repeat 5] [--chunk 1024]

Both decoders get the same in-memory stream cut into fixed-size chunks; runs
alternate between them, and the best and median time of each are reported.
Both must produce the same event data, or the script exits with an error.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sseclient  # noqa: E402

from actors.core.sse import decode_sse_stream  # noqa: E402

_PIECES = [
    "Hello", " world", ",", " the", " quick", " brown", " fox", " jumps", " über",
    " naïve", " café", " 東京", " 日本語", " 🙂", " ✓", " —", " Ωmega", "\n", " é", "!",
]


def build_stream(megabytes: float, seed: int = 1) -> bytes:
    """An OpenAI chat-completions stream of about ``megabytes`` MB."""
    rng = random.Random(seed)
    target = int(megabytes * 1_000_000)
    created = 1_717_000_000
    parts: list[bytes] = []
    size = 0
    n = 0
    while size < target:
        n += 1
        content = "".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 3)))
        payload = {
            "id": f"chatcmpl-{n // 500:08d}AbCdEfGhIjKlMnOpQr",
            "object": "chat.completion.chunk",
            "created": created + n // 50,
            "model": "gpt-4o-mini",
            "system_fingerprint": "fp_0ba0d124f1",
            "choices": [
                {"index": 0, "delta": {"content": content}, "logprobs": None, "finish_reason": None}
            ],
        }
        line = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        event = f"data: {line}\n\n".encode()
        parts.append(event)
        size += len(event)
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def split(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def run_ours(chunks: list[bytes]) -> list[str]:
    return [event.data for event in decode_sse_stream(chunks)]


def run_sseclient(chunks: list[bytes]) -> list[str]:
    return [event.data for event in sseclient.SSEClient(iter(chunks)).events()]


def timed(fn, chunks: list[bytes]) -> tuple[float, list[str]]:
    gc.collect()
    start = time.perf_counter()
    result = fn(chunks)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=20.0, help="stream size in MB (default 20)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per decoder (default 5)")
    parser.add_argument("--chunk", type=int, default=1024, help="bytes per chunk (default 1024)")
    args = parser.parse_args()

    body = build_stream(args.mb)
    chunks = split(body, args.chunk)
    contestants = {"actors.core.sse": run_ours, "sseclient-py": run_sseclient}
    times: dict[str, list[float]] = {name: [] for name in contestants}
    results: dict[str, list[str]] = {}
    for _ in range(args.repeat):
        for name, fn in contestants.items():
            elapsed, results[name] = timed(fn, chunks)
            times[name].append(elapsed)

    ours, theirs = results["actors.core.sse"], results["sseclient-py"]
    if ours != theirs:
        sys.exit(f"MISMATCH: the decoders disagree ({len(ours)} vs {len(theirs)} events)")

    mb = len(body) / 1_000_000
    print(
        f"Python {sys.version.split()[0]}: {mb:.1f} MB, {len(ours):,} events, "
        f"{len(chunks):,} chunks of {args.chunk} B, {args.repeat} runs each (best / median)"
    )
    best = {name: min(t) for name, t in times.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    for name in contestants:
        print(
            f"  {name:<13} {best[name] * 1000:7.1f} / {median[name] * 1000:7.1f} ms"
            f"  {mb / best[name]:6.1f} / {mb / median[name]:6.1f} MB/s"
            f"  {len(ours) / best[name]:>9,.0f} / {len(ours) / median[name]:>9,.0f} events/s"
        )
    speedup_best = best["sseclient-py"] / best["actors.core.sse"]
    speedup_median = median["sseclient-py"] / median["actors.core.sse"]
    print(f"  speed-up      {speedup_best:.2f}x / {speedup_median:.2f}x")


if __name__ == "__main__":
    main()
