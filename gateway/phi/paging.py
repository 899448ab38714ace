"""Replace every link of a returned Bundle with a gateway cursor URL (decisions 13-14).

Upstream links echo the query (which may carry PHI) and name the upstream; after URL
rewriting they start with the public base. Each becomes ``{public_base}?_cursor=<token>``;
a link that does not point below the public base cannot be followed safely and is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.phi.cursors import CursorCodec


@dataclass(frozen=True, slots=True)
class Origin:
    """The client's request a cursor re-authorizes when followed."""

    method: str
    path: tuple[str, ...]
    params: tuple[tuple[str, str], ...]


def replace_links(
    doc: dict[str, Any], *, public_base: str, codec: CursorCodec, origin: Origin, binding: str
) -> bool:
    links = doc.get("link")
    if doc.get("resourceType") != "Bundle" or not isinstance(links, list) or not links:
        return False
    base = public_base.rstrip("/")
    kept: list[dict[str, Any]] = []
    for link in links:
        url = link.get("url") if isinstance(link, dict) else None
        if not isinstance(url, str) or not (
            url == base or url.startswith(base + "/") or url.startswith(base + "?")
        ):
            continue  # not a link the gateway can serve: dropped, never passed on
        relative = url[len(base) :].lstrip("/")
        token = codec.seal(
            method=origin.method,
            path=origin.path,
            params=origin.params,
            link=relative,
            binding=binding,
        )
        kept.append({**link, "url": f"{base}?_cursor={token}"})
    if kept:
        doc["link"] = kept
    else:
        doc.pop("link", None)
    return True
