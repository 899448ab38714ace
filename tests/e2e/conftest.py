"""End-to-end fixtures: one SMART stack (real upstream, real authorization server, the gateway
as its own process) per session, shared by the browser, Python and backend flows."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.stack import SmartStack, start_stack
from tests.support.sekmet import RealUpstream, real_upstream

__all__ = ["real_upstream"]


@pytest.fixture(scope="session")
def smart_stack(
    real_upstream: RealUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SmartStack]:
    stack = start_stack(real_upstream, tmp_path_factory.mktemp("smart-stack"))
    try:
        yield stack
    finally:
        stack.stop()
