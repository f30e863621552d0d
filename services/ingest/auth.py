"""The caller of each request, from its API key (``Authorization: Bearer rk_...``), as FastAPI dependencies.

Every data endpoint takes ``CurrentUser`` (or ``AdminUser``), and scopes every query to
``principal.user_id``: no endpoint reads a user id from a form field or a query parameter, so no
request can name another user. A job of another user answers 404, exactly like a job that does not
exist, so a caller cannot learn which ids exist.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.ingest.errors import ApiError
from services.ingest.resources import IngestResources
from shared.auth import Principal
from shared.exceptions import Unauthenticated

# auto_error=False: a missing header is answered by our 401 (the error shape), not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="an API key from `rmbg keys create`")


def resources(request: Request) -> IngestResources:
    res: IngestResources = request.app.state.resources
    return res


Resources = Annotated[IngestResources, Depends(resources)]


async def current_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated("missing API key")
    res = resources(request)
    principal = await res.keys.verify(credentials.credentials)
    await res.limits.check_rate(principal)
    request.state.principal = principal
    return principal


async def presented_key(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The API key the request presented, for a handler that must verify it again later (a long stream).
    Declared beside CurrentUser, which has already refused a request without one."""
    if credentials is None:
        raise Unauthenticated("missing API key")
    return credentials.credentials


async def admin_principal(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if not principal.is_admin:
        raise ApiError(403, "forbidden", "this endpoint needs an admin key")
    return principal


CurrentUser = Annotated[Principal, Depends(current_principal)]
AdminUser = Annotated[Principal, Depends(admin_principal)]
PresentedKey = Annotated[str, Depends(presented_key)]
