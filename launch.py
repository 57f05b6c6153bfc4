#!/usr/bin/env python3
"""Run a gateway node, talk to one, or try the whole thing on the built-in mock provider.

    python launch.py --convention leader --config config/demo.yaml   # a node, in the foreground
    python launch.py ask --model demo "Say hello"                     # stream an answer from a node
    python launch.py status                                           # what a node is doing
    python launch.py status --watch                                   # the same, live, until Ctrl-C
    python launch.py demo                                             # all of it, end to end, then stop
    python launch.py secret --out cluster.key                         # a new cluster key (mode 600)
    python launch.py stop --admin-port 1900                           # stop a node whose launcher is gone
    python launch.py spend --config CONFIG --since 1d --by key        # what the ledger says was spent

Every message between a node's processes, other nodes and clients is signed and unpickled
through an allow-list; see docs/security.md. With a cluster secret (ATOMR_CLUSTER_SECRET,
ATOMR_CLUSTER_SECRET_FILE or cluster.secret_file) nodes on several hosts form a cluster;
without one a node makes this host's key (local clients find it) and refuses other hosts.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time

from actors.settings.loader import load_config
from actors.errors import ConfigError, InferenceError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config", "demo.yaml")


def _print_status(status, indent: str = "") -> None:
    where = f" {status.node_id}" if getattr(status, "node_id", "") else ""
    print(f"{indent}node {status.node}{where} (up {time.time() - status.started_unix:.0f}s)"
          + (f", {status.membership}" if getattr(status, "membership", "") not in ("", "member", "leader") else ""))
    if getattr(status, "membership_note", ""):
        print(f"{indent}  membership: {status.membership_note}")
    for s in getattr(status, "supervision", None) or []:
        print(f"{indent}  engine {s.get('deployment')}[{s.get('replica')}] restarted {s.get('restarts', 0)} time(s), "
              f"now {s.get('state', '?')}")
    for e in status.engines:
        print(f"{indent}  {e.deployment}[{e.replica}]  queued={e.queued} busy={e.busy_workers}/{e.workers} "
              f"accepted={e.accepted} completed={e.completed} failed={e.failed} circuit={e.circuit}")
    for b in status.breakers:
        print(f"{indent}  breaker {b.provider} {b.endpoint}: {b.state.value} trips={b.trips} "
              f"window={b.window_failures}/{b.window_calls} failed")
    from actors.http.status_view import node_document

    for row in node_document(status)["refusals"]:
        print(f"{indent}  refused {row['model']}: {row['count']} {row['reason']} (by the {row['where']})")
    for lim in status.limits:
        print(f"{indent}  limit {lim['key']} ({lim['mode']}): requests {lim['requests']}/{lim['rpm'] or '-'} "
              f"tokens {lim['tokens']}/{lim['tpm'] or '-'} this window")
    spend = getattr(status, "spend", None) or {}
    ledger = spend.get("ledger")
    if ledger:
        print(f"{indent}  ledger {ledger['path']}: {ledger['state']}, {ledger['written']} written, "
              f"{ledger['dropped']} lost, {ledger['queued']} queued" + (f" ({ledger['error']})" if ledger['error'] else ""))
    for b in spend.get("budgets", []):
        print(f"{indent}  budget {b['budget']} ({b['mode']}): ${b['spent_usd']:.6f} of ${b['usd']:g} this period")


def _keyring(secret_file: str | None = None, explicit: bool = False, node: bool = False):
    """This process's keys: the cluster secret, else this host's key (a node makes it if need be).

    The secret variables are then dropped from the environment, so no actor, credential
    command or other child process inherits them. An ``explicit`` file (a command-line
    option) wins over the environment; a config's does not."""
    from actors.security import wire

    keyring = wire.load_keyring(secret_file, environ={}) if explicit and secret_file else wire.load_keyring(secret_file)
    for name in (wire.ENV_SECRET, wire.ENV_SECRET_PREVIOUS):
        os.environ.pop(name, None)
    return keyring or wire.host_keyring(create=node)


