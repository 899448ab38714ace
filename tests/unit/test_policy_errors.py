"""Compilation errors: every problem reported, each with file, line and column."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.policy.compile import compile_files, fhirpath_syntax_error
from gateway.policy.model import PolicyError, parse_file
from gateway.policy.store import load_policy_set


def problems(text: str, file: str = "p.yaml") -> list[str]:
    with pytest.raises(PolicyError) as info:
        compile_files([parse_file(textwrap.dedent(text).lstrip("\n"), file)])
    return [str(p) for p in info.value.items]


def test_yaml_syntax_error_has_position() -> None:
    assert problems("policies:\n  - id: [a\n") == [
        "p.yaml:3:1: YAML: did not find expected ',' or ']'"
    ]


def test_duplicate_key_has_position() -> None:
    assert problems("policies: []\npolicies: []\n") == ["p.yaml:2:1: duplicate key 'policies'"]


def test_every_problem_in_a_file_is_reported_with_its_position() -> None:
    out = problems(
        """
        policies:
          - id: bad id
            description: x
            resource_types: [Condition, Conditoin]
            resource:
              statuss: [active]
            principal:
              scope_level: admin
            effect: withhold
            colour: red
          - id: r
            description: x
            resource_types: [Observation]
            effect: redact
            redact: [id, "a..b"]
          - id: e
            description: x
            resource_types: [Observation]
            effect: allow
          - description: missing id
            resource_types: [Observation]
            effect: hide
        """
    )
    joined = "\n".join(out)
    for expected in [
        "p.yaml:10:5: policy: unknown key 'colour'",
        "p.yaml:2:9: id 'bad id'",
        "p.yaml:4:33: resource_types: unknown FHIR R4 type 'Conditoin'",
        "p.yaml:6:7: unknown resource condition 'statuss'",
        "p.yaml:8:20: scope_level: 'admin' is not one of patient, user, system",
        "p.yaml:15:14: redact: 'id' cannot be redacted",
        "p.yaml:15:18: redact: 'a..b' is not an element path",
        "p.yaml:16:5: effect allow needs 'overrides'",
        "p.yaml:20:5: policy: 'id' is required",
    ]:
        assert expected in joined, (expected, joined)


def test_cross_file_problems_point_at_the_value() -> None:
    a = parse_file(
        textwrap.dedent(
            """\
            code_lists:
              dup: [{system: s, codes: [1]}]
            policies:
              - id: p
                description: x
                resource_types: [Condition]
                resource: {code_in: [dup, missing]}
                effect: withhold
              - id: q
                description: x
                resource_types: [Observation]
                effect: allow
                overrides: [p, nope]
            """
        ),
        "a.yaml",
    )
    b = parse_file(
        "code_lists:\n  dup: [{system: s, codes: [2]}]\npolicies:\n"
        "  - {id: p, description: x, resource_types: [Patient], effect: withhold}\n",
        "b.yaml",
    )
    with pytest.raises(PolicyError) as info:
        compile_files([a, b])
    assert [str(p) for p in info.value.items] == [
        "a.yaml:7:25: unknown code list 'missing'",
        "a.yaml:9:5: q: shares no resource type with 'p'",
        "a.yaml:9:5: q: overrides unknown policy 'nope'",
        "b.yaml:2:8: code list 'dup' already defined at a.yaml:2:8",
        "b.yaml:4:5: policy id 'p' already used at a.yaml:4:5",
    ]


def test_fhirpath_errors_are_found_at_load() -> None:
    assert fhirpath_syntax_error("code.coding.exists()") is None
    assert fhirpath_syntax_error("a b c") is not None  # fhirpathpy alone accepts this
    assert fhirpath_syntax_error("code.where(") is not None
    out = problems(
        """
        policies:
          - id: f
            description: x
            resource_types: [Condition]
            resource: {fhirpath: "code.coding.where(system = 'x'"}
            effect: withhold
        """
    )
    assert len(out) == 1 and out[0].startswith("p.yaml:5:26: fhirpath: column 31: ")


def test_wrong_shapes() -> None:
    out = "\n".join(
        problems(
            """
            policies:
              - id: a
                description: x
                resource_types: [Condition]
                resource: {status: [a], tag: ['x|y']}
                principal: {claim: {name: roles, contains: [a]}}
                effect: redact
                break_glass: true
              - id: b
                description: x
                resource_types: [Condition]
                resource: {element: {path: code, equals: a, exists: true}}
                principal: {any: []}
                effect: withhold
                overrides: [a]
              - id: c
                description: x
                resource_types: [Condition]
                resource: {security: [R]}
                effect: allow
                overrides: '*'
                release_by: {scope_level: user}
            """
        )
    )
    for expected in [
        "p.yaml:5:15: a resource condition is a mapping with exactly one of",
        "p.yaml:6:48: claim.contains must be a string, number or boolean",
        "p.yaml:2:5: effect redact needs 'redact'",
        "p.yaml:8:18: 'break_glass' is only for effect allow",
        "p.yaml:12:25: element needs exactly one of 'equals', 'in', 'exists'",
        "p.yaml:13:22: 'any' takes a non-empty list of conditions",
        "p.yaml:15:16: 'overrides' is only for effect allow",
        "p.yaml:19:27: security: 'R' is not 'system|code'",
        "p.yaml:22:17: 'release_by' is only for effect withhold or redact",
    ]:
        assert expected in out, (expected, out)


def test_load_policy_set_collects_problems_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("policies: {}\n")
    (tmp_path / "b.yml").write_text("code_lists: []\n")
    (tmp_path / "ignored.txt").write_text("not yaml: [")
    with pytest.raises(ConfigError) as info:  # PolicyError is a ConfigError
        load_policy_set([tmp_path])
    assert info.value.problems == [
        f"{tmp_path}/a.yaml:1:11: 'policies' must be a list",
        f"{tmp_path}/b.yml:1:13: 'code_lists' must be a mapping of name to entries",
    ]


def test_empty_file_and_no_paths_give_an_empty_set(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    assert len(load_policy_set([tmp_path])) == 0
    assert len(load_policy_set([])) == 0
