"""Runware errors, sorted into stable categories.

Runware's raw error codes are "being standardized" and "may vary between models
and providers" (runware-protocol.md §4), so nothing downstream should branch on
them. :func:`classify` maps a raw code (and, failing that, the HTTP status) to an
:class:`ErrorCategory`; the category alone decides whether retrying may help.

Rules, checked in this order on the raw code (case-insensitive); the order
matters because families overlap (``invalidApiKey`` starts with ``invalid`` but is
an auth error, ``taskFailedOrNotFound`` contains ``taskFailed`` but is a lookup
miss):

=============  ================================================================
auth           contains ``apikey``; or ``unauthorized``, ``authenticationFailed``,
               ``accountSuspended``, ``forbidden``, ``permissionDenied``,
               ``accessDenied``, ``invalidToken``
quota          contains ``credits``, ``quota`` or ``balance``; or
               ``paymentRequired``, ``insufficientFunds``
rate_limit     contains ``ratelimit``; or ``tooManyRequests``
timeout        contains ``timeout`` or ``timedout`` (``timeoutProvider``)
safety         ``contentPolicyViolation``, or contains ``nsfw``, ``safety``,
               ``moderation``, ``policyviolation``
not_found      contains ``notfound`` or ends with ``expired``
validation     starts with ``invalid``, ``missing``, ``unsupported``, ``value``,
               ``array``, ``max``, ``conflict``, ``duplicate``; or
               ``unknownParameter``, ``incompatibleParameters``, ``validationFailed``
provider       starts with ``provider``; or ``inferenceError``, ``processingFailed``,
               ``taskFailed``, ``noAvailableServer``, ``modelUnavailable``,
               ``modelNotReady``, ``downloadFailed``, ``uploadFailed``
server_error   ``internalServerError``, ``serviceUnavailable``, ``unknownError``,
               ``serverError``, ``internalError``, ``badGateway``
connection     contains ``connection``, ``network`` or ``socket``
=============  ================================================================

A code matching none of these falls back to the HTTP status (400/409/413/422 and
other 4xx: validation, 401/403: auth, 402: quota, 404/410: not_found,
408/504: timeout, 429: rate_limit, other 5xx: server_error). Legacy errors carry no
code at all; for them only, a few words of the message are looked at as a last
resort ("Invalid api key" is an auth error). Everything else is ``unknown``.

``unknown`` counts as retryable. The permanent families (validation, auth, quota,
safety, not_found) are matched by broad prefixes and by any 4xx status, so what is
left over is mostly a code Runware or a provider introduced since these rules were
written, and those have so far been transient provider failures. A wrong guess costs
a bounded number of retries (the caller's retry budget), whereas wrongly giving up
silences an announcement.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Final

from broadcaster.speech.engine import SpeechError


class ErrorCategory(enum.StrEnum):
    VALIDATION = "validation"
    AUTH = "auth"
    QUOTA = "quota"
    RATE_LIMIT = "rate_limit"
    TIMEOUT = "timeout"
    PROVIDER = "provider"
    SERVER_ERROR = "server_error"
    SAFETY = "safety"
    NOT_FOUND = "not_found"
    CONNECTION = "connection"
    UNKNOWN = "unknown"


#: Categories where sending the same task again may succeed (see the module docstring
#: for why ``unknown`` is among them).
RETRYABLE: Final[frozenset[ErrorCategory]] = frozenset(
    {
        ErrorCategory.PROVIDER,
        ErrorCategory.TIMEOUT,
        ErrorCategory.CONNECTION,
        ErrorCategory.RATE_LIMIT,
        ErrorCategory.SERVER_ERROR,
        ErrorCategory.UNKNOWN,
    }
)

# All sets and prefixes below are lower-case; codes are compared lower-cased.
_AUTH_EXACT: Final = frozenset(
    {
        "unauthorized",
        "authenticationfailed",
        "accountsuspended",
        "forbidden",
        "permissiondenied",
        "accessdenied",
        "invalidtoken",
    }
)
_QUOTA_EXACT: Final = frozenset({"paymentrequired", "insufficientfunds"})
_SAFETY_EXACT: Final = frozenset({"contentpolicyviolation"})
_SAFETY_PARTS: Final = ("nsfw", "safety", "moderation", "policyviolation")
_VALIDATION_PREFIXES: Final = (
    "invalid",
    "missing",
    "unsupported",
    "value",
    "array",
    "max",
    "conflict",
    "duplicate",
)
_VALIDATION_EXACT: Final = frozenset(
    {"unknownparameter", "incompatibleparameters", "validationfailed"}
)
_PROVIDER_EXACT: Final = frozenset(
    {
        "inferenceerror",
        "processingfailed",
        "taskfailed",
        "noavailableserver",
        "modelunavailable",
        "modelnotready",
        "downloadfailed",
        "uploadfailed",
    }
)
_SERVER_EXACT: Final = frozenset(
    {
        "internalservererror",
        "serviceunavailable",
        "unknownerror",
        "servererror",
        "internalerror",
        "badgateway",
    }
)
_CONNECTION_PARTS: Final = ("connection", "network", "socket")


def classify_code(code: str | None) -> ErrorCategory | None:
    """The category of a raw Runware code, or ``None`` if the rules do not know it."""
    if not code:
        return None
    c = code.strip().lower()
    if "apikey" in c or c in _AUTH_EXACT:
        return ErrorCategory.AUTH
    if any(p in c for p in ("credits", "quota", "balance")) or c in _QUOTA_EXACT:
        return ErrorCategory.QUOTA
    if "ratelimit" in c or c == "toomanyrequests":
        return ErrorCategory.RATE_LIMIT
    if "timeout" in c or "timedout" in c:
        return ErrorCategory.TIMEOUT
    if c in _SAFETY_EXACT or any(p in c for p in _SAFETY_PARTS):
        return ErrorCategory.SAFETY
    if "notfound" in c or c.endswith("expired"):
        return ErrorCategory.NOT_FOUND
    if c.startswith(_VALIDATION_PREFIXES) or c in _VALIDATION_EXACT:
        return ErrorCategory.VALIDATION
    if c.startswith("provider") or c in _PROVIDER_EXACT:
        return ErrorCategory.PROVIDER
    if c in _SERVER_EXACT:
        return ErrorCategory.SERVER_ERROR
    if any(p in c for p in _CONNECTION_PARTS):
        return ErrorCategory.CONNECTION
    return None


def classify_http_status(status: int | None) -> ErrorCategory | None:
    """The category an HTTP status implies, or ``None`` (no status, or a 1xx–3xx)."""
    if status is None:
        return None
    if status in (401, 403):
        return ErrorCategory.AUTH
    if status == 402:
        return ErrorCategory.QUOTA
    if status in (404, 410):
        return ErrorCategory.NOT_FOUND
    if status in (408, 504):
        return ErrorCategory.TIMEOUT
    if status == 429:
        return ErrorCategory.RATE_LIMIT
    if 400 <= status < 500:
        return ErrorCategory.VALIDATION
    if 500 <= status < 600:
        return ErrorCategory.SERVER_ERROR
    return None


def _classify_message(message: str) -> ErrorCategory | None:
    m = message.lower()
    if "api key" in m or "apikey" in m or "unauthori" in m:
        return ErrorCategory.AUTH
    if any(w in m for w in ("insufficient credit", "balance", "quota", "payment required")):
        return ErrorCategory.QUOTA
    if "rate limit" in m or "too many requests" in m:
        return ErrorCategory.RATE_LIMIT
    if "timeout" in m or "timed out" in m:
        return ErrorCategory.TIMEOUT
    return None


def classify(
    code: str | None, http_status: int | None = None, message: str | None = None
) -> ErrorCategory:
    """Category from the raw code, else the HTTP status, else (only when there is no
    code) the message's wording, else ``unknown``."""
    category = classify_code(code) or classify_http_status(http_status)
    if category is None and not code and message:
        category = _classify_message(message)
    return category or ErrorCategory.UNKNOWN


