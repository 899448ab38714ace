"""The per-section configuration models: ``server``, ``upstream``, ``auth``, ``smart`` and the rest.

Each model is a frozen pydantic v2 model with ``extra="forbid"``, so an unknown key is an error.
Validators here check one value at a time (URLs, header names, keys, lists); checks that span
several sections, or touch files, run after validation in ``gateway.config``. Import these
types from ``gateway.config``, which re-exports them next to the root ``Config`` model.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Relative file paths are relative to the directory of the config file."""
    base = (info.context or {}).get("base_dir")
    return value if value.is_absolute() or base is None else Path(base) / value


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
PositiveFloat = Annotated[float, Field(gt=0)]
Port = Annotated[int, Field(ge=0, le=65535)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _absolute_http_url(value: str, *, allow_path: bool = True) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query string or fragment")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials")
    if not allow_path and parts.path not in ("", "/"):
        raise ValueError("must not have a path")
    return value.rstrip("/")


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secure_url(value: str) -> str:
    """An https URL, or plain http on a loopback address (tests, sidecars)."""
    value = _absolute_http_url(value)
    if urlsplit(value).scheme != "https" and not is_loopback_url(value):
        raise ValueError("must use https (plain http is only allowed on loopback addresses)")
    return value


class TlsFiles(_Model):
    cert_file: ConfigPath
    key_file: ConfigPath


class ServerConfig(_Model):
    host: str = "0.0.0.0"  # noqa: S104 - a gateway listens on all interfaces by default
    port: Port = 8080
    public_base_url: str
    tls: TlsFiles | None = None
    max_request_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_response_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_header_bytes: int = Field(default=8190, ge=1024, le=65536)
    shutdown_timeout_s: PositiveFloat = 20.0
    drain_delay_s: Annotated[float, Field(ge=0)] = 0.0
    trusted_proxies: list[str] = Field(default_factory=list)
    hsts_max_age_s: Annotated[int, Field(ge=0)] = 31536000
    admin_port: Port | None = 9090  # /metrics, /healthz, /readyz; null: off; 0: any free port
    # loopback by default: /metrics and the probes need no login; null: the same as `host`
    admin_host: str | None = "127.0.0.1"
    workers: int = Field(default=1, ge=1, le=256)  # processes on one port (SO_REUSEPORT)

    @field_validator("public_base_url")
    @classmethod
    def _check_base(cls, v: str) -> str:
        return _absolute_http_url(v)

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, v: list[str]) -> list[str]:
        for item in v:
            ipaddress.ip_network(item, strict=False)
        return v

    @property
    def base_path(self) -> str:
        """The path of ``public_base_url`` without a trailing slash ('' for the root)."""
        return urlsplit(self.public_base_url).path.rstrip("/")


class StaticHeader(_Model):
    name: str
    value: str

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _HEADER_NAME.fullmatch(v):
            raise ValueError("is not a valid HTTP header name")
        return v


class BasicCredentials(_Model):
    username: str
    password: str


class UpstreamAuth(_Model):
    """Static credentials the gateway presents to a legacy upstream (one of the two)."""

    header: StaticHeader | None = None
    basic: BasicCredentials | None = None


class UpstreamTls(_Model):
    ca_file: ConfigPath | None = None
    client_cert_file: ConfigPath | None = None
    client_key_file: ConfigPath | None = None


class UpstreamConfig(_Model):
    url: str
    timeout_s: PositiveFloat = 30.0
    connect_timeout_s: PositiveFloat = 5.0
    max_connections: int = Field(default=100, gt=0)
    keepalive_timeout_s: PositiveFloat = 30.0
    forward_authorization: bool = False
    auth: UpstreamAuth | None = None
    tls: UpstreamTls | None = None
    post_search: bool = True

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        return _absolute_http_url(v)


