"""Token validation: bearer tokens in, a :class:`Principal` out (issue 3).

Public API::

    authenticator = Authenticator(cfg.auth, default_audience=..., realm=..., session=...)
    await authenticator.start()          # background JWKS/discovery fetches, never raises
    principal = await authenticator.authenticate(request.headers.get("Authorization"),
                                                 token_elsewhere=False)
    await authenticator.close()

Modules: :mod:`.bearer` (RFC 6750 transport and challenges), :mod:`.jwks` (async JWK Set
cache), :mod:`.jwt` (JWS/JWT verification), :mod:`.introspection` (RFC 7662),
:mod:`.principal` (claims → Principal), :mod:`.authenticator` (the stage itself).
"""

from gateway.auth.authenticator import Authenticator
from gateway.auth.principal import Principal

__all__ = ["Authenticator", "Principal"]
