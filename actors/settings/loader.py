"""YAML -> validated GatewayConfig: walks the data against the schema's type hints, so every
error names the file, the field and the value expected."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import types
import typing
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any, Literal, Union

import yaml

from actors.core.credentials import looks_secret
from actors.errors import ConfigError
from actors.settings.budgets import check_budgets
from actors.settings.schema import GatewayConfig, HttpConfig

__all__ = ["build", "parse_config", "load_config", "check_credentials", "check_http_keys", "config_warnings", "http_section", "UniqueKeyLoader"]

_FIELD_HEAD = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[\d+\])?(?:\.[A-Za-z0-9_\-\[\].]+)?$")

# --- the validator -------------------------------------------------------------------

def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {dict: "a mapping", list: "a list", bool: "a boolean", str: "a string"}.get(
        type(value), type(value).__name__ + f" {value!r}")


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, path)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"expected {_describe(tp)}, got {value!r}", path=path)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"expected {_describe(tp)}, got {_kind(value)}", path=path)
        (inner,) = typing.get_args(tp)
        return [_convert(inner, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {_kind(value)}", path=path)
        key_tp, value_tp = typing.get_args(tp)
        return {_convert(key_tp, k, f"{path}.{k}"): _convert(value_tp, v, f"{path}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"expected {_describe(tp)}, got {_kind(value)}", path=path)


def build(cls: type, data: Any, path: str = "") -> Any:
    """Instantiate dataclass ``cls`` from plain YAML data, or raise ConfigError at ``path``."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {_kind(data)}", path=path)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{path}." if path else ""
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}; expected one of {', '.join(sorted(fields))}",
                          path=f"{prefix}{unknown[0]}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing required field ({_describe(hints[name])})", path=f"{prefix}{name}")
            continue
        kwargs[name] = _convert(hints[name], data[name], f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        # "<field>: <problem>" from the schema's checks is filed under that field's full path.
        head, sep, rest = message.partition(": ")
        match = _FIELD_HEAD.match(head) if sep else None
        if match and match.group(1) in fields:
            raise ConfigError(rest, path=f"{prefix}{head}") from None
        raise ConfigError(message, path=path or cls.__name__) from None


# --- loading -------------------------------------------------------------------------

def check_credentials(config: GatewayConfig, environ: typing.Mapping[str, str] = os.environ) -> None:
    """Fail fast on credentials that cannot possibly resolve on this node. A reference that
    looks like a key itself (pasted into the wrong field) is never repeated in the message."""
    for i, dep in enumerate(config.deployments):
        cred = dep.credentials
        path = f"deployments[{i}].credentials"
        if cred is None:
            continue
        for name in ("file", "command"):
            value = getattr(cred, name)
            shown = " ".join(value) if isinstance(value, list) else value
            if shown is not None and looks_secret(shown):
                raise ConfigError(f"the {name} given looks like a key, not a {name} (not shown); put the key "
                                  f"in an environment variable and name it with credentials.env",
                                  path=f"{path}.{name}")
        if cred.env is not None and not environ.get(cred.env):
            raise ConfigError(f"environment variable {cred.env} is not set (deployment {dep.name!r})",
                              path=f"{path}.env")
        if cred.file is not None and not os.access(os.path.expanduser(cred.file), os.R_OK):
            raise ConfigError(f"credential file {cred.file} is not readable", path=f"{path}.file")
        if cred.command is not None and shutil.which(cred.command[0]) is None:
            raise ConfigError(f"credential command {cred.command[0]!r} not found on PATH", path=f"{path}.command")
    check_http_keys(config, environ)


def check_http_keys(config: GatewayConfig, environ: typing.Mapping[str, str] = os.environ) -> None:
    """The HTTP callers' keys must resolve when the listener starts: an unset variable is a
    refused caller at 3 a.m., so it fails here instead. Never shows a key."""
    if config.http is None or config.http.listen is None:
        return
    for i, entry in enumerate(config.http.keys):
        path = f"http.keys[{i}].key"
        if entry.key.env is not None and not environ.get(entry.key.env, "").strip():
            raise ConfigError(f"environment variable {entry.key.env} is not set (key {entry.name!r})",
                              path=f"{path}.env")
        if entry.key.file is not None:
            if looks_secret(entry.key.file):
                raise ConfigError("the file given looks like a key, not a file (not shown); use sha256: "
                                  "(python launch.py key new) or env:", path=f"{path}.file")
            if not os.access(os.path.expanduser(entry.key.file), os.R_OK):
                raise ConfigError(f"key file {entry.key.file} is not readable (key {entry.name!r})",
                                  path=f"{path}.file")


def parse_config(data: Any, source: str = "<config>", *, credentials: bool = True,
                 environ: typing.Mapping[str, str] = os.environ) -> GatewayConfig:
    from actors.providers import make_runner  # runners validate their provider-specific options

    try:
        config = build(GatewayConfig, data)
        try:
            check_budgets(config)
        except ValueError as exc:
            head, _, rest = str(exc).partition(": ")
            raise ConfigError(rest, path=head) from None
        for i, dep in enumerate(config.deployments):
            try:
                make_runner(dep)
            except ConfigError as exc:
                exc.path = f"deployments[{i}].{exc.path}" if exc.path else f"deployments[{i}]"
                raise
        if credentials:
            check_credentials(config, environ)
    except ConfigError as exc:
        exc.path = f"{source}: {exc.path}" if exc.path else source
        raise
    return config


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with the same key twice (YAML's own rule,
    which PyYAML does not enforce: the last one silently wins)."""


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:
            continue  # an unhashable key: construct_mapping reports it
        if first is not None:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"duplicate key {key!r} (first at line {first + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


_OPENAI_HOSTS = ("api.openai.com",)


def config_warnings(config: GatewayConfig) -> list[str]:
    """Things that start but are probably not what was meant; the launcher prints them."""
    warnings = []
    served = {d.model for d in config.deployments} | {d.name for d in config.deployments}
    for i, key in enumerate(config.http.keys if config.http is not None else []):
        unserved = [m for m in key.models or [] if m not in served]
        if unserved:  # some served (none served is an error): a typo, or a model of another node
            then = ("calls to it will be 404" if config.routing.cross_node == "local_only" else
                    "calls to it go to another node of the cluster, or are 404 if none serves it")
            warnings.append(f"http.keys[{i}] ({key.name}): no deployment of this node serves "
                            f"{', '.join(repr(m) for m in unserved)}; {then}")
    for i, dep in enumerate(config.deployments):
        where = f"deployments[{i}] ({dep.name})"
        if dep.provider != "openai" or dep.endpoint == "mock":
            continue
        host = (urlsplit(dep.endpoint).hostname or "").lower()
        if host not in _OPENAI_HOSTS:
            warnings.append(f"{where}: provider openai sends max_completion_tokens, which OpenAI-compatible "
                            f"servers ignore; {dep.endpoint_label} is not OpenAI's API: use provider "
                            f"openai_compatible (sends max_tokens) unless it really is OpenAI")
        if dep.credentials is None:
            warnings.append(f"{where}: provider openai with no credentials: every call will be refused "
                            f"with 401 unless {dep.endpoint_label} needs no key")
    return warnings


def http_section(config: GatewayConfig | HttpConfig, listen: str | None = None) -> HttpConfig:
    """The listener's settings: the config's ``http`` section (or ``config`` itself) on ``listen``.

    Never silently open: a config without an ``http`` section has no keys, so ``--http`` on it
    is refused with how to add them; serving without keys takes an explicit ``auth: none``,
    which the section allows on a loopback address only.
    """
    if isinstance(config, GatewayConfig):
        if config.http is None:
            where = f"--http {listen}" if listen else "the HTTP listener"
            raise ConfigError(
                f"{where} needs an http section with its callers' keys, and this config has none: add one "
                f"(`python launch.py key new` prints a key and the line to paste), e.g.\n"
                f"  http:\n    keys:\n      - name: my-app\n        key: {{sha256: <the line key new printed>}}\n"
                f"or, to serve without keys on a loopback address, say so: `http: {{auth: none}}`", path="http")
        http = config.http
    else:
        http = config
    if listen is not None:
        try:
            http = http.with_listen(listen)
        except ValueError as exc:
            raise ConfigError(str(exc), path="--http") from None
    if http.listen is None:
        raise ConfigError("the HTTP listener needs an address: set http.listen or --http HOST:PORT", path="http.listen")
    return http


def load_config(path: str | os.PathLike, **kw: Any) -> GatewayConfig:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", path=source) from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", path=source) from None
    config = parse_config(data, source, **kw)
    secret_file = config.cluster.secret_file
    if secret_file is not None:
        # Relative to the config file, so a deployment directory can be moved whole.
        secret_file = os.path.join(os.path.dirname(os.path.abspath(source)), os.path.expanduser(secret_file))
        config = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, secret_file=secret_file))
    if config.node.ledger is not None:  # relative to the config file too
        ledger = os.path.join(os.path.dirname(os.path.abspath(source)), os.path.expanduser(config.node.ledger))
        config = dataclasses.replace(config, node=dataclasses.replace(config.node, ledger=ledger))
    return config
