"""Privacy policies: YAML rules that withhold or redact resources per caller (issue 6).

``model``/``parse``: the language; ``compile``: predicates; ``engine``: evaluation;
``store``: loading and atomic reload; ``explain``: the ``explain`` command.
"""

from gateway.policy.engine import BoundPolicies, Outcome, PolicySet, PrincipalView
from gateway.policy.model import PolicyError, Problem
from gateway.policy.store import PolicyStore, load_policy_set

__all__ = [
    "BoundPolicies",
    "Outcome",
    "PolicyError",
    "PolicySet",
    "PolicyStore",
    "PrincipalView",
    "Problem",
    "load_policy_set",
]
