"""kling-async: an asyncio-native client for Freepik's Kling 3 video-generation API.

Everything public is importable from here; modules whose names start with ``_`` are private.

The public names are loaded on first use (PEP 562): ``import kling_async`` alone imports nothing else, so
that the ``kling-async`` command can take over Ctrl-C before the package's 0.3 s of imports (see
``__main__.py``). The first public name used loads them all; from then on the module is what an eager
import made it.
"""

# typing.TYPE_CHECKING without importing typing (5 ms more before the command takes over Ctrl-C). Type
# checkers take a condition named TYPE_CHECKING as true: they see these imports, as if they were eager.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._batch import Batch, Job, Outcome
    from ._client import KlingClient
    from ._endpoints import ENDPOINTS, Endpoint, ModelName
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
        NotSubmittedError,
        RateLimitError,
        ServerError,
        SubmitUncertainError,
        TaskFailedError,
        TaskTimeoutError,
        TransportError,
        WebhookVerificationError,
    )
    from ._events import Event, EventStream, RateLimited, RequestRetried, StatusChanged, TaskSubmitted
    from ._journal import Journal, JournalEntry, JournalState
    from ._models import (
        AspectRatio,
        Duration,
        Element,
        Kling3AspectRatio,
        Kling3Request,
        Kling3ShotType,
        OmniAspectRatio,
        OmniRequest,
        OmniShotType,
        Shot,
        ShotType,
        TaskResult,
        TaskStatus,
        TaskSummary,
        VideoReferenceRequest,
    )
    from ._polling import PollPolicy, TaskHandle
    from ._retry import RetryPolicy
    from ._transport import Timeouts
    from ._webhooks import ReplayGuard, WebhookReceiver, verify_webhook

    __version__: str

__all__ = [
    "ENDPOINTS",
    "APIError",
    "AspectRatio",
    "AuthenticationError",
    "BadRequestError",
    "Batch",
    "ClaimedElsewhere",
    "DownloadError",
    "Duration",
    "Element",
    "Endpoint",
    "Event",
    "EventStream",
    "InvalidParam",
    "InvalidRequestError",
    "Job",
    "Journal",
    "JournalEntry",
    "JournalError",
    "JournalState",
    "Kling3AspectRatio",
    "Kling3Request",
    "Kling3ShotType",
    "KlingClient",
    "KlingError",
    "ModelName",
    "NotFoundError",
    "NotSubmittedError",
    "OmniAspectRatio",
    "OmniRequest",
    "OmniShotType",
    "Outcome",
    "PollPolicy",
    "RateLimitError",
    "RateLimited",
    "ReplayGuard",
    "RequestRetried",
    "RetryPolicy",
    "ServerError",
    "Shot",
    "ShotType",
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

# The modules that define the public names (the imports above, for the interpreter; a test checks that
# each name is the object type checkers see).
_MODULES = (
    "_batch",
    "_client",
    "_endpoints",
    "_errors",
    "_events",
    "_journal",
    "_models",
    "_polling",
    "_retry",
    "_transport",
    "_webhooks",
)
_LAZY = frozenset((*__all__, "__version__"))


def _load() -> None:
    """Bind every public name here, as the eager imports did (a no-op once done)."""
    if "__version__" in globals():
        return
    import importlib

    from ._transport import package_version

    modules = [importlib.import_module(f"{__name__}.{name}") for name in _MODULES]
    loaded: dict[str, object] = {
        name: next(getattr(module, name) for module in modules if hasattr(module, name)) for name in __all__
    }
    # Reprs, tracebacks and docs say `kling_async.KlingClient`, not the private module (as httpx does).
    for value in loaded.values():
        if isinstance(value, type):
            value.__module__ = __name__
    # The installed distribution's version (pyproject.toml is its one source); the User-Agent carries it.
    loaded["__version__"] = package_version()
    globals().update(loaded)


if not TYPE_CHECKING:  # type checkers see the imports; a module __getattr__ would let them accept any name

    def __getattr__(name: str) -> object:
        if name in _LAZY:
            _load()
            return globals()[name]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(globals().keys() | _LAZY)


del TYPE_CHECKING