class JwtIssuer(_Model):
    issuer: str
    jwks_uri: str | None = None
    audience: str | list[str] | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])

    @field_validator("issuer")
    @classmethod
    def _check_issuer(cls, v: str) -> str:
        _secure_url(v)
        return v  # exact match on `iss`: keep exactly what the operator wrote

    @field_validator("jwks_uri")
    @classmethod
    def _check_jwks(cls, v: str | None) -> str | None:
        return None if v is None else _secure_url(v)

    @field_validator("algorithms")
    @classmethod
    def _check_algorithms(cls, v: list[str]) -> list[str]:
        allowed = {
            "RS256",
            "RS384",
            "RS512",
            "PS256",
            "PS384",
            "PS512",
            "ES256",
            "ES384",
            "ES512",
            "EdDSA",
        }
        if not v:
            raise ValueError("must list at least one algorithm")
        bad = [a for a in v if a not in allowed]
        if bad:
            raise ValueError(
                f"only asymmetric algorithms are allowed ({', '.join(sorted(allowed))}); "
                f"refused: {', '.join(bad)}"
            )
        return v


class Introspection(_Model):
    endpoint: str
    client_id: str
    client_secret: str
    timeout_s: PositiveFloat = 5.0
    cache_max_ttl_s: PositiveFloat = 60.0
    negative_cache_ttl_s: Annotated[float, Field(ge=0)] = 5.0
    cache_size: int = Field(default=10000, gt=0)

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, v: str) -> str:
        return _secure_url(v)


class ClaimNames(_Model):
    scope: str = "scope"
    patient: str = "patient"
    fhir_user: str = "fhirUser"
    encounter: str = "encounter"
    client_id: str = "client_id"


class AuthConfig(_Model):
    jwt: list[JwtIssuer] = Field(default_factory=list)
    introspection: Introspection | None = None
    leeway_s: Annotated[float, Field(ge=0, le=300)] = 30.0
    claims: ClaimNames = Field(default_factory=ClaimNames)
    jwks_cache_ttl_s: PositiveFloat = 600.0
    jwks_min_refetch_interval_s: PositiveFloat = 60.0
    token_cache_size: int = Field(default=10000, gt=0)
    token_cache_max_ttl_s: PositiveFloat = 300.0


#: the SMART capabilities the gateway can advertise: every one SMART App Launch 2.x defines
#: ("Conformance", "Capabilities"); what backs each is in
#: ``gateway.smart.smart_configuration.CAPABILITY_RULES``
Capability = Literal[
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "sso-openid-connect",
    "context-banner",
    "context-style",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "context-standalone-encounter",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
    "smart-app-state",
]
CAPABILITIES: tuple[str, ...] = get_args(Capability)


