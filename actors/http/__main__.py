"""``python -m actors.http``: the HTTP front door of the node on ``--admin-port``.

Either ``--config FILE`` (its ``http`` section and deployments' models) or, from
``actors.ops.http_process``, the settings as JSON on stdin (so no key is ever in argv).
Prints ``http listening on URL`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from actors.errors import ConfigError, InferenceError
from actors.core.log_format import JsonFormatter, TextFormatter
from actors.settings.loader import build, http_section, load_config
from actors.settings.schema import HttpConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors.http", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="the node's config file (its http section is served)")
    parser.add_argument("--stdin", action="store_true", help="read {http, models} as JSON from stdin")
    parser.add_argument("--admin-port", type=int, required=True, help="the node's Thespian admin port")
    parser.add_argument("--listen", help="HOST:PORT, overriding http.listen")
    parser.add_argument("--parent-pid", type=int, help="drain and exit when this process (the launcher) is gone")
    parser.add_argument("--log-file")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    handler = logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if args.log_format == "json" else TextFormatter())
    for name in ("atomr", "waitress"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(args.log_level if name == "atomr" else "WARNING")
        logger.propagate = False
    try:
        if args.stdin:
            doc = json.loads(sys.stdin.read())
            config = build(HttpConfig, doc["http"], "http")
            models = list(doc.get("models") or [])
            upstreams = dict(doc.get("upstreams") or {})
        elif args.config:
            full = load_config(args.config, credentials=False)
            config = http_section(full, args.listen)     # no keys, no explicit auth: none: refused
            models = [d.model for d in full.deployments]
            upstreams = {d.model: d.provider_model for d in full.deployments}
        else:
            parser.error("give --config FILE or --stdin")
        from actors.http.server import HttpServer  # imports the client (Thespian) only once the config is good

        server = HttpServer(config, args.admin_port, models, listen=args.listen, upstreams=upstreams)
    except (ConfigError, InferenceError, ValueError) as exc:
        print(f"http: {exc}", file=sys.stderr, flush=True)
        return 2
    print(f"http listening on {server.url}", flush=True)
    server.run(parent_pid=args.parent_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
