"""Errors of the Kubernetes API adapter, all below :class:`dracpu.errors.KubeApiError`.

The API server reports failures as a ``Status`` object; :func:`status_error` turns one (or a bare
HTTP status without a body) into the matching class so callers can ``except NotFoundError`` instead
of comparing codes. Transport failures (refused connection, reset stream, TLS failure) become
:class:`ApiUnreachableError`, raised ``from`` the httpx exception::

    KubeApiError
    ├── KubeConfigError          kubeconfig / in-cluster files unusable (names file and field)
    ├── ApiUnreachableError      no HTTP answer: connect/read failure, timeout, TLS
    ├── ApiStatusError           the server answered with an error Status
    │   ├── BadRequestError          400
    │   ├── UnauthorizedError        401 (token expired or wrong)
    │   ├── ForbiddenError           403 (RBAC)
    │   ├── NotFoundError            404
    │   ├── AlreadyExistsError       409, reason AlreadyExists
    │   ├── ConflictError            409 otherwise (stale resourceVersion, failed precondition)
    │   ├── GoneError                410 (resourceVersion too old: relist)
    │   ├── InvalidError             422, with the field causes
    │   ├── TooManyRequestsError     429, with Retry-After
    │   └── ServerError              5xx
    ├── WatchProtocolError       a watch stream carried something that is not a watch event
    ├── BadBodyError             a 2xx body (or watch line) is not JSON of the expected shape
    │   └── BodyTooLargeError        it is over the client's size cap
    └── ClaimMismatchError       a ResourceClaim is not the one the kubelet asked about
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dracpu.errors import InvalidValueError, KubeApiError

__all__ = [
    "AlreadyExistsError",
    "ApiStatusError",
    "ApiUnreachableError",
    "BadBodyError",
    "BadRequestError",
    "BodyTooLargeError",
    "ClaimMismatchError",
    "ConflictError",
    "ForbiddenError",
    "GoneError",
    "InvalidError",
    "KubeConfigError",
    "NotFoundError",
    "ServerError",
    "StatusCause",
    "TooManyRequestsError",
    "UnauthorizedError",
    "WatchProtocolError",
    "status_error",
]


class KubeConfigError(KubeApiError, InvalidValueError):
    """The client configuration (kubeconfig, service-account files, env) is unusable."""

    def __init__(self, message: str, *, value: object = None, origin: str = "") -> None:
        text = message if value is None else f"{message}: {value!r}"
        InvalidValueError.__init__(self, text, value=value, origin=origin)


class ApiUnreachableError(KubeApiError):
    """The API server gave no HTTP answer (connection refused or dropped, timeout, TLS)."""

    def __init__(self, message: str, *, method: str, url: str) -> None:
        self.method = method
        self.url = url
        super().__init__(f"{method} {url}: {message}")


@dataclass(frozen=True, slots=True)
class StatusCause:
    """One entry of ``Status.details.causes``: which field is wrong and why."""

    reason: str
    message: str
    field: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ApiStatusError(KubeApiError):
    """The API server answered a request with an error ``Status``.

    ``code`` is the HTTP status, ``reason`` the Status reason (``NotFound``, ``Invalid``, ...),
    ``causes`` the per-field causes, ``method``/``url`` the request that failed, and ``status`` the
    raw Status object (empty if the body was not one).
    """

    def __init__(
        self,
        *,
        code: int,
        reason: str,
        message: str,
        method: str,
        url: str,
        causes: tuple[StatusCause, ...] = (),
        status: Mapping[str, Any] | None = None,
    ) -> None:
        self.code = code
        self.reason = reason
        self.message = message
        self.method = method
        self.url = url
        self.causes = causes
        self.status: Mapping[str, Any] = status or {}
        text = f"{method} {url}: {code} {reason}: {message}"
        if causes:
            text += " [" + "; ".join(str(c) for c in causes) + "]"
        super().__init__(text)


class BadRequestError(ApiStatusError):
    """400: the request itself is malformed (bad selector, bad JSON)."""


class UnauthorizedError(ApiStatusError):
    """401: the credentials were rejected (expired or wrong token)."""


class ForbiddenError(ApiStatusError):
    """403: RBAC does not allow this verb on this resource."""


class NotFoundError(ApiStatusError):
    """404: the object (or the resource type) does not exist."""


class AlreadyExistsError(ApiStatusError):
    """409 AlreadyExists: create collided with an existing name."""


class ConflictError(ApiStatusError):
    """409 Conflict: stale resourceVersion on update, or a failed delete precondition."""


class GoneError(ApiStatusError):
    """410: the resourceVersion is too old (compacted); list again."""


class InvalidError(ApiStatusError):
    """422: validation rejected the object; ``causes`` name the offending fields."""


class TooManyRequestsError(ApiStatusError):
    """429: the server is throttling; ``retry_after`` is its hint in seconds (or None)."""

    def __init__(self, *, retry_after: float | None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(**kwargs)


class ServerError(ApiStatusError):
    """5xx: the server (or something in front of it) failed; usually worth retrying."""


class WatchProtocolError(KubeApiError):
    """A watch stream line was not a ``{"type": ..., "object": ...}`` event."""

    def __init__(self, message: str, *, line: str, url: str) -> None:
        self.line = line
        self.url = url
        super().__init__(f"watch {url}: {message}: {line[:200]!r}")


class BadBodyError(KubeApiError):
    """The server's body is unusable: not JSON, nested too deep, or a field of the wrong type.

    ``field`` is the JSON path of the offending value (``items[3].metadata``; "" for the whole
    body), ``method``/``url`` the request. Treated like a failed request: callers back off.
    """

    def __init__(self, message: str, *, method: str, url: str, field: str = "") -> None:
        self.method = method
        self.url = url
        self.field = field
        at = f" at {field}" if field else ""
        super().__init__(f"{method} {url}: bad body{at}: {message}")


class BodyTooLargeError(BadBodyError):
    """A response body or a watch line is over the client's cap (``limit`` bytes); not read on."""

    def __init__(self, *, limit: int, what: str, method: str, url: str) -> None:
        self.limit = limit
        super().__init__(f"{what} exceeds {limit} bytes", method=method, url=url)