class SmartConfig(_Model):
    """``smart``: what ``.well-known/smart-configuration`` and ``metadata`` advertise to apps.

    Every URL is absolute (https, or http on loopback). The authorization server's own
    discovery document (``openid_configuration_url``) can fill in what is not set here: config
    wins. ``capabilities`` are checked against the rest at start-up
    (``gateway.smart.smart_configuration.config_problems``) and again against the merged document.
    """

    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    introspection_endpoint: str | None = None
    revocation_endpoint: str | None = None
    management_endpoint: str | None = None
    registration_endpoint: str | None = None
    jwks_uri: str | None = None
    issuer: str | None = None
    scopes_supported: list[str] | None = None
    response_types_supported: list[str] | None = None
    grant_types_supported: list[str] | None = None
    token_endpoint_auth_methods_supported: list[str] | None = None
    token_endpoint_auth_signing_alg_values_supported: list[str] | None = None
    capabilities: list[Capability] = Field(default_factory=list)
    openid_configuration_url: str | None = None
    cache_ttl_s: PositiveFloat = 300.0

    @field_validator(
        "authorization_endpoint",
        "token_endpoint",
        "introspection_endpoint",
        "revocation_endpoint",
        "management_endpoint",
        "registration_endpoint",
        "jwks_uri",
        "openid_configuration_url",
    )
    @classmethod
    def _check_endpoint(cls, v: str | None) -> str | None:
        return None if v is None else _secure_url(v)

    @field_validator("issuer")
    @classmethod
    def _check_issuer(cls, v: str | None) -> str | None:
        if v is not None:
            _secure_url(v)
        return v  # an issuer is compared exactly: keep what the operator wrote

    @field_validator(
        "scopes_supported",
        "response_types_supported",
        "grant_types_supported",
        "token_endpoint_auth_methods_supported",
        "token_endpoint_auth_signing_alg_values_supported",
    )
    @classmethod
    def _check_list(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("must not be empty (leave it out instead)")
            bad = [item for item in v if not item or any(c.isspace() for c in item)]
            if bad:
                raise ValueError(f"entries must be non-empty and without spaces: {bad}")
            if len(set(v)) != len(v):
                raise ValueError("lists an entry twice")
        return v

    @field_validator("capabilities")
    @classmethod
    def _check_capabilities(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("lists a capability twice")
        return v


class CorsConfig(_Model):
    allowed_origins: list[str] = Field(default_factory=list)
    max_age_s: Annotated[int, Field(ge=0, le=86400)] = 600

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            if origin == "*":
                raise ValueError("'*' is not allowed: list each origin exactly")
            parts = urlsplit(origin)
            if (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or parts.path
                or parts.query
                or parts.fragment
                or origin != origin.lower()
            ):
                raise ValueError(
                    f"{origin!r} is not an origin (scheme://host[:port], lower case, no path)"
                )
        return v


class PhiConfig(_Model):
    post_search: Literal["phi", "all", "off"] = "phi"
    parameters: list[str] | None = None
    extra_parameters: list[str] = Field(default_factory=list)
    allow_get_fallback: bool = False
    cursor_keys: list[str] = Field(default_factory=list)
    cursor_ttl_s: Annotated[float, Field(gt=0, le=86400)] = 900.0

    @field_validator("cursor_keys")
    @classmethod
    def _check_keys(cls, v: list[str]) -> list[str]:
        for key in v:
            try:
                raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
            except (ValueError, binascii.Error):
                raise ValueError("each key must be base64url (32 random bytes)") from None
            if len(raw) != 32:
                raise ValueError("each key must decode to exactly 32 bytes (AES-256)")
        return v


class PoliciesConfig(_Model):
    paths: list[ConfigPath] = Field(default_factory=list)
    poll_interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0


class LoggingConfig(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access_log: bool = True


class AuditFhirSink(_Model):
    """``audit.fhir``: AuditEvents POSTed in batch/transaction Bundles, off the request path."""

    url: str
    bundle_type: Literal["batch", "transaction"] = "batch"
    spill_file: ConfigPath
    batch_size: int = Field(default=100, gt=0, le=1000)
    flush_interval_s: PositiveFloat = 1.0
    queue_size: int = Field(default=10000, gt=0)
    timeout_s: PositiveFloat = 10.0
    max_attempts: int = Field(default=5, gt=0, le=100)
    initial_backoff_s: PositiveFloat = 0.5
    max_backoff_s: PositiveFloat = 30.0
    drain_timeout_s: Annotated[float, Field(ge=0)] = 5.0
    auth: UpstreamAuth | None = None
    ca_file: ConfigPath | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        return _secure_url(v)


class AuditConfig(_Model):
    enabled: bool = True
    file: ConfigPath | None = None  # JSON lines; null: stdout
    source_id: str = Field(default="fhir-gateway", min_length=1)
    fhir: AuditFhirSink | None = None


class Bucket(_Model):
    """A token bucket: ``rate_per_s`` sustained, ``burst`` at once."""

    rate_per_s: PositiveFloat
    burst: int = Field(gt=0)


class ClientLimits(_Model):
    patient: Bucket | None = None
    user: Bucket | None = None
    system: Bucket | None = None


class LimitsConfig(_Model):
    clients: ClientLimits = Field(default_factory=ClientLimits)
    anonymous: Bucket | None = None
    max_buckets: int = Field(default=100000, gt=0)
    upstream_concurrency: int | None = Field(default=None, gt=0)
    upstream_queue: int = Field(default=100, ge=0)
    upstream_queue_timeout_s: PositiveFloat = 5.0
    retry_after_s: int = Field(default=1, gt=0, le=3600)


class TracingConfig(_Model):
    enabled: bool = False
    service_name: str = Field(default="fhir-gateway", min_length=1)
    endpoint: str | None = None  # OTLP/HTTP traces endpoint; null: the exporter's default

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, v: str | None) -> str | None:
        return None if v is None else _absolute_http_url(v)
