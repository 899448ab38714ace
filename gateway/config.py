"""Typed configuration: YAML, ``${ENV_VAR}`` substitution, validation with every problem reported.

Validation uses pydantic v2 models with ``extra="forbid"``: an unknown key is an error, and
all errors are collected in one pass, each with its key path (``server.port: ...``). Checks
that span several keys (or touch files) run after the models and add to the same list.
This module holds the root ``Config`` model, loading and those cross-section checks; the
per-section models live in ``gateway.config_sections`` and are re-exported here, so
``gateway.config`` stays the one import point for every config type.
Every key and its default is documented in ``config.example.yaml`` and
``docs/configuration.md``; ``tests/unit/test_config.py`` pins that the two stay in sync.
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import Field, ValidationError

from gateway.config_sections import (
    CAPABILITIES,
    AuditConfig,
    AuditFhirSink,
    AuthConfig,
    BasicCredentials,
    Bucket,
    Capability,
    ClaimNames,
    ClientLimits,
    ConfigPath,
    CorsConfig,
    Introspection,
    JwtIssuer,
    LimitsConfig,
    LoggingConfig,
    PhiConfig,
    PoliciesConfig,
    Port,
    PositiveFloat,
    ServerConfig,
    SmartConfig,
    StaticHeader,
    TlsFiles,
    TracingConfig,
    UpstreamAuth,
    UpstreamConfig,
    UpstreamTls,
    _Model,
    is_loopback_url,
)
from gateway.errors import ConfigError

__all__ = [
    "CAPABILITIES",
    "AuditConfig",
    "AuditFhirSink",
    "AuthConfig",
    "BasicCredentials",
    "Bucket",
    "Capability",
    "ClaimNames",
    "ClientLimits",
    "Config",
    "ConfigPath",
    "CorsConfig",
    "Introspection",
    "JwtIssuer",
    "LimitsConfig",
    "LoggingConfig",
    "PhiConfig",
    "PoliciesConfig",
    "Port",
    "PositiveFloat",
    "ServerConfig",
    "SmartConfig",
    "StaticHeader",
    "TlsFiles",
    "TracingConfig",
    "UpstreamAuth",
    "UpstreamConfig",
    "UpstreamTls",
    "is_loopback_url",
    "load_config",
    "parse_config",
]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Config(_Model):
    server: ServerConfig
    upstream: UpstreamConfig
    auth: AuthConfig = Field(default_factory=AuthConfig)
    smart: SmartConfig = Field(default_factory=SmartConfig)
    cors: CorsConfig = Field(default_factory=CorsConfig)
    phi: PhiConfig = Field(default_factory=PhiConfig)
    policies: PoliciesConfig = Field(default_factory=PoliciesConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)

    def redacted(self) -> dict[str, Any]:
        """The effective configuration for the start-up log: secrets replaced by ``***``."""
        redacted: dict[str, Any] = _redact(self.model_dump(mode="json"))
        return redacted


_SECRET_KEYS = frozenset({"client_secret", "password", "cursor_keys", "value"})


def _redact(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: ("***" if k in _SECRET_KEYS and v not in (None, [], "") else _redact(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_redact(v) for v in node]
    return node


# --------------------------------------------------------------------------- loading


def _substitute_env(node: Any, path: str, env: dict[str, str], problems: list[str]) -> Any:
    """Replace ``${VAR}`` in every string scalar; a missing variable is a problem at its key."""
    if isinstance(node, dict):
        return {
            k: _substitute_env(v, f"{path}.{k}" if path else str(k), env, problems)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_substitute_env(v, f"{path}[{i}]", env, problems) for i, v in enumerate(node)]
    if isinstance(node, str):

        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env:
                problems.append(f"{path}: environment variable {name} is not set")
                return ""
            return env[name]

        return _ENV_REF.sub(repl, node)
    return node


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _cross_checks(cfg: Config) -> list[str]:
    problems: list[str] = []

    def readable(p: Path, key: str) -> Path | None:
        if not p.is_file():
            problems.append(f"{key}: file {p} does not exist")
            return None
        return p

    tls = cfg.server.tls
    if tls is not None:
        cert = readable(tls.cert_file, "server.tls.cert_file")
        key = readable(tls.key_file, "server.tls.key_file")
        if cert and key:
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
            except (ssl.SSLError, OSError) as exc:
                problems.append(
                    f"server.tls: certificate and key do not load ({type(exc).__name__})"
                )
    ut = cfg.upstream.tls
    if ut is not None:
        if ut.ca_file is not None:
            readable(ut.ca_file, "upstream.tls.ca_file")
        if (ut.client_cert_file is None) != (ut.client_key_file is None):
            problems.append("upstream.tls: client_cert_file and client_key_file go together")
        for name in ("client_cert_file", "client_key_file"):
            value = getattr(ut, name)
            if value is not None:
                readable(value, f"upstream.tls.{name}")
    ua = cfg.upstream.auth
    if ua is not None and (ua.header is None) == (ua.basic is None):
        problems.append("upstream.auth: set exactly one of 'header' or 'basic'")
    if cfg.upstream.forward_authorization and ua is not None:
        problems.append("upstream: forward_authorization and auth exclude each other")
    if urlsplit(cfg.upstream.url).scheme != "https" and ut is not None:
        problems.append("upstream.tls: set, but upstream.url is not https")
    for i, p in enumerate(cfg.policies.paths):
        if not p.exists():
            problems.append(f"policies.paths[{i}]: {p} does not exist")
    server = cfg.server
    if server.admin_port and server.admin_port == server.port:
        problems.append("server.admin_port: must differ from server.port")
    if cfg.tracing.enabled:
        from gateway.ops.tracing import missing_packages

        missing = missing_packages()
        if missing:
            problems.append(
                "tracing.enabled: the OpenTelemetry packages are not installed "
                f"({', '.join(missing)}); install the extra: pip install 'fhir-gateway[tracing]'"
            )
    issuers = [j.issuer for j in cfg.auth.jwt]
    if len(set(issuers)) != len(issuers):
        problems.append("auth.jwt: the same issuer is listed twice")
    # imported here: smart_configuration imports this module
    from gateway.smart.smart_configuration import config_problems

    problems.extend(config_problems(cfg))
    return problems


def parse_config(data: Any, *, base_dir: Path, env: dict[str, str] | None = None) -> Config:
    """Validate already-parsed YAML data; raise ConfigError listing every problem."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError(["(top level): the configuration must be a YAML mapping"])
    data = _substitute_env(data, "", dict(os.environ) if env is None else env, problems)
    try:
        cfg = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{_format_loc(err['loc'])}: {msg}")
        raise ConfigError(problems) from None
    problems.extend(_cross_checks(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    """Read, substitute, validate. Relative file paths in the config are relative to it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{path}: not valid YAML{where}"]) from None
    return parse_config(data, base_dir=path.parent.resolve(), env=env)
