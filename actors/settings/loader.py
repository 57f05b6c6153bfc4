"""YAML -> validated GatewayConfig: walks the data against the schema's type hints, so every
error names the file, the field and the value expected."""

from __future__ import annotations

import dataclasses
import os
import shutil
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from actors.errors import ConfigError
from actors.settings.schema import GatewayConfig

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
    if dataclasses.is_dataclass(tp):
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
        raise ConfigError(str(exc), path=path or cls.__name__) from None


# --- loading -------------------------------------------------------------------------

def check_credentials(config: GatewayConfig, environ: typing.Mapping[str, str] = os.environ) -> None:
    """Fail fast on credentials that cannot possibly resolve on this node."""
    for i, dep in enumerate(config.deployments):
        cred = dep.credentials
        path = f"deployments[{i}].credentials"
        if cred is None:
            continue
        if cred.env is not None and not environ.get(cred.env):
            raise ConfigError(f"environment variable {cred.env} is not set (deployment {dep.name!r})",
                              path=f"{path}.env")
        if cred.file is not None and not os.access(os.path.expanduser(cred.file), os.R_OK):
            raise ConfigError(f"credential file {cred.file} is not readable", path=f"{path}.file")
        if cred.command is not None and shutil.which(cred.command[0]) is None:
            raise ConfigError(f"credential command {cred.command[0]!r} not found on PATH", path=f"{path}.command")


def parse_config(data: Any, source: str = "<config>", *, credentials: bool = True,
                 environ: typing.Mapping[str, str] = os.environ) -> GatewayConfig:
    from actors.providers import make_runner  # runners validate their provider-specific options

    try:
        config = build(GatewayConfig, data)
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


def load_config(path: str | os.PathLike, **kw: Any) -> GatewayConfig:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", path=source) from None
    try:
        data = yaml.safe_load(text)
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
    return config
