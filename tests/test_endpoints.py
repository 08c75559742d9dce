"""The model table: create paths, family status and list paths, and which request goes where."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from kling_async._endpoints import DEFAULT_MODEL, ENDPOINTS, Endpoint, ModelName, endpoint_for, resolve
from kling_async._errors import InvalidRequestError
from kling_async._models import Kling3Request, OmniRequest, Request, VideoReferenceRequest

OMNI = OmniRequest(prompt="a fox in snow")
KLING3 = Kling3Request(prompt="a fox in snow")
REFERENCE = VideoReferenceRequest(video_url="https://cdn.example.com/clip.mp4")
BY_TYPE: dict[type[Request], Request] = {
    OmniRequest: OMNI,
    Kling3Request: KLING3,
    VideoReferenceRequest: REFERENCE,
}

TABLE = [
    ("kling-v3-omni-std", "/v1/ai/video/kling-v3-omni-std", "/v1/ai/video/kling-v3-omni", OmniRequest),
    ("kling-v3-omni-pro", "/v1/ai/video/kling-v3-omni-pro", "/v1/ai/video/kling-v3-omni", OmniRequest),
    ("kling-v3-std", "/v1/ai/video/kling-v3-std", "/v1/ai/video/kling-v3", Kling3Request),
    ("kling-v3-pro", "/v1/ai/video/kling-v3-pro", "/v1/ai/video/kling-v3", Kling3Request),
    (
        "kling-v3-omni-std-reference",
        "/v1/ai/reference-to-video/kling-v3-omni-std",
        "/v1/ai/reference-to-video/kling-v3-omni",
        VideoReferenceRequest,
    ),
    (
        "kling-v3-omni-pro-reference",
        "/v1/ai/reference-to-video/kling-v3-omni-pro",
        "/v1/ai/reference-to-video/kling-v3-omni",
        VideoReferenceRequest,
    ),
]


def test_table_holds_exactly_the_six_kling3_models() -> None:
    assert list(ENDPOINTS) == [model for model, *_ in TABLE]


def test_model_name_literal_lists_every_endpoint_and_nothing_else() -> None:
    """The ModelName type users and mypy see names exactly the endpoints the SDK knows."""
    assert get_args(ModelName) == tuple(ENDPOINTS)


@pytest.mark.parametrize(("model", "create_path", "family_path", "request_type"), TABLE)
def test_model_has_its_create_path_family_path_and_request_type(
    model: ModelName, create_path: str, family_path: str, request_type: type[Request]
) -> None:
    assert endpoint_for(model) == Endpoint(model, create_path, family_path, request_type)


@pytest.mark.parametrize(("model", "family_path"), [(model, family) for model, _, family, _ in TABLE])
def test_status_path_is_on_the_family_not_the_model(model: str, family_path: str) -> None:
    task_id = "3f2c1a9e-5b7d-4e21-9c0a-8d6f4b2e1a77"
    assert endpoint_for(model).status_path(task_id) == f"{family_path}/{task_id}"


@pytest.mark.parametrize(
    "task_id",
    ["", " ", "a b", "abc\n", "\tabc", "a/b", "../x", "a?b=1", "a#b", "a%2Fb", "a\\b", ".", "..", None, 7],
)
def test_status_path_rejects_a_task_id_that_would_change_the_path(task_id: Any) -> None:
    with pytest.raises(InvalidRequestError, match="task_id: must be a non-empty id") as info:
        ENDPOINTS[DEFAULT_MODEL].status_path(task_id)
    assert info.value.field == "task_id"


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        ENDPOINTS["kling-v9"] = ENDPOINTS[DEFAULT_MODEL]  # type: ignore[index]


def test_endpoints_are_immutable() -> None:
    with pytest.raises(AttributeError):
        ENDPOINTS[DEFAULT_MODEL].create_path = "/elsewhere"  # type: ignore[misc]


def test_default_model_is_omni_standard() -> None:
    assert DEFAULT_MODEL == "kling-v3-omni-std"
    assert ENDPOINTS[DEFAULT_MODEL].request_type is OmniRequest


@pytest.mark.parametrize("model", ["kling-v3-omni", "kling-v2-std", "KLING-V3-STD", "", ["kling-v3-std"]])
def test_unknown_model_is_rejected_with_the_known_ones_listed(model: Any) -> None:
    with pytest.raises(InvalidRequestError, match=r"^model: unknown model ") as info:
        endpoint_for(model)
    assert info.value.field == "model"
    assert str(info.value).endswith("; one of " + ", ".join(model for model, *_ in TABLE))


@pytest.mark.parametrize(
    ("request_", "model"),
    [(OMNI, "kling-v3-omni-std"), (KLING3, "kling-v3-std"), (REFERENCE, "kling-v3-omni-std-reference")],
)
def test_resolve_without_a_model_picks_the_family_standard_model(request_: Request, model: str) -> None:
    assert resolve(request_, None) is ENDPOINTS[model]


@pytest.mark.parametrize(
    ("model", "request_type"), [(model, request_type) for model, _, _, request_type in TABLE]
)
def test_resolve_with_a_matching_model_uses_it(model: str, request_type: type[Request]) -> None:
    assert resolve(BY_TYPE[request_type], model) is ENDPOINTS[model]


@pytest.mark.parametrize(
    ("request_", "model", "message"),
    [
        (OMNI, "kling-v3-std", "model: kling-v3-std takes Kling3Request, not OmniRequest"),
        (KLING3, "kling-v3-omni-pro", "model: kling-v3-omni-pro takes OmniRequest, not Kling3Request"),
        (
            OMNI,
            "kling-v3-omni-std-reference",
            "model: kling-v3-omni-std-reference takes VideoReferenceRequest, not OmniRequest",
        ),
        (REFERENCE, "kling-v3-pro", "model: kling-v3-pro takes Kling3Request, not VideoReferenceRequest"),
    ],
)
def test_resolve_rejects_a_model_of_another_family(request_: Request, model: str, message: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        resolve(request_, model)
    assert str(info.value) == message
    assert info.value.field == "model"


def test_resolve_rejects_an_unknown_model() -> None:
    with pytest.raises(InvalidRequestError, match=r"^model: unknown model 'kling-v4'"):
        resolve(OMNI, "kling-v4")


def test_resolve_rejects_something_that_is_not_a_request() -> None:
    with pytest.raises(
        InvalidRequestError, match="must be an OmniRequest, Kling3Request or VideoReferenceRequest"
    ) as info:
        resolve({"prompt": "a fox"}, None)  # type: ignore[arg-type]
    assert info.value.field == "request"
