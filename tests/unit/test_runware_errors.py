"""Runware error classification: raw codes, HTTP statuses and legacy shapes."""

from __future__ import annotations

import pytest

from broadcaster.speech.engine import SpeechError
from broadcaster.speech.runware.errors import (
    RETRYABLE,
    ErrorCategory,
    RunwareError,
    classify,
    error_from_item,
    errors_from_frame,
)

C = ErrorCategory

# raw code -> category, retryable
CODES = [
    # validation
    ("invalidParameter", C.VALIDATION, False),
    ("invalidSpeechVoice", C.VALIDATION, False),
    ("missingParameter", C.VALIDATION, False),
    ("unsupportedOutputFormat", C.VALIDATION, False),
    ("valueOutOfRange", C.VALIDATION, False),
    ("arrayTooLong", C.VALIDATION, False),
    ("maxLengthExceeded", C.VALIDATION, False),
    ("conflictingParameters", C.VALIDATION, False),
    ("duplicateTaskUUID", C.VALIDATION, False),
    ("unknownParameter", C.VALIDATION, False),
    ("incompatibleParameters", C.VALIDATION, False),
    ("validationFailed", C.VALIDATION, False),
    # auth (before validation: invalidApiKey starts with "invalid")
    ("invalidApiKey", C.AUTH, False),
    ("missingApiKey", C.AUTH, False),
    ("unauthorized", C.AUTH, False),
    ("authenticationFailed", C.AUTH, False),
    ("accountSuspended", C.AUTH, False),
    # quota
    ("insufficientCredits", C.QUOTA, False),
    ("notEnoughCredits", C.QUOTA, False),
    ("quotaExceeded", C.QUOTA, False),
    ("insufficientBalance", C.QUOTA, False),
    ("paymentRequired", C.QUOTA, False),
    # rate limit
    ("rateLimitExceeded", C.RATE_LIMIT, True),
    ("providerRateLimit", C.RATE_LIMIT, True),
    ("tooManyRequests", C.RATE_LIMIT, True),
    # timeout
    ("timeoutProvider", C.TIMEOUT, True),
    ("providerTimeout", C.TIMEOUT, True),
    ("requestTimeout", C.TIMEOUT, True),
    # provider
    ("inferenceError", C.PROVIDER, True),
    ("processingFailed", C.PROVIDER, True),
    ("taskFailed", C.PROVIDER, True),
    ("noAvailableServer", C.PROVIDER, True),
    ("modelUnavailable", C.PROVIDER, True),
    ("modelNotReady", C.PROVIDER, True),
    ("downloadFailed", C.PROVIDER, True),
    ("uploadFailed", C.PROVIDER, True),
    ("providerError", C.PROVIDER, True),
    # server
    ("internalServerError", C.SERVER_ERROR, True),
    ("serviceUnavailable", C.SERVER_ERROR, True),
    ("unknownError", C.SERVER_ERROR, True),
    # safety
    ("contentPolicyViolation", C.SAFETY, False),
    ("nsfwContentDetected", C.SAFETY, False),
    # not found (before provider: taskFailedOrNotFound contains taskFailed)
    ("taskFailedOrNotFound", C.NOT_FOUND, False),
    ("modelNotFound", C.NOT_FOUND, False),
    ("taskExpired", C.NOT_FOUND, False),
    # connection
    ("connectionClosed", C.CONNECTION, True),
    ("websocketError", C.CONNECTION, True),
    ("networkError", C.CONNECTION, True),
    # unknown
    ("somethingNew", C.UNKNOWN, True),
]


@pytest.mark.parametrize(("code", "category", "retryable"), CODES, ids=[c for c, _, _ in CODES])
def test_raw_codes(code, category, retryable):
    err = error_from_item({"code": code, "message": "m"})
    assert err.category is category
    assert err.retryable is retryable
    assert (category in RETRYABLE) is retryable
    # Codes are compared without regard to case.
    assert classify(code.upper()) is category


def test_retryable_set():
    assert {
        C.PROVIDER, C.TIMEOUT, C.CONNECTION, C.RATE_LIMIT, C.SERVER_ERROR, C.UNKNOWN
    } == RETRYABLE  # fmt: skip
    for never in (C.VALIDATION, C.AUTH, C.QUOTA, C.SAFETY, C.NOT_FOUND):
        assert never not in RETRYABLE


HTTP = [
    (400, C.VALIDATION, False),
    (422, C.VALIDATION, False),
    (401, C.AUTH, False),
    (403, C.AUTH, False),
    (402, C.QUOTA, False),
    (404, C.NOT_FOUND, False),
    (408, C.TIMEOUT, True),
    (504, C.TIMEOUT, True),
    (429, C.RATE_LIMIT, True),
    (500, C.SERVER_ERROR, True),
    (502, C.SERVER_ERROR, True),
    (503, C.SERVER_ERROR, True),
]


