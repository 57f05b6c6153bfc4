#!/usr/bin/env python3
"""An embeddings call through the HTTP front door, through the Python client, and directly to
the upstream, in one run.

One node (an ``openai_compatible`` embeddings deployment on the mock provider, in its own
process) and its HTTP listener (actors/ops/http_process.py). Three paths make the same call:
- ``direct``: ``requests`` straight to the mock's ``/v1/embeddings`` (what the upstream itself costs);
- ``client``: ``GatewayClient.embed`` from Python (the node's own path);
- ``ingress``: ``requests`` to the listener's ``/v1/embeddings`` (client -> HTTP -> node).

The direct and ingress calls ask for ``encoding_format: base64``, as the openai SDK does by
default, and so does the gateway upstream (``--upstream-encoding``: the deployment's
``options.embeddings_encoding``, what OpenAI and Azure deployments always use), so the direct
call is exactly the gateway's upstream call. Vectors have ``--dims`` numbers (1536,
text-embedding-3-small's size). Each call
embeds ``--texts`` texts (several sizes in one run). Printed per size and path: sequential
latency p50/p99 with its ratio to the client path and to the direct path, and throughput with
4 client threads. The sequential rounds alternate paths so machine noise hits them alike.

    python bench/bench_embeddings.py --quick          # ~1 min
    python bench/bench_embeddings.py --json out.json
    python bench/bench_embeddings.py --texts 1,32,256 --dims 3072
    python bench/bench_embeddings.py --quick --upstream-encoding float   # JSON numbers upstream
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.client import GatewayClient  # noqa: E402
from actors.ops.http_process import start_http  # noqa: E402
from actors.ops.system import start_node  # noqa: E402
from actors.settings.loader import build, parse_config  # noqa: E402
from actors.settings.schema import HttpConfig  # noqa: E402
from actors.testing.mock_provider import MockProcess  # noqa: E402
from bench_http import alternating_latency, pct, thread_session, throughput  # noqa: E402

KEY = "sk-atomr-bench-0123456789abcdef"
NAMES = ("direct", "client", "ingress")


class Paths:
    def __init__(self, mock_url: str, admin_port: int, http_url: str, texts: list[str], dims: int) -> None:
        self.mock_url, self.http_url, self.texts, self.dims = mock_url, http_url, texts, dims
        self.gateway = GatewayClient(admin_port, timeout_s=60)
        self.local = threading.local()

    def session(self) -> requests.Session:
        return thread_session(self.local)

    def _body(self, model: str) -> dict:
        return {"model": model, "input": self.texts, "dimensions": self.dims, "encoding_format": "base64"}

    def direct(self) -> None:
        r = self.session().post(self.mock_url + "/v1/embeddings", json=self._body("mock-embed"), timeout=60)
        assert r.status_code == 200 and len(r.json()["data"]) == len(self.texts), r.text[:200]

    def client(self) -> None:
        result = self.gateway.embed("bench-embed", self.texts, dimensions=self.dims)
        assert len(result.embeddings) == len(self.texts) and len(result.embeddings[0]) == self.dims

    def ingress(self) -> None:
        r = self.session().post(self.http_url + "/v1/embeddings", json=self._body("bench-embed"),
                                headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        assert r.status_code == 200 and len(r.json()["data"]) == len(self.texts), r.text[:200]


def measure(paths: Paths, calls: int, seconds: float) -> dict:
    lat = alternating_latency(paths, NAMES, calls, warmup=10)
    seq = {n: {"p50": pct(v, 0.5) * 1000, "p99": pct(v, 0.99) * 1000} for n, v in lat.items()}
    rps = {n: throughput(getattr(paths, n), 4, seconds) for n in NAMES}
    return {"sequential_ms": seq, "throughput_4_threads_rps": rps,
            "ingress_added_p50_ms_over_client": seq["ingress"]["p50"] - seq["client"]["p50"],
            "ingress_added_p50_ms_over_direct": seq["ingress"]["p50"] - seq["direct"]["p50"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--calls", type=int, help="sequential calls per path and size (default 200, quick 60)")
    parser.add_argument("--seconds", type=float, help="per throughput measurement (default 5, quick 2)")
    parser.add_argument("--texts", default="1,32", help="texts per call, comma-separated sizes (default 1,32)")
    parser.add_argument("--dims", type=int, default=1536, help="numbers per vector")
    parser.add_argument("--upstream-encoding", choices=("base64", "float"), default="base64",
                        help="what the gateway asks the upstream for")
    parser.add_argument("--json")
    args = parser.parse_args()
    calls = args.calls or (60 if args.quick else 200)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    sizes = [int(n) for n in args.texts.split(",")]
    os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
    os.environ.setdefault("ATOMR_CLUSTER_SECRET", "bench:" + "h" * 43)
    mock = MockProcess()
    port = 19500 + os.getpid() % 200
    config = parse_config({"deployments": [{"name": "bench-embed", "model": "bench-embed",
                                            "provider": "openai_compatible", "upstream_model": "mock-embed",
                                            "endpoint": mock.url + "/v1", "workers": 8, "coalesce_ms": 0,
                                            "options": {"embeddings_encoding": args.upstream_encoding}}],
                           "node": {"admin_port": port, "name": "bench"}})
    node = start_node(config, console_log=False, log_file="/tmp/bench_embeddings_node.log")
    http = start_http(build(HttpConfig, {"listen": "127.0.0.1:0",
                                         "keys": [{"name": "bench", "key": {"value": KEY}}]}, "http"),
                      port, models=["bench-embed"], log_level="WARNING")
    figures: dict = {"calls": calls, "seconds": seconds, "dims": args.dims, "cpus": os.cpu_count(),
                     "upstream_encoding": args.upstream_encoding, "by_texts": {}}
    try:
        for size in sizes:
            texts = [f"benchmark text number {i}, with a few words in it to embed" for i in range(size)]
            row = figures["by_texts"][size] = measure(Paths(mock.url, port, http.url, texts, args.dims),
                                                       calls, seconds)
            seq, rps = row["sequential_ms"], row["throughput_4_threads_rps"]
            for name in NAMES:
                print(f"{size:4d} texts  {name:8s} p50 {seq[name]['p50']:7.2f} ms  p99 {seq[name]['p99']:7.2f} ms  "
                      f"ratio to client {seq[name]['p50'] / seq['client']['p50']:.3f}  "
                      f"to direct {seq[name]['p50'] / seq['direct']['p50']:.3f}  4 threads {rps[name]:7.1f}/s",
                      flush=True)
            print(f"{size:4d} texts  ingress adds {row['ingress_added_p50_ms_over_client']:+.2f} ms p50 over the "
                  f"client, {row['ingress_added_p50_ms_over_direct']:+.2f} ms over a direct call", flush=True)
    finally:
        http.stop(timeout_s=5)
        node.stop(kill_after_s=10)
        mock.stop()
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
