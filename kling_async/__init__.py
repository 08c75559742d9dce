"""kling-async: an asyncio-native client for Freepik's Kling 3 video-generation API.

Everything public is importable from here; modules whose names start with ``_`` are private.
"""

from ._batch import Job, Outcome
from ._client import KlingClient
from ._endpoints import ENDPOINTS, Endpoint
from ._errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ClaimedElsewhere,
    DownloadError,
    InvalidParam,
    InvalidRequestError,
    JournalError,
    KlingError,
    NotFoundError,
    RateLimitError,
    ServerError,
    SubmitUncertainError,
    TaskFailedError,
    TaskTimeoutError,
    TransportError,
    WebhookVerificationError,
)
from ._events import Event, RateLimited, RequestRetried, StatusChanged, TaskSubmitted
from ._journal import Journal, JournalEntry, JournalState
from ._models import (
    Element,
    Kling3Request,
    OmniRequest,
    Shot,
    TaskResult,
    TaskStatus,
    TaskSummary,
    VideoReferenceRequest,
)
from ._polling import PollPolicy, TaskHandle
from ._retry import RetryPolicy
from ._transport import Timeouts
from ._transport import package_version as _package_version
from ._webhooks import ReplayGuard, WebhookReceiver, verify_webhook

__all__ = [
    "ENDPOINTS",
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "ClaimedElsewhere",
    "DownloadError",
    "Element",
    "Endpoint",
    "Event",
    "InvalidParam",
    "InvalidRequestError",
    "Job",
    "Journal",
    "JournalEntry",
    "JournalError",
    "JournalState",
    "Kling3Request",
    "KlingClient",
    "KlingError",
    "NotFoundError",
    "OmniRequest",
    "Outcome",
    "PollPolicy",
    "RateLimitError",
    "RateLimited",
    "ReplayGuard",
    "RequestRetried",
    "RetryPolicy",
    "ServerError",
    "Shot",
    "StatusChanged",
    "SubmitUncertainError",
    "TaskFailedError",
    "TaskHandle",
    "TaskResult",
    "TaskStatus",
    "TaskSubmitted",
    "TaskSummary",
    "TaskTimeoutError",
    "Timeouts",
    "TransportError",
    "VideoReferenceRequest",
    "WebhookReceiver",
    "WebhookVerificationError",
    "verify_webhook",
]

__version__ = _package_version()
"""The installed distribution's version (pyproject.toml is its one source); the User-Agent carries it."""

# Reprs, tracebacks and docs say `kling_async.KlingClient`, not the private module (as httpx does).
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = "kling_async"
del _name, _obj
