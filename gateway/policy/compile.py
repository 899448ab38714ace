"""Compile parsed policy files into plain Python predicates, grouped by resource type.

Everything that can be decided at load time is: code lists become a set of ``(system, code)``
pairs plus per-system prefix tuples, paths become tuples, FHIRPath expressions are parsed once
(with a strict syntax check: fhirpathpy itself ignores trailing garbage), and ``all``/``any``
of one item collapse. Cross-file problems (duplicate ids or list names, unknown lists,
``overrides`` naming a policy that is not a withhold/redact of the same types) are reported
with the position of the value at fault.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gateway.policy.engine import (
    CompiledPolicy,
    PolicySet,
    PrincipalPredicate,
    PrincipalView,
    ResourcePredicate,
)
from gateway.policy.model import (
    All,
    Any_,
    Claim,
    ClientId,
    CodeList,
    Codings,
    Element,
    FhirPath,
    FhirUserType,
    Not,
    PatientFacing,
    Policy,
    PolicyError,
    PolicyFile,
    PrincipalCond,
    Problem,
    ResourceCond,
    ScopeLevel,
    Status,
)

_EMPTY: tuple[Any, ...] = ()
Getter = Callable[[Any], Sequence[Any]]


def _always(_: Any) -> bool:
    return True


def getter(path: tuple[str, ...]) -> Getter:
    """Every value at ``path`` (lists flattened, missing steps give nothing)."""
    if len(path) == 1:
        (name,) = path

        def get1(obj: Any) -> Sequence[Any]:
            value = obj.get(name)
            if value is None:
                return _EMPTY
            return value if isinstance(value, list) else (value,)

        return get1

    def get(obj: Any) -> Sequence[Any]:
        current: list[Any] = [obj]
        for step in path:
            nxt: list[Any] = []
            for o in current:
                if isinstance(o, dict):
                    value = o.get(step)
                    if isinstance(value, list):
                        nxt.extend(value)
                    elif value is not None:
                        nxt.append(value)
            if not nxt:
                return _EMPTY
            current = nxt
        return current

    return get


def _with_undotted(codes: Sequence[str]) -> list[str]:
    """ICD-10-CM codes are written with or without the dot (F32.9, F329): accept both."""
    return [*codes, *(c.replace(".", "") for c in codes if "." in c)]


class _Lists:
    """Named code lists resolved to a set of pairs and per-system prefixes."""

    def __init__(self, lists: dict[str, CodeList]) -> None:
        self.lists = lists

    def resolve(
        self, names: Sequence[str]
    ) -> tuple[frozenset[tuple[str, str]], dict[str, tuple[str, ...]]]:
        exact: set[tuple[str, str]] = set()
        prefixes: dict[str, list[str]] = {}
        for name in names:
            for entry in self.lists[name].entries:
                exact.update((entry.system, c) for c in _with_undotted(entry.codes))
                prefixes.setdefault(entry.system, []).extend(_with_undotted(entry.prefixes))
        return frozenset(exact), {s: tuple(p) for s, p in prefixes.items() if p}


def _codings(
    get: Getter, exact: frozenset[tuple[str, str]], pre: dict[str, tuple[str, ...]]
) -> ResourcePredicate:
    def match(resource: dict[str, Any]) -> bool:
        for node in get(resource):
            codings = node.get("coding")
            for c in (node,) if codings is None else codings:
                system = c.get("system")
                code = c.get("code")
                if (system, code) in exact:
                    return True
                if pre:
                    starts = pre.get(system)
                    if starts is not None and isinstance(code, str) and code.startswith(starts):
                        return True
        return False

    return match


def _all(preds: tuple[Callable[[Any], bool], ...]) -> Callable[[Any], bool]:
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda x: a(x) and b(x)

    def every(x: Any) -> bool:
        for p in preds:  # noqa: SIM110 - no generator per call (hot path)
            if not p(x):
                return False
        return True

    return every


def _any(preds: tuple[Callable[[Any], bool], ...]) -> Callable[[Any], bool]:
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda x: a(x) or b(x)

    def some(x: Any) -> bool:
        for p in preds:  # noqa: SIM110 - no generator per call (hot path)
            if p(x):
                return True
        return False

    return some


def _same(a: Any, b: Any) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)


class Compiler:
    def __init__(self, lists: dict[str, CodeList], problems: list[Problem]) -> None:
        self.lists = _Lists(lists)
        self.problems = problems

    # ------------------------------------------------------------------ resource side

    def resource(self, cond: ResourceCond | None) -> ResourcePredicate:
        if cond is None:
            return _always
        if isinstance(cond, All | Any_):
            preds = tuple(self.resource(c) for c in cond.items)
            return _all(preds) if isinstance(cond, All) else _any(preds)
        if isinstance(cond, Not):
            inner = self.resource(cond.item)
            return lambda r: not inner(r)
        if isinstance(cond, Codings):
            unknown = [n for n in cond.lists if n not in self.lists.lists]
            for name in unknown:
                self.problems.append(Problem(cond.pos, f"unknown code list {name!r}"))
            exact, pre = self.lists.resolve([n for n in cond.lists if n not in unknown])
            return _codings(getter(cond.path), exact | frozenset(cond.codings), pre)
        if isinstance(cond, Status):
            values = frozenset(cond.values)
            return lambda r: r.get("status") in values
        if isinstance(cond, Element):
            return self.element(cond)
        if isinstance(cond, FhirPath):
            return self.fhirpath(cond)
        raise AssertionError(cond)

    def element(self, cond: Element) -> ResourcePredicate:
        get = getter(cond.path)
        if cond.op == "exists":
            want: bool = cond.value
            return lambda r: bool(get(r)) is want
        if cond.op == "equals":
            target = cond.value
            return lambda r: any(_same(v, target) for v in get(r))
        values: tuple[Any, ...] = cond.value
        return lambda r: any(any(_same(v, t) for t in values) for v in get(r))

    def fhirpath(self, cond: FhirPath) -> ResourcePredicate:
        problem = fhirpath_syntax_error(cond.expression)
        if problem is not None:
            self.problems.append(Problem(cond.pos, f"fhirpath: {problem}"))
            return _always
        import fhirpathpy
        from fhirpathpy.models import models

        try:
            fn = fhirpathpy.compile(cond.expression, model=models["r4"])
        except Exception as exc:  # noqa: BLE001 - report any compile failure with its position
            self.problems.append(Problem(cond.pos, f"fhirpath: {exc or type(exc).__name__}"))
            return _always

        def match(resource: dict[str, Any]) -> bool:
            result = fn(resource, None)
            return bool(result) and result != [False]

        return match

    # ------------------------------------------------------------------ principal side

    def principal(self, cond: PrincipalCond | None) -> PrincipalPredicate:
        if cond is None:
            return _always
        if isinstance(cond, All | Any_):
            preds = tuple(self.principal(c) for c in cond.items)
            return _all(preds) if isinstance(cond, All) else _any(preds)
        if isinstance(cond, Not):
            inner = self.principal(cond.item)
            return lambda v: not inner(v)
        if isinstance(cond, ScopeLevel):
            levels = frozenset(cond.levels)
            return lambda v: v.level in levels
        if isinstance(cond, FhirUserType):
            types = frozenset(cond.types)
            return lambda v: v.fhir_user_type in types
        if isinstance(cond, PatientFacing):
            want = cond.value
            return lambda v: v.patient_facing is want
        if isinstance(cond, ClientId):
            ids = frozenset(cond.ids)
            return lambda v: v.client_id in ids
        if isinstance(cond, Claim):
            return claim_predicate(cond)
        raise AssertionError(cond)


def claim_values(view: PrincipalView, name: tuple[str, ...]) -> tuple[bool, list[Any]]:
    """``(present, items)``: lists give their items, a string its space-separated tokens,
    a Coding-like object ``system|code``."""
    value: Any = view.claims
    for step in name:
        if not isinstance(value, dict) and not hasattr(value, "get"):
            return False, []
        value = value.get(step)
        if value is None:
            return False, []
    items = value if isinstance(value, list) else [value]
    out: list[Any] = []
    for item in items:
        if isinstance(item, str):
            out.extend(item.split())
        elif isinstance(item, dict) and "code" in item:
            out.append(f"{item.get('system', '')}|{item['code']}")
            out.append(item["code"])
        else:
            out.append(item)
    return True, out


def claim_predicate(cond: Claim) -> PrincipalPredicate:
    name, arg = cond.name, cond.value
    if cond.op == "present":
        return lambda v: claim_values(v, name)[0] is arg
    if cond.op == "equals":

        def equals(v: PrincipalView) -> bool:
            value: Any = v.claims
            for step in name:
                value = value.get(step) if hasattr(value, "get") else None
            return _same(value, arg)

        return equals
    if cond.op == "contains":
        return lambda v: any(_same(x, arg) for x in claim_values(v, name)[1])
    wanted: frozenset[str] = arg
    return lambda v: any(isinstance(x, str) and x in wanted for x in claim_values(v, name)[1])


def fhirpath_syntax_error(expression: str) -> str | None:
    """A strict parse of the expression: the first syntax error, or None."""
    from antlr4 import CommonTokenStream, InputStream, Token  # type: ignore[import-untyped]
    from antlr4.error.ErrorListener import ErrorListener  # type: ignore[import-untyped]
    from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
    from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

    errors: list[str] = []

    class Collect(ErrorListener):  # type: ignore[misc]
        def syntaxError(self, *args: Any) -> None:  # antlr names it
            errors.append(f"column {args[3] + 1}: {args[4]}")

    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(Collect())
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(Collect())
    parser.expression()
    if not errors and parser.getCurrentToken().type != Token.EOF:
        errors.append(f"unexpected text at column {parser.getCurrentToken().column + 1}")
    return errors[0] if errors else None


def _check_overrides(policies: list[Policy], problems: list[Problem]) -> None:
    by_id = {p.id: p for p in policies}
    for p in policies:
        if p.effect != "allow" or p.overrides is None:
            continue
        for target_id in p.overrides:
            target = by_id.get(target_id)
            if target is None:
                problems.append(Problem(p.pos, f"{p.id}: overrides unknown policy {target_id!r}"))
            elif target.effect == "allow":
                problems.append(Problem(p.pos, f"{p.id}: {target_id!r} is itself an exception"))
            elif not set(p.resource_types) & set(target.resource_types):
                problems.append(
                    Problem(p.pos, f"{p.id}: shares no resource type with {target_id!r}")
                )


def compile_files(files: Sequence[PolicyFile]) -> PolicySet:
    """Compile a complete set; raise :class:`PolicyError` with every problem found."""
    problems: list[Problem] = []
    lists: dict[str, CodeList] = {}
    for f in files:
        for cl in f.code_lists:
            if cl.name in lists:
                problems.append(
                    Problem(
                        cl.pos, f"code list {cl.name!r} already defined at {lists[cl.name].pos}"
                    )
                )
            else:
                lists[cl.name] = cl
    policies: list[Policy] = []
    seen: dict[str, Policy] = {}
    for f in files:
        for p in f.policies:
            if p.id in seen:
                problems.append(
                    Problem(p.pos, f"policy id {p.id!r} already used at {seen[p.id].pos}")
                )
            else:
                seen[p.id] = p
                policies.append(p)
    _check_overrides(policies, problems)
    compiler = Compiler(lists, problems)
    compiled = tuple(
        CompiledPolicy(
            id=p.id,
            description=p.description,
            effect=p.effect,
            resource_types=p.resource_types,
            matches_resource=compiler.resource(p.resource),
            matches_principal=compiler.principal(p.principal),
            redact=p.redact,
            overrides=None if p.overrides is None else frozenset(p.overrides),
            break_glass=p.break_glass,
            release_by=None if p.release_by is None else compiler.principal(p.release_by),
            pos=p.pos,
        )
        for p in policies
    )
    if problems:
        raise PolicyError(sorted(problems, key=lambda x: (x.pos.file, x.pos.line, x.pos.column)))
    return PolicySet(compiled, files=tuple(f.file for f in files))