class ClaimMismatchError(KubeApiError):
    """The ResourceClaim found under a namespace/name is not the one asked for.

    Raised when the UID differs (the claim was deleted and re-created under the same name) or the
    claim is not allocated; ``claim`` is ``namespace/name``.
    """

    def __init__(self, message: str, *, claim: str, expected_uid: str, actual_uid: str) -> None:
        self.claim = claim
        self.expected_uid = expected_uid
        self.actual_uid = actual_uid
        super().__init__(f"ResourceClaim {claim}: {message}")


def _parse_causes(status: Mapping[str, Any]) -> tuple[StatusCause, ...]:
    details = status.get("details")
    if not isinstance(details, Mapping):
        return ()
    raw = details.get("causes")
    if not isinstance(raw, list):
        return ()
    causes = []
    for item in raw:
        if isinstance(item, Mapping):
            causes.append(
                StatusCause(
                    reason=str(item.get("reason", "")),
                    message=str(item.get("message", "")),
                    field=str(item.get("field", "")),
                )
            )
    return tuple(causes)


def status_error(
    code: int,
    status: Mapping[str, Any] | None,
    *,
    method: str,
    url: str,
    retry_after: float | None = None,
    fallback_message: str = "",
) -> ApiStatusError:
    """Build the typed error for an HTTP error ``code`` and its (possibly absent) Status body."""
    status = status if isinstance(status, Mapping) and status.get("kind") == "Status" else None
    reason = str(status.get("reason", "")) if status else ""
    message = str(status.get("message", "")) if status else fallback_message
    if status and isinstance(status.get("code"), int) and status["code"] >= 400:
        code = int(status["code"])
    kwargs: dict[str, Any] = {
        "code": code,
        "reason": reason or _DEFAULT_REASON.get(code, "Unknown"),
        "message": message or f"HTTP {code}",
        "method": method,
        "url": url,
        "causes": _parse_causes(status) if status else (),
        "status": status,
    }
    if code == 429:
        return TooManyRequestsError(retry_after=retry_after, **kwargs)
    if code == 409:
        if reason == "AlreadyExists":
            return AlreadyExistsError(**kwargs)
        return ConflictError(**kwargs)
    if code >= 500:
        return ServerError(**kwargs)
    return _BY_CODE.get(code, ApiStatusError)(**kwargs)


_BY_CODE: dict[int, type[ApiStatusError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    410: GoneError,
    422: InvalidError,
}

_DEFAULT_REASON = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "Gone",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}
