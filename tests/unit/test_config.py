"""Configuration: the example loads, docs list every key, every problem is reported at once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from gateway.config import Config, load_config, parse_config
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.yaml"
DOCS = ROOT / "docs" / "configuration.md"


def minimal(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "server": {"public_base_url": "https://fhir.example.org/r4"},
        "upstream": {"url": "http://legacy:8080/fhir"},
    }
    for section, values in extra.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    return data


def problems_of(data: Any, **kw: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=kw.pop("base_dir", Path("/nonexistent")), env=kw.pop("env", {}))
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def _models(model: type[BaseModel], seen: set[type[BaseModel]] | None = None) -> set[type]:
    seen = set() if seen is None else seen
    seen.add(model)
    for field in model.model_fields.values():
        stack: list[Any] = [field.annotation]
        while stack:
            tp = stack.pop()
            if isinstance(tp, type) and issubclass(tp, BaseModel) and tp not in seen:
                _models(tp, seen)
            stack.extend(getattr(tp, "__args__", ()))
    return seen


ALL_KEYS = sorted(
    {(m.__name__, name) for m in _models(Config) for name in m.model_fields},
)


# --------------------------------------------------------------------------- example and docs


def test_example_config_loads() -> None:
    cfg = load_config(EXAMPLE, env={})
    assert cfg.server.public_base_url == "https://fhir.example.org/r4"
    assert cfg.server.base_path == "/r4"


def test_example_values_are_the_defaults() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())

    def walk(model: type[BaseModel], node: dict[str, Any], path: str) -> None:
        for key, value in node.items():
            field = model.model_fields[key]
            sub = field.annotation
            if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
                walk(sub, value, f"{path}{key}.")
            elif not field.is_required():
                assert field.get_default(call_default_factory=True) == value, f"{path}{key}"

    walk(Config, data, "")


@pytest.mark.parametrize(("model", "key"), ALL_KEYS, ids=[f"{m}.{k}" for m, k in ALL_KEYS])
def test_every_key_in_example(model: str, key: str) -> None:
    assert re.search(
        rf"(?m)^[\s#{{-]*{re.escape(key)}:|[{{,]\s*{re.escape(key)}:", EXAMPLE.read_text()
    ), f"{model}.{key} missing from config.example.yaml"


@pytest.mark.parametrize(("model", "key"), ALL_KEYS, ids=[f"{m}.{k}" for m, k in ALL_KEYS])
def test_every_key_in_docs(model: str, key: str) -> None:
    assert DOCS.is_file(), "docs/configuration.md does not exist"
    # documented in a code span, alone or as part of a dotted path (`auth.header.name`)
    code_span = rf"`[\w.\[\]]*\b{re.escape(key)}\b[\w.\[\]]*`"
    assert re.search(code_span, DOCS.read_text()), (
        f"{model}.{key} missing from docs/configuration.md"
    )


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (minimal(bogus=1), "bogus"),
        (minimal(server={"bogus": 1}), "server.bogus"),
        (
            minimal(server={"tls": {"cert_file": "a", "key_file": "b", "bogus": 1}}),
            "server.tls.bogus",
        ),
        (minimal(auth={"claims": {"bogus": "x"}}), "auth.claims.bogus"),
        (
            minimal(auth={"jwt": [{"issuer": "https://as.example", "bogus": 1}]}),
            "auth.jwt[0].bogus",
        ),
        (
            minimal(upstream={"auth": {"header": {"name": "X", "value": "v", "bogus": 1}}}),
            "upstream.auth.header.bogus",
        ),
    ],
    ids=["top", "server", "server.tls", "auth.claims", "auth.jwt[0]", "upstream.auth.header"],
)
def test_unknown_key_reported_with_path(data: dict[str, Any], path: str) -> None:
    assert f"{path}: unknown key" in problems_of(data)


def test_every_problem_at_once() -> None:
    data = {
        "server": {"public_base_url": "ftp://x", "port": 70000, "typo": 1},
        "upstream": {"url": "not a url", "timeout_s": -1},
        "auth": {"jwt": [{"issuer": "http://as.example.org", "algorithms": ["HS256"]}]},
        "cors": {"allowed_origins": ["*"]},
        "logging": {"level": "LOUD"},
    }
    problems = problems_of(data)
    assert len(problems) == 9, problems
    for prefix in (
        "server.public_base_url:",
        "server.port:",
        "server.typo: unknown key",
        "upstream.url:",
        "upstream.timeout_s:",
        "auth.jwt[0].issuer:",
        "auth.jwt[0].algorithms:",
        "cors.allowed_origins:",
        "logging.level:",
    ):
        assert any(p.startswith(prefix) for p in problems), prefix


def test_missing_required_sections() -> None:
    problems = problems_of({"logging": {"level": "INFO"}})
    assert sorted(problems) == ["server: Field required", "upstream: Field required"]


@pytest.mark.parametrize("data", [[], "x", None, 3], ids=["list", "str", "none", "int"])
def test_top_level_must_be_mapping(data: Any) -> None:
    assert problems_of(data) == ["(top level): the configuration must be a YAML mapping"]


# --------------------------------------------------------------------------- environment


def test_env_substitution() -> None:
    data = minimal(upstream={"auth": {"basic": {"username": "gw", "password": "${UP_PW}x"}}})
    cfg = parse_config(data, base_dir=Path("/"), env={"UP_PW": "s3cr$t${NOT}"})
    assert cfg.upstream.auth is not None and cfg.upstream.auth.basic is not None
    assert cfg.upstream.auth.basic.password == "s3cr$t${NOT}x"  # substituted once, not twice


def test_missing_env_named_with_key_path() -> None:
    data = minimal(
        auth={
            "introspection": {
                "endpoint": "https://as.example/i",
                "client_id": "gw",
                "client_secret": "${SECRET_X}",
            },
            "jwt": [{"issuer": "https://as.example", "audience": ["a", "${AUD_Y}"]}],
        }
    )
    problems = problems_of(data, env={})
    assert "auth.introspection.client_secret: environment variable SECRET_X is not set" in problems
    assert "auth.jwt[0].audience[1]: environment variable AUD_Y is not set" in problems
    assert len(problems) == 2


# --------------------------------------------------------------------------- security rules


@pytest.mark.parametrize("alg", ["HS256", "HS512", "none", "None", "rs256"])
def test_symmetric_and_none_algorithms_refused(alg: str) -> None:
    data = minimal(auth={"jwt": [{"issuer": "https://as.example", "algorithms": ["RS256", alg]}]})
    [problem] = problems_of(data)
    assert problem.startswith("auth.jwt[0].algorithms:") and alg in problem


@pytest.mark.parametrize(
    "issuer",
    [
        "http://as.example.org",
        "http://10.0.0.1:9000",
        "http://localhost.evil.example",
        "http://127.0.0.1.nip.io",
        "ftp://as.example",
        "as.example",
    ],
)
def test_insecure_issuer_refused(issuer: str) -> None:
    [problem] = problems_of(minimal(auth={"jwt": [{"issuer": issuer}]}))
    assert problem.startswith("auth.jwt[0].issuer:")


@pytest.mark.parametrize(
    "issuer",
    [
        "http://127.0.0.1:9000",
        "http://localhost:9000",
        "http://[::1]:9000",
        "https://as.example.org/realms/x",
    ],
)
def test_loopback_http_or_https_issuer_allowed(issuer: str) -> None:
    cfg = parse_config(minimal(auth={"jwt": [{"issuer": issuer}]}), base_dir=Path("/"), env={})
    assert cfg.auth.jwt[0].issuer == issuer


def test_insecure_jwks_and_introspection_refused() -> None:
    data = minimal(
        auth={
            "jwt": [{"issuer": "https://as.example", "jwks_uri": "http://as.example/jwks"}],
            "introspection": {
                "endpoint": "http://as.example/i",
                "client_id": "a",
                "client_secret": "b",
            },
        }
    )
    problems = problems_of(data)
    assert {p.split(":")[0] for p in problems} == {
        "auth.jwt[0].jwks_uri",
        "auth.introspection.endpoint",
    }


@pytest.mark.parametrize(
    "origin", ["*", "https://app.example/", "https://APP.example", "null", "app.example"]
)
def test_bad_cors_origins_refused(origin: str) -> None:
    [problem] = problems_of(minimal(cors={"allowed_origins": [origin]}))
    assert problem.startswith("cors.allowed_origins:")


def test_upstream_auth_exactly_one() -> None:
    both = minimal(
        upstream={
            "auth": {
                "header": {"name": "X-Key", "value": "v"},
                "basic": {"username": "u", "password": "p"},
            }
        }
    )
    assert problems_of(both) == ["upstream.auth: set exactly one of 'header' or 'basic'"]
    neither = minimal(upstream={"auth": {}})
    assert problems_of(neither) == ["upstream.auth: set exactly one of 'header' or 'basic'"]


def test_bad_static_header_name_refused() -> None:
    data = minimal(upstream={"auth": {"header": {"name": "X Key:", "value": "v"}}})
    [problem] = problems_of(data)
    assert problem.startswith("upstream.auth.header.name:")


# --------------------------------------------------------------------------- files


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("server:\n  port: 1\n  host: [unclosed\nupstream: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    [problem] = info.value.problems
    assert "not valid YAML at line" in problem
    assert re.search(r"line [345],", problem)


def test_unreadable_file_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml", env={})
    assert "cannot read" in info.value.problems[0]


def test_tls_files_missing_reported(tmp_path: Path) -> None:
    data = minimal(server={"tls": {"cert_file": "tls.crt", "key_file": "/nope/tls.key"}})
    problems = problems_of(data, base_dir=tmp_path)
    assert problems == [
        f"server.tls.cert_file: file {tmp_path / 'tls.crt'} does not exist",
        "server.tls.key_file: file /nope/tls.key does not exist",
    ]


def test_unloadable_tls_pair_reported(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("not a cert")
    (tmp_path / "k.pem").write_text("not a key")
    data = minimal(server={"tls": {"cert_file": "c.pem", "key_file": "k.pem"}})
    [problem] = problems_of(data, base_dir=tmp_path)
    assert problem.startswith("server.tls: certificate and key do not load")
    assert "not a" not in problem


def test_relative_paths_resolved_against_config_dir(tmp_path: Path, monkeypatch: Any) -> None:
    conf_dir = tmp_path / "etc"
    (conf_dir / "policies").mkdir(parents=True)
    (conf_dir / "ca.pem").write_text("x")
    (conf_dir / "gw.yaml").write_text(
        "server: {public_base_url: 'https://fhir.example.org/r4'}\n"
        "upstream:\n  url: https://legacy.example/fhir\n  tls: {ca_file: ca.pem}\n"
        "policies: {paths: [policies, /abs/elsewhere]}\n"
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(conf_dir / "gw.yaml", env={})
    assert info.value.problems == ["policies.paths[1]: /abs/elsewhere does not exist"]
    (conf_dir / "gw.yaml").write_text(
        (conf_dir / "gw.yaml").read_text().replace(", /abs/elsewhere", "")
    )
    cfg = load_config(Path("etc") / "gw.yaml", env={})
    assert cfg.policies.paths == [conf_dir.resolve() / "policies"]
    assert cfg.upstream.tls is not None
    assert cfg.upstream.tls.ca_file == conf_dir.resolve() / "ca.pem"