def _key_environment(config) -> dict[str, str]:
    """The variables that give this node's wire key to a process of our own (the HTTP listener)."""
    from actors.security import wire

    found = {name: os.environ[name] for name in (wire.ENV_SECRET, wire.ENV_SECRET_PREVIOUS, wire.ENV_SECRET_FILE)
             if os.environ.get(name)}
    if not found and config.cluster.secret_file:
        found[wire.ENV_SECRET_FILE] = config.cluster.secret_file
    return found


def _need_key(keyring, port: int):
    """Clients: without a cluster secret or a host key no node here can be talked to."""
    from actors.security import wire

    if keyring is None:
        raise ConfigError(f"no key: no cluster secret is set and there is no host key at {wire.host_key_path()} "
                          f"(a node started on this host by this user makes it); is a node running on port {port}?",
                          path=wire.ENV_SECRET)
    return keyring


def run_node(args: argparse.Namespace) -> int:
    from actors.ops.system import start_node

    config = load_config(args.config)
    serve_http = bool(args.http) or (config.http is not None and config.http.listen is not None)
    if serve_http:
        from actors.settings.loader import http_section

        http_section(config, args.http)  # refused before anything starts: never a listener without keys by accident
    key_environment = _key_environment(config)
    keyring = _keyring(config.cluster.secret_file, node=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node = start_node(config, admin_port=args.admin_port, name=args.name,
                      leader=args.leader if args.convention == "member" else None, advertise=args.advertise,
                      keyring=keyring)
    http = None
    try:
        print(f"node {node.name} serving on admin port {node.admin_port}: "
              + ", ".join(f"{d.name} ({d.provider} {d.provider_model}, {d.workers} workers x {d.replicas})"
                          for d in node.config.deployments), flush=True)
        print(node.wire, flush=True)
        if node.mock is not None:
            print(f"built-in mock provider on {node.mock.url}", flush=True)
        print(node.standing(wait_s=min(3.0, config.cluster.failure_timeout_s)), flush=True)
        if serve_http:
            from actors.ops.http_process import start_http

            http = start_http(config, node.admin_port, listen=args.http, key_environment=key_environment,
                              log_file=config.node.log_file and config.node.log_file + ".http")
            print(f"HTTP (OpenAI and Anthropic APIs) on {http.url}", flush=True)
        while not stop.wait(0.5):
            if node.admin_pid is not None and not node.admin_alive():
                print(f"error: the node's admin process (pid {node.admin_pid}) died; stopping what is left of "
                      f"node {node.name}", file=sys.stderr, flush=True)
                node.stop(kill_after_s=2)
                return 1
        print("stopping: draining in-flight requests", flush=True)
    finally:
        if http is not None:
            http.stop()  # first, so its streams finish while the node still serves them
        node.stop(drain_timeout_s=config.node.drain_timeout_s)
    print("stopped", flush=True)
    return 0


def ask(args: argparse.Namespace) -> int:
    from actors.client import GatewayClient

    _check_node(args.admin_port)
    keyring = _need_key(_keyring(args.secret_file, explicit=True), args.admin_port)
    with GatewayClient(args.admin_port, timeout_s=args.timeout, keyring=keyring) as client:
        messages = [{"role": "user", "content": " ".join(args.prompt)}]
        if args.no_stream:
            result = client.complete(args.model, messages, max_tokens=args.max_tokens)
            print(result.text)
        else:
            stream = client.stream(args.model, messages, max_tokens=args.max_tokens)
            try:
                for chunk in stream:
                    print(chunk.text, end="", flush=True)
            except BaseException:
                if stream.chunks:
                    print(flush=True)  # an error after partial text starts on its own line
                raise
            print()
            result = stream.result
        print(_summary(result))
    return 0


def _usage_text(result) -> str:
    usage = result.usage
    if getattr(usage, "reported", True):
        return f"{usage.input_tokens} in / {usage.output_tokens} out tokens"
    charged = getattr(result, "charged_tokens", 0)
    return f"usage not reported, {charged} tokens charged by estimate" if charged else "usage not reported"


def _summary(result) -> str:
    cost = f"${result.cost_usd:.6f}" if result.cost_usd is not None else "unknown"
    ttft = f", first token {result.ttft_s * 1000:.0f} ms" if result.ttft_s is not None else ""
    log = getattr(result, "attempt_log", None) or []
    tried = (", attempts: " + ", ".join(f"{a.deployment} {a.error_kind or 'ok'}" + (f" {a.status}" if a.status else "")
                                        for a in log)) if len(log) > 1 else ""
    return (f"[{result.deployment}: {_usage_text(result)}, cost {cost}, {result.latency_s * 1000:.0f} ms{ttft}, "
            f"finish {result.finish_reason}{tried}]")


def _check_node(port: int) -> None:
    """Before attaching: is a node listening there? (Thespian would start a stray admin otherwise.)"""
    from actors.ops.procs import port_is_listening

    if not port_is_listening(port):
        from actors.errors import GatewayUnavailable

        raise GatewayUnavailable(f"no gateway node is listening on 127.0.0.1:{port}")


def _print_cluster(cluster) -> None:
    # Keyed by node id (name@address:port): nodes may share a name.
    by_id = {m.node_id or m.node: m for m in cluster.members}
    print(f"cluster led by {cluster.leader or '(leader unreachable)'}: {len(cluster.members)} node(s)")
    for status in cluster.nodes:
        member = by_id.get(getattr(status, "node_id", "") or status.node)
        address = (f"{member.host or '?'}:{member.admin_port}" if member and member.admin_port
                   else member.host or '?' if member else "")
        seen = f" at {address}, last heartbeat {member.last_seen_s:.1f}s ago" if member else ""
        print(f"- {status.node}{' (leader)' if status.node == cluster.leader else ''}{seen}")
        _print_status(status, indent="  ")
    for node in cluster.unreachable:
        print(f"- {node}: did not answer")
    budgets = {}
    for status in cluster.nodes:
        for lim in status.limits:
            # Each node's hub holds the merged cluster view; show the most advanced one.
            best = budgets.get(lim["key"])
            if best is None or (lim["requests"], lim["tokens"]) > (best["requests"], best["tokens"]):
                budgets[lim["key"]] = lim
    for key, lim in sorted(budgets.items()):
        print(f"budget {key} ({lim['mode']}), cluster-wide this window: requests {lim['requests']}/{lim['rpm'] or '-'}"
              f", tokens {lim['tokens']}/{lim['tpm'] or '-'}")


def status(args: argparse.Namespace) -> int:
    from actors.client import GatewayClient
    from actors.ops.remote_status import cluster_status_from
    from actors.ops.procs import port_is_listening

    keyring = _keyring(args.secret_file, explicit=True)
    client = None
    if args.leader:
        host, _, port = args.leader.rpartition(":")
        if host in ("127.0.0.1", "localhost") and port_is_listening(int(port)):
            client = GatewayClient(int(port), keyring=_need_key(keyring, int(port)))
    else:
        _check_node(args.admin_port)
        client = GatewayClient(args.admin_port, keyring=_need_key(keyring, args.admin_port))
    if client is not None:
        fetch = client.cluster_status
    else:  # from a host that runs no node of the cluster: a short-lived admin joins it for each look
        def fetch():
            return cluster_status_from(args.leader, advertise=args.advertise, keyring=keyring)
    try:
        if getattr(args, "watch", False):
            from actors.http.status_view import cluster_document
            from actors.http.terminal import watch

            return watch(lambda: cluster_document(fetch()))
        _print_cluster(fetch())
        return 0
    finally:
        if client is not None:
            client.close()


def demo(args: argparse.Namespace) -> int:
    """Start a node on the mock provider, stream a few answers through it, show status, stop."""
    from actors.client import GatewayClient
    from actors.ops.procs import port_is_listening
    from actors.ops.system import start_node

    config = load_config(args.config)
    key_environment = _key_environment(config)
    # The demo's node and client live in this process and share its key: the cluster
    # secret if one is set, else this host's key (made if need be).
    keyring = _keyring(config.cluster.secret_file, node=True)
    port = args.admin_port or next(p for p in range(19500, 19600) if not port_is_listening(p))
    log_file = os.path.join(tempfile.gettempdir(), f"atomr-demo-{port}.log")
    print(f"starting a node on admin port {port} with {args.config} (log: {log_file})", flush=True)
    node = start_node(config, admin_port=port, log_file=log_file, console_log=False, keyring=keyring)
    print(node.wire, flush=True)
    try:
        with GatewayClient(port, keyring=keyring) as client:
            for prompt in ("Say hello", "Stream a few words please"):
                print(f"\n> {prompt}\n", end="", flush=True)
                stream = client.stream("demo", [{"role": "user", "content": prompt}], max_tokens=20)
                for chunk in stream:
                    print(chunk.text, end="", flush=True)
                r = stream.result
                print(f"\n[{_usage_text(r)}, "
                      f"cost ${r.cost_usd:.7f}, first token {r.ttft_s * 1000:.0f} ms, total {r.latency_s * 1000:.0f} ms, "
                      f"{r.chunks} chunks]")
            r = client.complete("demo-claude", [{"role": "user", "content": "And once more, not streamed"}],
                                max_tokens=12)
            print(f"\n> not streamed, via {r.deployment}: {r.text}\n[{r.usage.output_tokens} tokens, "
                  f"cost ${r.cost_usd:.7f}]")
            try:
                client.complete("demo", [{"role": "user", "content": "[[mock status=400]] a bad request"}])
            except InferenceError as exc:
                print(f"\n> a request the provider rejects ends in one typed error:\n{type(exc).__name__}: {exc}")
            _demo_http(config, port, key_environment, log_file + ".http", args.http_port)
            print()
            _print_cluster(client.cluster_status())
    finally:
        node.stop(drain_timeout_s=5)
    print("\ndemo finished; node stopped")
    return 0


def _demo_http(config, admin_port: int, key_environment: dict[str, str], log_file: str,
               listen_port: int | None = None) -> None:
    """The same node over HTTP, in the OpenAI dialect: one call with plain `requests`."""
    import requests

    from actors.ops.http_process import start_http
    from actors.ops.procs import port_is_listening

    if listen_port is None:
        listen_port = next(p for p in range(4000, 4100) if not port_is_listening(p))
    elif port_is_listening(listen_port):
        raise ConfigError(f"port {listen_port} is in use: choose another --http-port", path="--http-port")
    http = start_http(config, admin_port, listen=f"127.0.0.1:{listen_port}", key_environment=key_environment,
                      log_file=log_file)
    try:
        reply = requests.post(f"{http.url}/v1/chat/completions", timeout=30, json={
            "model": "demo", "max_tokens": 12, "messages": [{"role": "user", "content": "Hello over HTTP"}]})
        body = reply.json()
        print(f"\n> over HTTP: POST {http.url}/v1/chat/completions -> {reply.status_code}: "
              f"{body['choices'][0]['message']['content']!r} ({body['usage']['completion_tokens']} tokens)")
        print(f"  the openai SDK works the same: OpenAI(base_url=\"{http.url}/v1\", api_key=\"unused\")"
              f" (config/demo.yaml says `http: {{auth: none}}`: a loopback listener without keys; "
              f"`python launch.py key new` makes one)")
    finally:
        http.stop()


def secret(args: argparse.Namespace) -> int:
    """Print (or write, mode 600) a new cluster key: ``KEYID:SECRET``."""
    from actors.security import wire

    line = wire.generate_key_line(args.key_id)
    if not args.out:
        print(line)
        return 0
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError("exists already; to rotate, edit it as docs/security.md says", path=args.out) from None
    with os.fdopen(fd, "w") as fh:
        fh.write("# atomr cluster keys: [KEYID:]SECRET, one per line; the first signs, all are accepted.\n")
        fh.write(line + "\n")
    print(f"wrote a new cluster key (id {line.split(':', 1)[0]}) to {args.out}")
    return 0


def key(args: argparse.Namespace) -> int:
    """``key new``: a fresh API key for the HTTP front door, and the ``sha256:`` line for the config."""
    from actors.http.keys import new_key_text

    print(new_key_text(), end="")
    return 0


def spend(args: argparse.Namespace) -> int:
    """Spend from the ledger the config names (``--cluster``: every node's, summed), with a total line."""
    from actors.ops.spend import format_report, local_report, merged, parse_since

    config = load_config(args.config, credentials=False)
    since = parse_since(args.since)
    title = f"spend since {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(since))} by {args.by}"
    if not args.cluster:
        print(format_report(local_report(config, since, args.by), args.by, f"{title} ({config.node.ledger})"))
        return 0
    from actors.client import GatewayClient

    port = args.admin_port or config.node.admin_port
    _check_node(port)
    with GatewayClient(port, keyring=_need_key(_keyring(args.secret_file or config.cluster.secret_file,
                                                        explicit=bool(args.secret_file)), port)) as client:
        reports = client.spend(since, args.by, cluster=True)
    print(format_report(merged([r.rows for r in reports]), args.by, f"{title}, {len(reports)} node(s)"))
    for r in reports:
        if r.error:
            print(f"node {r.node}: {r.error}", file=sys.stderr)
    return 0


def _unavailable(message: str):
    from actors.errors import GatewayUnavailable

    return GatewayUnavailable(message)


def stop_node(args: argparse.Namespace) -> int:
    """Stop the node on ``--admin-port`` (e.g. one whose launcher is gone), after making sure it is one."""
    from thespian.actors import ActorSystem

    from actors.client import GatewayClient
    from actors.ops.procs import admin_process, kill_group, pids_in_group, process_start_ticks, wait_until

    port = args.admin_port
    _check_node(port)
    found = admin_process(port)
    if found is None:
        raise _unavailable(f"port {port} is open but no process of this user holds it")
    pid, ticks, pgid = found
    keyring = _need_key(_keyring(args.secret_file, explicit=True), port)
    try:
        with GatewayClient(port, keyring=keyring, timeout_s=10) as client:
            name = client.status(timeout_s=10).node
    except Exception as exc:  # noqa: BLE001 - whatever it is, it is not a node we can vouch for
        raise _unavailable(f"the process on port {port} (pid {pid}) did not answer as an atomr node "
                                      f"that accepts this host's key ({type(exc).__name__}); not stopping it") from None
    print(f"stopping node {name} (admin pid {pid}, process group {pgid})", flush=True)
    if process_start_ticks(pid) == ticks:
        try:
            ActorSystem("multiprocTCPBase", {"Admin Port": port}, transientUnique=True).shutdown()
        except Exception:  # noqa: BLE001 - the group is killed below if it lingers
            pass
    if not wait_until(lambda: not pids_in_group(pgid), 15) and pids_in_group(pgid):
        kill_group(pgid)
        wait_until(lambda: not pids_in_group(pgid), 5)
    print("stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--convention", choices=("leader", "member"), default="leader",
                        help="start a node as the convention leader or as a member")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="deployment YAML (default: config/demo.yaml)")
    parser.add_argument("--admin-port", type=int, default=None, help="Thespian admin port (default: config, else 1900)")
    parser.add_argument("--leader", default=None, help="HOST:PORT of the convention leader (members)")
    parser.add_argument("--advertise", default=None, help="routable IP peers reach this node on")
    parser.add_argument("--name", default=None, help="node name (default: config, else node-PORT)")
    parser.add_argument("--http", default=None, metavar="HOST:PORT",
                        help="serve the OpenAI and Anthropic HTTP APIs here (overrides http.listen)")
    sub = parser.add_subparsers(dest="command")
    p_ask = sub.add_parser("ask", help="send one prompt to a running node")
    p_ask.add_argument("prompt", nargs="+")
    p_ask.add_argument("--model", default="demo")
    p_ask.add_argument("--admin-port", type=int, default=1900)
    p_ask.add_argument("--max-tokens", type=int, default=64)
    p_ask.add_argument("--timeout", type=float, default=60.0)
    p_ask.add_argument("--no-stream", action="store_true")
    p_ask.add_argument("--secret-file", default=None, help="cluster key file (default: $ATOMR_CLUSTER_SECRET)")
    p_status = sub.add_parser("status", help="show the cluster: nodes, queues, breakers, budgets")
    p_status.add_argument("--admin-port", type=int, default=1900, help="a node on this host")
    p_status.add_argument("--leader", default=None, help="HOST:PORT of the leader (from any host)")
    p_status.add_argument("--advertise", default=None, help="this host's routable IP (remote --leader)")
    p_status.add_argument("--secret-file", default=None, help="cluster key file (default: $ATOMR_CLUSTER_SECRET)")
    p_status.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    p_demo = sub.add_parser("demo", help="run the end-to-end demo on the built-in mock provider")
    p_demo.add_argument("--config", default=DEFAULT_CONFIG)
    p_demo.add_argument("--admin-port", type=int, default=None)
    p_demo.add_argument("--http-port", type=int, default=None,
                        help="the demo's HTTP front door, on 127.0.0.1 (default: the first free port from 4000)")
    p_stop = sub.add_parser("stop", help="stop the node on this host's --admin-port (e.g. its launcher is gone)")
    p_stop.add_argument("--admin-port", type=int, default=1900)
    p_stop.add_argument("--secret-file", default=None, help="cluster key file (default: $ATOMR_CLUSTER_SECRET)")
    p_secret = sub.add_parser("secret", help="generate a cluster key (KEYID:SECRET) for ATOMR_CLUSTER_SECRET or a file")
    p_secret.add_argument("--key-id", default=None, help="the key's id (default: kYYYYMMDD)")
    p_secret.add_argument("--out", default=None, help="write a new key file (mode 600) instead of printing")
    p_key = sub.add_parser("key", help="HTTP front door API keys: `key new` prints one and its config line")
    p_key.add_argument("action", choices=("new",))
    p_spend = sub.add_parser("spend", help="spend from the ledger, by key, team, model or deployment")
    p_spend.add_argument("--config", default=DEFAULT_CONFIG, help="the node's config (names its ledger)")
    p_spend.add_argument("--since", default="1d", help="1h, 1d, 30d, 1mo (this calendar month) ...")
    p_spend.add_argument("--by", default="key", choices=("key", "team", "model", "deployment", "provider", "node"))
    p_spend.add_argument("--cluster", action="store_true", help="ask every node of the cluster and sum")
    p_spend.add_argument("--admin-port", type=int, default=None, help="a node on this host (--cluster)")
    p_spend.add_argument("--secret-file", default=None, help="cluster key file (default: $ATOMR_CLUSTER_SECRET)")
    args = parser.parse_args(argv)
    if args.convention == "member" and args.command is None and not args.leader:
        parser.error("--convention member needs --leader HOST:PORT")
    try:
        if args.command == "ask":
            return ask(args)
        if args.command == "status":
            return status(args)
        if args.command == "demo":
            return demo(args)
        if args.command == "secret":
            return secret(args)
        if args.command == "stop":
            return stop_node(args)
        if args.command == "key":
            return key(args)
        if args.command == "spend":
            return spend(args)
        return run_node(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except InferenceError as exc:
        sys.stdout.flush()
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
