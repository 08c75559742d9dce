"""Which model POSTs where, where its tasks' status lives, and which request struct it takes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal, TypeAlias

from ._errors import InvalidRequestError
from ._models import Kling3Request, OmniRequest, Request, VideoReferenceRequest

__all__ = [
    "DEFAULT_MODEL",
    "ENDPOINTS",
    "Endpoint",
    "ModelName",
    "checked_task_id",
    "endpoint_for",
    "resolve",
]

# The create endpoints' names, as a type so that mypy and an IDE catch "kling-v3-omni-sdt".
ModelName: TypeAlias = Literal[
    "kling-v3-omni-std",
    "kling-v3-omni-pro",
    "kling-v3-std",
    "kling-v3-pro",
    "kling-v3-omni-std-reference",
    "kling-v3-omni-pro-reference",
]
"""A create endpoint's name (the ``model`` of ``submit``, ``generate`` and ``Job``)."""

# Besides "/", "?" and "#", a dot segment, a "%" or a "\" could also turn the status path into another path;
# control characters and lone surrogates could not be sent at all.
_TASK_ID = re.compile(r"[^\s\x00-\x1f\x7f/?#%\\\ud800-\udfff]+")
_TASK_ID_RULE = (
    'must be a non-empty id, not "." or "..", without whitespace, control characters,'
    ' "/", "?", "#", "%" or "\\"'
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One create endpoint (a model) and the family paths where its tasks are read back.

    Attributes:
        model: the model name users pass, e.g. ``"kling-v3-omni-std"``.
        create_path: where a request is POSTed.
        family_path: the status path's base and the list path (std and pro share it).
        request_type: the request struct the model takes.
    """

    model: ModelName
    create_path: str
    family_path: str
    request_type: type[Request]

    def status_path(self, task_id: str) -> str:
        """The path of one task's status.

        Raises:
            InvalidRequestError: ``task_id`` is empty, or holds whitespace or a character that would
                change the path.
        """
        return f"{self.family_path}/{checked_task_id(task_id)}"


def checked_task_id(task_id: object) -> str:
    """``task_id`` as a plain ``str`` of its own characters, once it is one a status path can hold.

    Plain: a ``str`` subclass's own ``__format__`` or ``__hash__`` could put other characters in a path
    or a registry key than the ones checked.

    Raises:
        InvalidRequestError: ``task_id`` is empty, or holds whitespace or a character that would change
            the path.
    """
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id) or task_id in {".", ".."}:
        raise InvalidRequestError.for_field("task_id", f"{_TASK_ID_RULE} (got {task_id!r:.60})")
    return str.__str__(task_id)


_OMNI = "/v1/ai/video/kling-v3-omni"
_KLING3 = "/v1/ai/video/kling-v3"
_REFERENCE = "/v1/ai/reference-to-video/kling-v3-omni"

ENDPOINTS: Final[Mapping[str, Endpoint]] = MappingProxyType(
    {
        endpoint.model: endpoint
        for endpoint in (
            Endpoint("kling-v3-omni-std", f"{_OMNI}-std", _OMNI, OmniRequest),
            Endpoint("kling-v3-omni-pro", f"{_OMNI}-pro", _OMNI, OmniRequest),
            Endpoint("kling-v3-std", f"{_KLING3}-std", _KLING3, Kling3Request),
            Endpoint("kling-v3-pro", f"{_KLING3}-pro", _KLING3, Kling3Request),
            Endpoint("kling-v3-omni-std-reference", f"{_REFERENCE}-std", _REFERENCE, VideoReferenceRequest),
            Endpoint("kling-v3-omni-pro-reference", f"{_REFERENCE}-pro", _REFERENCE, VideoReferenceRequest),
        )
    }
)
DEFAULT_MODEL: Final[ModelName] = "kling-v3-omni-std"
# The model a request runs on when none is named: its family's standard tier.
_STANDARD = tuple(
    ENDPOINTS[model] for model in (DEFAULT_MODEL, "kling-v3-std", "kling-v3-omni-std-reference")
)


def endpoint_for(model: str) -> Endpoint:
    """The endpoint of a model name.

    Raises:
        InvalidRequestError: no such model.
    """
    try:
        return ENDPOINTS[model]
    except (KeyError, TypeError):
        raise InvalidRequestError.for_field(
            "model", f"unknown model {model!r:.60}; one of {', '.join(ENDPOINTS)}"
        ) from None


def resolve(request: Request, model: str | None) -> Endpoint:
    """The endpoint a request goes to: ``model``'s, or (None) the standard model of the request's family.

    Raises:
        InvalidRequestError: an unknown model, a model that takes another request type, or not a request.
    """
    if model is not None:
        endpoint = endpoint_for(model)
        if not isinstance(request, endpoint.request_type):
            raise InvalidRequestError.for_field(
                "model", f"{model} takes {endpoint.request_type.__name__}, not {type(request).__name__}"
            )
        return endpoint
    for endpoint in _STANDARD:
        if isinstance(request, endpoint.request_type):
            return endpoint
    raise InvalidRequestError.for_field(
        "request",
        f"must be an OmniRequest, Kling3Request or VideoReferenceRequest (got a {type(request).__name__})",
    )