@pytest.mark.parametrize(
    ("status", "category", "retryable"), HTTP, ids=[str(s) for s, _, _ in HTTP]
)
def test_http_statuses(status, category, retryable):
    err = error_from_item({"message": "Error"}, http_status=status)
    assert err.category is category and err.retryable is retryable
    assert err.http_status == status
    # A code the rules do not know falls back to the status.
    assert error_from_item({"code": "brandNew", "message": "x"}, status).category is category


def test_known_code_wins_over_status():
    assert error_from_item({"code": "invalidApiKey", "message": "x"}, 400).category is C.AUTH
    assert error_from_item({"code": "timeoutProvider", "message": "x"}, 500).category is C.TIMEOUT


def test_no_code_no_status_is_unknown():
    assert classify(None) is C.UNKNOWN
    assert classify("") is C.UNKNOWN
    assert classify(None, 200) is C.UNKNOWN
    assert error_from_item({}).category is C.UNKNOWN


def test_current_shape_kept_verbatim():
    item = {
        "code": "invalidApiKey",
        "message": "Invalid API key. Get one at https://my.runware.ai/signup",
        "parameter": "apiKey",
        "taskType": "authentication",
        "documentation": "https://runware.ai/docs/platform/errors",
    }
    err = error_from_item(item, http_status=401)
    assert isinstance(err, SpeechError)
    assert err.category is C.AUTH and not err.retryable
    assert err.code == "invalidApiKey"
    assert err.message == item["message"]
    assert err.parameter == "apiKey"
    assert err.task_type == "authentication"
    assert err.task_uuid is None
    assert err.documentation == item["documentation"]
    assert str(err) == (
        "auth (invalidApiKey): Invalid API key. Get one at https://my.runware.ai/signup "
        "[parameter apiKey]"
    )


def test_validation_error_names_parameter_and_task():
    item = {
        "code": "invalidSpeechVoice",
        "message": "Invalid value for speech.voice",
        "parameter": "speech.voice",
        "taskType": "audioInference",
        "taskUUID": "4a9082fd-1865-4261-a0bc-c6cfe96001fc",
    }
    err = error_from_item(item)
    assert (err.category, err.parameter, err.task_uuid) == (
        C.VALIDATION,
        "speech.voice",
        "4a9082fd-1865-4261-a0bc-c6cfe96001fc",
    )
    assert str(err) == (
        "validation (invalidSpeechVoice): Invalid value for speech.voice [parameter speech.voice]"
    )


def test_str_without_code_or_parameter():
    assert str(RunwareError(C.CONNECTION, "socket closed")) == "connection: socket closed"
    assert RunwareError(C.CONNECTION, "socket closed").retryable


def test_legacy_shape():
    item = {
        "error": True,
        "errorMessageContentId": 1212,
        "errorId": 19,
        "errorMessage": "Invalid api key",
    }
    err = error_from_item(item)
    assert err.message == "Invalid api key" and err.code is None
    assert err.category is C.AUTH and not err.retryable
    # ... and with a status, the status decides.
    assert error_from_item({"error": True, "errorMessage": "boom"}, 503).category is C.SERVER_ERROR
    assert error_from_item({"error": True, "errorMessage": "boom"}).category is C.UNKNOWN


def test_get_response_error_item():
    item = {
        "taskType": "getResponse",
        "taskUUID": "8a7a66d5-0479-4f38-9796-7f2e42ee7ad5",
        "status": "error",
        "error": {"code": "timeoutProvider", "message": "Provider timed out"},
    }
    err = error_from_item(item)
    assert err.category is C.TIMEOUT and err.retryable
    assert err.code == "timeoutProvider" and err.message == "Provider timed out"
    assert err.task_uuid == "8a7a66d5-0479-4f38-9796-7f2e42ee7ad5"
    assert error_from_item({"status": "error", "error": "went wrong"}).message == "went wrong"


def test_errors_from_frame():
    frame = {
        "errors": [
            {"code": "invalidApiKey", "message": "a"},
            {"code": "timeoutProvider", "message": "b", "taskUUID": "t"},
        ]
    }
    assert [e.category for e in errors_from_frame(frame)] == [C.AUTH, C.TIMEOUT]
    assert [e.category for e in errors_from_frame({"error": [{"code": "taskFailed"}]})] == [
        C.PROVIDER
    ]
    assert errors_from_frame({"error": {"code": "unknownError", "message": "x"}})[0].category is (
        C.SERVER_ERROR
    )
    legacy = errors_from_frame({"error": True, "errorMessage": "Invalid api key"})
    assert len(legacy) == 1 and legacy[0].category is C.AUTH
    assert errors_from_frame({"data": [{"taskType": "ping", "pong": True}]}) == []
    assert errors_from_frame({"errors": [{"message": "x"}]}, http_status=402)[0].category is C.QUOTA
