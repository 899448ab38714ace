"""Every Reference in a FHIR document, wherever it sits (extensions, contained resources,
backbone elements): the one walk the write checks, the visibility check and the policy
engine share.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def reference_holders(node: Any) -> Iterator[dict[str, Any]]:
    """Each object that has a string ``reference``, depth first and without recursion (a
    hostile document cannot exhaust the stack). A holder changed by the caller between two
    steps is walked as changed."""
    stack: list[Any] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("reference"), str):
                yield item
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))