class RunwareError(SpeechError):
    """A Runware task (or the connection carrying it) failed.

    ``message`` is Runware's own text, kept verbatim for logs; ``code`` the raw code
    (``None`` for legacy errors); ``retryable`` follows from ``category`` alone.
    """

    def __init__(
        self,
        category: ErrorCategory,
        message: str,
        *,
        code: str | None = None,
        parameter: str | None = None,
        task_uuid: str | None = None,
        http_status: int | None = None,
        task_type: str | None = None,
        documentation: str | None = None,
    ) -> None:
        self.category = ErrorCategory(category)
        self.code = code
        self.message = message
        self.parameter = parameter
        self.task_uuid = task_uuid
        self.http_status = http_status
        self.task_type = task_type
        self.documentation = documentation
        super().__init__(self._describe(), retryable=self.category in RETRYABLE)

    def _describe(self) -> str:
        head = f"{self.category.value} ({self.code})" if self.code else self.category.value
        text = f"{head}: {self.message}"
        if self.parameter:
            text += f" [parameter {self.parameter}]"
        return text

    def __str__(self) -> str:
        return self._describe()

    def __repr__(self) -> str:
        return (
            f"RunwareError(category={self.category.value!r}, code={self.code!r}, "
            f"message={self.message!r}, parameter={self.parameter!r}, "
            f"task_uuid={self.task_uuid!r}, http_status={self.http_status!r})"
        )


def _opt_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def error_from_item(item: Mapping[str, Any], http_status: int | None = None) -> RunwareError:
    """Build a :class:`RunwareError` from one error item.

    Accepted shapes:

    * current: ``{"code", "message", "parameter"?, "taskType"?, "taskUUID"?,
      "documentation"?}`` (an element of a frame's ``errors`` array);
    * getResponse: ``{"taskUUID", "status": "error", "error": {"code", "message"}}``;
    * legacy: ``{"error": true, "errorMessage": "...", "errorId": 19, ...}``.
    """
    inner = item.get("error")
    source: Mapping[str, Any] = inner if isinstance(inner, Mapping) else item
    code = _opt_str(source.get("code"))
    message = source.get("message")
    if message is None:
        message = item.get("errorMessage")
    if message is None and isinstance(inner, str):
        message = inner
    message_s = _opt_str(message) or "(no message)"
    category = classify(code, http_status, None if message is None else message_s)
    return RunwareError(
        category,
        message_s,
        code=code,
        parameter=_opt_str(source.get("parameter") or item.get("parameter")),
        task_uuid=_opt_str(item.get("taskUUID") or source.get("taskUUID")),
        http_status=http_status,
        task_type=_opt_str(item.get("taskType") or source.get("taskType")),
        documentation=_opt_str(source.get("documentation")),
    )


def errors_from_frame(
    frame: Mapping[str, Any], http_status: int | None = None
) -> list[RunwareError]:
    """All errors in a server frame or REST body: its ``errors`` array, or the older
    singular ``error`` (an array, an object, or ``true`` with ``errorMessage`` on the
    frame itself). Empty if the frame carries no error."""
    raw = frame.get("errors")
    if raw is None:
        raw = frame.get("error")
    if raw is None or raw is False:
        return []
    if raw is True or isinstance(raw, str):
        return [error_from_item(frame, http_status)]
    if isinstance(raw, Mapping):
        return [error_from_item(raw, http_status)]
    if isinstance(raw, list):
        return [
            error_from_item(i if isinstance(i, Mapping) else {"message": i}, http_status)
            for i in raw
        ]
    return [error_from_item({"message": raw}, http_status)]
