"""Request validation, request encoding, and lenient response decoding."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import msgspec
import pytest

from kling_async._errors import InvalidRequestError, TransportError
from kling_async._models import (
    CANCELLED,
    COMPLETED,
    CREATED,
    FAILED,
    FAILURE_STATUSES,
    IN_PROGRESS,
    TERMINAL_STATUSES,
    Duration,
    Element,
    Kling3Request,
    OmniRequest,
    Request,
    Shot,
    TaskResult,
    TaskStatus,
    TaskSummary,
    VideoReferenceRequest,
    decode_created,
    decode_task,
    decode_task_list,
    decode_webhook,
    encode_request,
    request_from_dict,
    with_webhook,
)

IMAGE = "https://cdn.example.com/frame.png"
VIDEO = "https://cdn.example.com/clip.mp4"
HOOK = "https://hooks.example.com/kling"
ELEMENT = Element(frontal_image_url=IMAGE)
LONGEST = "x" * 2500
TOO_LONG = "x" * 2501
URL_RULE = "must be an http:// or https:// URL"
DURATION_RULE = 'must be a string "3".."15"'
CFG_RULE = "must be a number from 0 to 2"

# The smallest valid request of each type; a table row adds fields to it (None removes one).
BASE: dict[type[Any], dict[str, Any]] = {
    OmniRequest: {"prompt": "a fox in snow"},
    Kling3Request: {"prompt": "a fox in snow"},
    VideoReferenceRequest: {"video_url": VIDEO},
}
ALL = (OmniRequest, Kling3Request, VideoReferenceRequest)
TEXT = (OmniRequest, Kling3Request)  # the two with prompt vs multi_prompt, audio, voices, elements
CFG = (Kling3Request, VideoReferenceRequest)  # the two with cfg_scale and negative_prompt


def fields_of(cls: type[Any], fields: dict[str, Any]) -> dict[str, Any]:
    return {**BASE[cls], **fields}


def shots(*durations: str) -> list[Shot]:
    return [
        Shot(prompt=f"shot {index}", duration=cast(Duration, seconds))
        for index, seconds in enumerate(durations)
    ]


def raises_invalid(make: Callable[[], object], field: str, rule: str) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        make()
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert rule in str(info.value)
    return info.value


def named(cls: type[Any]) -> str:
    return cls.__name__.removesuffix("Request").lower()


def ok(cls: type[Any], fields: dict[str, Any], label: str) -> object:
    return pytest.param(cls, fields, id=f"{named(cls)}-{label}")


def bad(cls: type[Any], fields: dict[str, Any], field: str, rule: str, label: str) -> object:
    return pytest.param(cls, fields, field, rule, id=f"{named(cls)}-{field}-{label}")


ACCEPTED = [
    *[ok(cls, {"prompt": LONGEST}, "prompt-2500-chars") for cls in ALL],
    *[ok(cls, {"duration": str(seconds)}, f"duration-{seconds}") for cls in ALL for seconds in range(3, 16)],
    ok(OmniRequest, {"multi_prompt": ["shot"] * 6}, "6-shots"),
    ok(OmniRequest, {"multi_prompt": [LONGEST]}, "shot-2500-chars"),
    ok(OmniRequest, {"multi_prompt": ["a", "b"]}, "text-to-video-prompt-and-shots"),
    ok(Kling3Request, {"multi_prompt": shots("5", "5")}, "text-to-video-prompt-and-shots"),
    ok(Kling3Request, {"multi_prompt": shots("3", "3", "3", "3", "3")}, "5-shots-of-3s"),
    ok(Kling3Request, {"prompt": None, "multi_prompt": shots("10", "5")}, "shots-total-15s"),
    ok(OmniRequest, {"image_url": IMAGE}, "image-with-prompt"),
    ok(OmniRequest, {"prompt": None, "multi_prompt": ["a"], "image_url": IMAGE}, "image-with-shots"),
    ok(
        OmniRequest,
        {"prompt": None, "multi_prompt": ["a"], "start_image_url": IMAGE},
        "start-image-with-shots",
    ),
    ok(Kling3Request, {"start_image_url": IMAGE}, "start-image-with-prompt"),
    ok(
        Kling3Request,
        {"prompt": None, "multi_prompt": shots("5"), "start_image_url": IMAGE},
        "start-image-shots",
    ),
    # "not both" is on the Omni page only
    ok(Kling3Request, {"multi_prompt": shots("5"), "start_image_url": IMAGE}, "start-image-prompt-and-shots"),
    ok(OmniRequest, {"image_urls": [IMAGE] * 2, "elements": [ELEMENT] * 2}, "2-images-2-elements"),
    ok(OmniRequest, {"image_urls": [IMAGE] * 4}, "4-images"),
    ok(OmniRequest, {"elements": [ELEMENT] * 4}, "4-elements"),
    ok(Kling3Request, {"elements": [ELEMENT] * 4}, "4-elements"),
    # the 4-reference cap is Omni's ("elements + reference images"); Kling 3 states none
    ok(Kling3Request, {"elements": [ELEMENT] * 5}, "5-elements"),
    *[ok(cls, {"voice_ids": ["v1", "v2"]}, "2-voices") for cls in TEXT],
    *[ok(cls, {"generate_audio": flag}, f"audio-{flag}") for cls in TEXT for flag in (True, False)],
    *[ok(cls, {"cfg_scale": value}, f"cfg-{value!r}") for cls in CFG for value in (0, 0.0, 0.5, 1, 2, 2.0)],
    *[
        ok(cls, {"negative_prompt": text}, f"negative-{len(text)}-chars")
        for cls in CFG
        for text in ("", LONGEST)
    ],
    ok(OmniRequest, {"shot_type": "customize"}, "shot-customize"),
    *[ok(Kling3Request, {"shot_type": shot}, f"shot-{shot}") for shot in ("customize", "intelligent")],
    *[
        ok(cls, {"aspect_ratio": ratio}, f"aspect-{ratio}")
        for cls in ALL
        for ratio in ("16:9", "9:16", "1:1")
    ],
    ok(OmniRequest, {"aspect_ratio": "auto", "image_url": IMAGE}, "auto-with-image"),
    ok(OmniRequest, {"aspect_ratio": "auto", "start_image_url": IMAGE}, "auto-with-start-image"),
    ok(VideoReferenceRequest, {"aspect_ratio": "auto", "image_url": IMAGE}, "auto-with-image"),
    # "auto" matches the input, and the reference video is one
    ok(VideoReferenceRequest, {"aspect_ratio": "auto"}, "auto-without-image"),
    ok(OmniRequest, {"webhook_url": "http://localhost:8080/hook"}, "http-url"),
    ok(OmniRequest, {"image_url": "HTTPS://CDN.EXAMPLE.COM/A.PNG"}, "uppercase-scheme"),
    ok(OmniRequest, {"end_image_url": IMAGE}, "end-image"),
    ok(Kling3Request, {"end_image_url": IMAGE}, "end-image"),
]


@pytest.mark.parametrize(("cls", "fields"), ACCEPTED)
def test_request_within_every_limit_is_accepted(cls: type[Any], fields: dict[str, Any]) -> None:
    request = cls(**fields_of(cls, fields))
    kept = {name: tuple(value) if isinstance(value, list) else value for name, value in fields.items()}
    assert {name: getattr(request, name) for name in fields} == kept  # lists are kept as tuples


REJECTED = [
    # text
    *[
        bad(cls, {"prompt": TOO_LONG}, "prompt", "at most 2500 characters (got 2501)", "2501-chars")
        for cls in ALL
    ],
    *[
        bad(cls, {"prompt": text}, "prompt", "must not be empty or blank", repr(text))
        for cls in ALL
        for text in ("", " \n")
    ],
    bad(OmniRequest, {"prompt": 5}, "prompt", "must be a string (got 5, an int)", "int"),
    *[
        bad(cls, {"negative_prompt": TOO_LONG}, "negative_prompt", "at most 2500 characters", "2501")
        for cls in CFG
    ],
    bad(Kling3Request, {"negative_prompt": ["x"]}, "negative_prompt", "must be a string", "list"),
    # multi_prompt
    bad(OmniRequest, {"multi_prompt": ["a"] * 7}, "multi_prompt", "at most 6 shots (got 7)", "7-shots"),
    bad(
        Kling3Request,
        {"multi_prompt": shots(*"3333333")},
        "multi_prompt",
        "at most 6 shots (got 7)",
        "7-shots",
    ),
    bad(
        Kling3Request,
        {"multi_prompt": shots("10", "6")},
        "multi_prompt",
        "at most 15 s (got 16 s)",
        "total-16s",
    ),
    bad(
        Kling3Request,
        {"multi_prompt": shots(*"333333")},
        "multi_prompt",
        "at most 15 s (got 18 s)",
        "6-shots-18s",
    ),
    *[bad(cls, {"multi_prompt": []}, "multi_prompt", "at least 1 shot", "empty") for cls in TEXT],
    bad(OmniRequest, {"multi_prompt": "one shot"}, "multi_prompt", "must be a list", "str"),
    bad(OmniRequest, {"multi_prompt": ["a", TOO_LONG]}, "multi_prompt[1]", "at most 2500 characters", "2501"),
    bad(OmniRequest, {"multi_prompt": ["a", " "]}, "multi_prompt[1]", "must not be empty or blank", "blank"),
    bad(OmniRequest, {"multi_prompt": [3]}, "multi_prompt[0]", "must be a string (got 3, an int)", "int"),
    bad(Kling3Request, {"multi_prompt": ["a shot"]}, "multi_prompt[0]", "must be a Shot", "str"),
    # references and voices
    bad(
        OmniRequest,
        {"image_urls": [IMAGE] * 3, "elements": [ELEMENT] * 2},
        "image_urls + elements",
        "at most 4 references in total (got 5)",
        "3+2",
    ),
    bad(OmniRequest, {"image_urls": [IMAGE] * 5}, "image_urls + elements", "at most 4 references", "5+0"),
    bad(OmniRequest, {"elements": [ELEMENT] * 5}, "image_urls + elements", "at most 4 references", "0+5"),
    bad(OmniRequest, {"elements": [IMAGE]}, "elements[0]", "must be an Element", "str"),
    bad(Kling3Request, {"elements": ELEMENT}, "elements", "must be a list", "not-a-list"),
    *[bad(cls, {"voice_ids": ["a", "b", "c"]}, "voice_ids", "at most 2 voices (got 3)", "3") for cls in TEXT],
    bad(OmniRequest, {"voice_ids": ["a", ""]}, "voice_ids[1]", "must be a non-empty string", "empty"),
    bad(
        Kling3Request, {"voice_ids": [7]}, "voice_ids[0]", "must be a non-empty string (got 7, an int)", "int"
    ),
    # numbers and booleans
    *[
        bad(cls, {"cfg_scale": value}, "cfg_scale", "must be a number from 0 to 2", repr(value))
        for cls in CFG
        for value in (-0.1, 2.1, True, False, "0.5", math.nan, math.inf)
    ],
    bad(Kling3Request, {"cfg_scale": True}, "cfg_scale", "from 0 to 2 (got True, a bool)", "message"),
    *[
        bad(cls, {"generate_audio": value}, "generate_audio", "must be true or false", repr(value))
        for cls in TEXT
        for value in ("yes", "true", 1)
    ],
    # enums
    bad(
        OmniRequest,
        {"shot_type": "intelligent"},
        "shot_type",
        'must be "customize" (got "intelligent")',
        "intelligent",
    ),
    bad(
        Kling3Request, {"shot_type": "auto"}, "shot_type", 'must be one of "customize", "intelligent"', "auto"
    ),
    bad(OmniRequest, {"aspect_ratio": "4:3"}, "aspect_ratio", 'one of "auto", "16:9", "9:16", "1:1"', "4:3"),
    bad(
        VideoReferenceRequest, {"aspect_ratio": "4:3"}, "aspect_ratio", 'one of "auto", "16:9", "9:16"', "4:3"
    ),
    bad(
        Kling3Request,
        {"aspect_ratio": "auto", "start_image_url": IMAGE},
        "aspect_ratio",
        'must be one of "16:9", "9:16", "1:1" (got "auto")',
        "auto",
    ),
    bad(OmniRequest, {"aspect_ratio": 1}, "aspect_ratio", "(got 1, an int)", "int"),
    # "auto" needs an image
    bad(
        OmniRequest,
        {"aspect_ratio": "auto"},
        "aspect_ratio",
        '"auto" needs an image_url or start_image_url',
        "auto-text-to-video",
    ),
    bad(
        OmniRequest,
        {"aspect_ratio": "auto", "end_image_url": IMAGE},
        "aspect_ratio",
        '"auto" needs',
        "auto-end",
    ),
    # prompt vs multi_prompt
    *[
        bad(cls, {"prompt": None}, "prompt + multi_prompt", "one of them is required", "neither")
        for cls in TEXT
    ],
    bad(
        OmniRequest,
        {"prompt": None, "image_url": IMAGE},
        "prompt + multi_prompt",
        "one of them is required",
        "image-alone",
    ),
    bad(
        OmniRequest,
        {"multi_prompt": ["a"], "image_url": IMAGE},
        "prompt + multi_prompt",
        "not both in image-to-video (with an image_url or start_image_url)",
        "image-both",
    ),
    bad(
        OmniRequest,
        {"multi_prompt": ["a"], "start_image_url": IMAGE},
        "prompt + multi_prompt",
        "not both in image-to-video",
        "start-image-both",
    ),
    # URLs (the URL rule itself: test_url_fields_take_only_http_urls)
    bad(VideoReferenceRequest, {"video_url": None}, "video_url", f"{URL_RULE} (got None)", "none"),
    bad(
        OmniRequest,
        {"image_urls": [IMAGE, IMAGE, "ftp://cdn/x.png"]},
        "image_urls[2]",
        f'{URL_RULE} (got "ftp://cdn/x.png")',
        "ftp",
    ),
    bad(OmniRequest, {"image_urls": IMAGE}, "image_urls", "must be a list", "str"),
]


@pytest.mark.parametrize(("cls", "fields", "field", "rule"), REJECTED)
def test_request_breaking_a_rule_names_field_and_rule(
    cls: type[Any], fields: dict[str, Any], field: str, rule: str
) -> None:
    raises_invalid(lambda: cls(**fields_of(cls, fields)), field, rule)


def test_a_requests_lists_stay_as_they_were_checked() -> None:
    """Kept as tuples: a list appended to after the checks would send what the API refuses (5 references)."""
    request = OmniRequest(prompt="p", image_urls=[IMAGE, IMAGE], elements=[ELEMENT], voice_ids=["v1"])
    for name in ("image_urls", "elements", "voice_ids"):
        assert isinstance(getattr(request, name), tuple), name
    shots = Kling3Request(multi_prompt=[Shot(prompt="a", duration="3")]).multi_prompt
    assert isinstance(shots, tuple)
    assert isinstance(Element(reference_image_urls=[IMAGE]).reference_image_urls, tuple)


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("value", ["2", "16", "0", "5.0", " 5", "05", "", 5, 5.0, ["5"]])
def test_duration_must_be_a_string_3_to_15(cls: type[Any], value: object) -> None:
    raises_invalid(lambda: cls(**fields_of(cls, {"duration": value})), "duration", DURATION_RULE)


def test_duration_given_as_int_says_so() -> None:
    error = raises_invalid(lambda: OmniRequest(prompt="p", duration=5), "duration", DURATION_RULE)  # type: ignore[arg-type]
    assert str(error) == 'duration: must be a string "3".."15" (got 5, an int)'
    assert error.rule == 'must be a string "3".."15" (got 5, an int)'


URL_FIELDS = [
    *[(OmniRequest, name) for name in ("webhook_url", "image_url", "start_image_url", "end_image_url")],
    *[(Kling3Request, name) for name in ("webhook_url", "start_image_url", "end_image_url")],
    *[(VideoReferenceRequest, name) for name in ("video_url", "webhook_url", "image_url")],
]
NOT_URLS = [
    "",
    "cdn.example.com/a.png",
    "ftp://cdn.example.com/a.png",
    "https://",
    "https:///a.png",
    "https://cdn.example.com/a b.png",
    " https://cdn.example.com/a.png",
    42,
]


@pytest.mark.parametrize(("cls", "field"), URL_FIELDS)
@pytest.mark.parametrize("value", NOT_URLS)
def test_url_fields_take_only_http_urls(cls: type[Any], field: str, value: object) -> None:
    raises_invalid(lambda: cls(**fields_of(cls, {field: value})), field, URL_RULE)


URI_FIELDS = [
    (OmniRequest, "webhook_url"),
    (Kling3Request, "webhook_url"),
    (VideoReferenceRequest, "video_url"),
]
URI_RULE = "must be a URI: percent-encode non-ASCII and reserved characters"


@pytest.mark.parametrize(("cls", "field"), [*URI_FIELDS, (VideoReferenceRequest, "webhook_url")])
@pytest.mark.parametrize(
    "value",
    [
        "https://b\u00fccher.example/hook",
        "https://h.example/clips/vid\u00e9o.mp4",
        "https://h.example/hook?task={id}",
        "https://h.example/a|b",
        "https://h.example/50%",
        "https://h.example/a%zz",
        "https://h.example/a\u200bb",
    ],
)
def test_fields_the_vendor_types_as_uris_refuse_what_a_uri_cannot_hold(
    cls: type[Any], field: str, value: str
) -> None:
    """The API answers these with a 400 (`format: uri`): refused before anything is paid for."""
    raises_invalid(lambda: cls(**fields_of(cls, {field: value})), field, URI_RULE)


@pytest.mark.parametrize(("cls", "field"), URI_FIELDS)
def test_a_percent_encoded_uri_with_a_query_is_taken(cls: type[Any], field: str) -> None:
    url = "https://h.example/clips/vid%C3%A9o%20one.mp4?sig=a-b_c~d&list=[1,2]"
    assert getattr(cls(**fields_of(cls, {field: url})), field) == url


PART_ACCEPTED = [
    pytest.param(Element, {"frontal_image_url": IMAGE}, id="element-frontal"),
    pytest.param(Element, {"reference_image_urls": [IMAGE]}, id="element-references"),
    pytest.param(
        Element, {"reference_image_urls": [], "frontal_image_url": IMAGE}, id="element-frontal-no-refs"
    ),
    pytest.param(Shot, {"prompt": LONGEST, "duration": "3"}, id="shot-2500-3s"),
    pytest.param(Shot, {"prompt": "p", "duration": "15"}, id="shot-15s"),
]


@pytest.mark.parametrize(("cls", "fields"), PART_ACCEPTED)
def test_element_or_shot_within_limits_is_accepted(cls: type[Any], fields: dict[str, Any]) -> None:
    part = cls(**fields)
    kept = {name: tuple(value) if isinstance(value, list) else value for name, value in fields.items()}
    assert {name: getattr(part, name) for name in fields} == kept


PART_REJECTED = [
    pytest.param(Element, {}, "frontal_image_url", "at least one image is required", id="element-no-image"),
    pytest.param(
        Element, {"reference_image_urls": []}, "frontal_image_url", "at least one image", id="element-empty"
    ),
    pytest.param(
        Element, {"frontal_image_url": "x"}, "frontal_image_url", URL_RULE, id="element-frontal-not-url"
    ),
    pytest.param(
        Element, {"reference_image_urls": [IMAGE, "x"]}, "reference_image_urls[1]", URL_RULE, id="element-ref"
    ),
    pytest.param(
        Element, {"reference_image_urls": IMAGE}, "reference_image_urls", "must be a list", id="element-str"
    ),
    pytest.param(
        Shot, {"prompt": "p", "duration": "16"}, "duration", f'{DURATION_RULE} (got "16")', id="shot-16s"
    ),
    pytest.param(Shot, {"prompt": "p", "duration": "2"}, "duration", DURATION_RULE, id="shot-2s"),
    pytest.param(
        Shot, {"prompt": "p", "duration": 5}, "duration", f"{DURATION_RULE} (got 5, an int)", id="shot-int"
    ),
    pytest.param(
        Shot, {"prompt": " ", "duration": "5"}, "prompt", "must not be empty or blank", id="shot-blank"
    ),
    pytest.param(
        Shot, {"prompt": TOO_LONG, "duration": "5"}, "prompt", "at most 2500 characters", id="shot-2501"
    ),
]


@pytest.mark.parametrize(("cls", "fields", "field", "rule"), PART_REJECTED)
def test_element_or_shot_breaking_a_rule_names_field_and_rule(
    cls: type[Any], fields: dict[str, Any], field: str, rule: str
) -> None:
    raises_invalid(lambda: cls(**fields), field, rule)


def test_decoding_a_request_runs_the_same_validation() -> None:
    """msgspec wraps the error raised in __post_init__, and our message survives inside it."""
    body = msgspec.json.encode({"prompt": TOO_LONG})
    with pytest.raises(msgspec.ValidationError, match=r"prompt: at most 2500 characters \(got 2501\)"):
        msgspec.json.decode(body, type=OmniRequest)


@pytest.mark.parametrize(("cls", "fields", "field", "rule"), REJECTED)
def test_request_from_dict_rejects_what_construction_rejects(
    cls: type[Any], fields: dict[str, Any], field: str, rule: str
) -> None:
    data = msgspec.to_builtins(fields_of(cls, fields))
    with pytest.raises(InvalidRequestError) as info:
        request_from_dict(data, cls)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("cls", "data", "field", "rule"),
    [
        pytest.param(
            Kling3Request,
            {"multi_prompt": [{"prompt": "a", "duration": "3"}, {"prompt": "b", "duration": "16"}]},
            "multi_prompt[1].duration",
            f'{DURATION_RULE} (got "16")',
            id="shot-duration",
        ),
        pytest.param(
            OmniRequest,
            {"prompt": "p", "elements": [ELEMENT, {"reference_image_urls": [IMAGE, "x"]}]},
            "elements[1].reference_image_urls[1]",
            URL_RULE,
            id="element-reference",
        ),
        pytest.param(
            OmniRequest,
            {"prompt": "p", "elements": [{}]},
            "elements[0].frontal_image_url",
            "at least one image is required",
            id="element-empty",
        ),
        pytest.param(
            Kling3Request,
            {"multi_prompt": [{"prompt": "a", "duration": 5}]},
            "multi_prompt[0].duration",
            f"{DURATION_RULE} (got 5, an int)",
            id="shot-duration-type",
        ),
        pytest.param(
            Kling3Request,
            {"multi_prompt": [{"prompt": "a"}]},
            "multi_prompt[0].duration",
            "required",
            id="shot-duration-missing",
        ),
        pytest.param(
            OmniRequest,
            {"prompt": "p", "elements": [{"frontal_image_url": IMAGE, "front": IMAGE}]},
            "elements[0].front",
            "unknown field",
            id="element-unknown-field",
        ),
    ],
)
def test_request_from_dict_names_nested_fields_by_their_path(
    cls: type[Any], data: dict[str, Any], field: str, rule: str
) -> None:
    raises_invalid(lambda: request_from_dict(msgspec.to_builtins(data), cls), field, rule)


@pytest.mark.parametrize("typo", ["promt", "id", "model", "Duration"])
def test_request_from_dict_rejects_unknown_fields(typo: str) -> None:
    error = raises_invalid(
        lambda: request_from_dict({"prompt": "p", typo: "5"}, OmniRequest), typo, "unknown field"
    )
    assert error.rule == "unknown field"


def test_request_from_dict_requires_video_url() -> None:
    raises_invalid(lambda: request_from_dict({"prompt": "p"}, VideoReferenceRequest), "video_url", "required")


@pytest.mark.parametrize(
    ("cls", "data", "field", "rule"),
    [
        (OmniRequest, {"generate_audio": 1}, "generate_audio", "must be true or false (got a whole number)"),
        (Kling3Request, {"cfg_scale": "0.5"}, "cfg_scale", "must be a number (got a string)"),
        (OmniRequest, {"prompt": 5}, "prompt", "must be a string (got a whole number)"),
        (
            OmniRequest,
            {"image_urls": "https://cdn.example.com/a.png"},
            "image_urls",
            "must be a list (got a string)",
        ),
        (OmniRequest, {"elements": [5]}, "elements[0]", "must be an object (got a whole number)"),
    ],
)
def test_request_from_dict_names_a_wrong_type_in_the_rules_words(
    cls: type[Any], data: dict[str, Any], field: str, rule: str
) -> None:
    """Not msgspec's `float | null`: null is never sent, and the row's author writes JSON, not Python."""
    error = raises_invalid(lambda: request_from_dict({"prompt": "p", **data}, cls), field, rule)
    assert error.rule == rule


@pytest.mark.parametrize(
    ("cls", "data", "message"),
    [
        pytest.param(
            OmniRequest,
            {"prompt": "p", "duration": 5},
            f"duration: {DURATION_RULE} (got 5, an int)",
            id="duration-int",
        ),
        pytest.param(
            OmniRequest,
            {"prompt": "p", "duration": "16"},
            f'duration: {DURATION_RULE} (got "16")',
            id="duration-16",
        ),
        pytest.param(
            Kling3Request,
            {"prompt": "p", "aspect_ratio": "auto"},
            'aspect_ratio: must be one of "16:9", "9:16", "1:1" (got "auto")',
            id="kling3-aspect-auto",
        ),
        pytest.param(
            OmniRequest,
            {"prompt": "p", "aspect_ratio": []},
            'aspect_ratio: must be one of "auto", "16:9", "9:16", "1:1" (got [], a list)',
            id="omni-aspect-list",
        ),
        pytest.param(
            OmniRequest,
            {"prompt": "p", "shot_type": "intelligent"},
            'shot_type: must be "customize" (got "intelligent")',
            id="omni-shot-type",
        ),
        pytest.param(
            Kling3Request,
            {"multi_prompt": [{"prompt": "a", "duration": {}}]},
            f"multi_prompt[0].duration: {DURATION_RULE} (got {{}}, a dict)",
            id="shot-duration-object",
        ),
    ],
)
def test_request_from_dict_says_a_literal_fields_rule_as_construction_does(
    cls: type[Any], data: dict[str, Any], message: str
) -> None:
    """msgspec checks the Literal types first; the message is still "field: rule (got ...)", not msgspec's."""
    with pytest.raises(InvalidRequestError) as info:
        request_from_dict(data, cls)
    assert str(info.value) == message


def test_request_from_dict_rejects_data_that_is_not_an_object() -> None:
    with pytest.raises(InvalidRequestError, match="Expected `object`, got `array`") as info:
        request_from_dict(["prompt"], OmniRequest)  # type: ignore[arg-type]
    assert info.value.field is None


def test_request_from_dict_builds_the_same_request_as_by_hand() -> None:
    data = {
        "prompt": "p",
        "elements": [{"frontal_image_url": IMAGE}],
        "multi_prompt": [{"prompt": "shot 0", "duration": "5"}],
        "cfg_scale": 1,
    }
    expected = Kling3Request(prompt="p", elements=[ELEMENT], multi_prompt=shots("5"), cfg_scale=1.0)
    assert request_from_dict(data, Kling3Request) == expected


def test_request_from_dict_lax_accepts_csv_strings_for_numbers_and_booleans() -> None:
    row = {"prompt": "p", "generate_audio": "true", "cfg_scale": "0.5", "duration": "5"}
    request = request_from_dict(row, Kling3Request, strict=False)
    assert (request.generate_audio, request.cfg_scale, request.duration) == (True, 0.5, "5")


def test_request_from_dict_is_strict_by_default() -> None:
    raises_invalid(
        lambda: request_from_dict({"prompt": "p", "generate_audio": "true"}, Kling3Request),
        "generate_audio",
        "must be true or false (got a string)",
    )


def test_request_from_dict_lax_still_wants_duration_as_a_string() -> None:
    raises_invalid(
        lambda: request_from_dict({"prompt": "p", "duration": 5}, OmniRequest, strict=False),
        "duration",
        f"{DURATION_RULE} (got 5, an int)",
    )


@pytest.mark.parametrize(
    ("request_", "body"),
    [
        (OmniRequest(prompt="a fox"), b'{"prompt":"a fox"}'),
        (OmniRequest(prompt="a fox", generate_audio=False), b'{"prompt":"a fox","generate_audio":false}'),
        (
            OmniRequest(prompt="p", elements=[ELEMENT]),
            b'{"prompt":"p","elements":[{"frontal_image_url":"https://cdn.example.com/frame.png"}]}',
        ),
        (
            Kling3Request(multi_prompt=shots("5"), duration="5"),
            b'{"multi_prompt":[{"prompt":"shot 0","duration":"5"}],"duration":"5"}',
        ),
        (VideoReferenceRequest(video_url=VIDEO), b'{"video_url":"https://cdn.example.com/clip.mp4"}'),
    ],
)
def test_encoding_sends_only_the_fields_that_were_set(request_: Request, body: bytes) -> None:
    assert encode_request(request_) == body


FULL_REQUESTS = [
    OmniRequest(
        webhook_url=HOOK,
        prompt="@Image1 meets @Element1, <<<voice_1>>> speaks",
        shot_type="customize",
        image_url=IMAGE,
        end_image_url=IMAGE,
        image_urls=[IMAGE],
        elements=[Element(reference_image_urls=[IMAGE, IMAGE], frontal_image_url=IMAGE)],
        generate_audio=True,
        voice_ids=["v1", "v2"],
        aspect_ratio="auto",
        duration="10",
    ),
    OmniRequest(multi_prompt=["a", "b"], start_image_url=IMAGE, aspect_ratio="9:16"),
    Kling3Request(
        webhook_url=HOOK,
        multi_prompt=shots("5", "10"),
        start_image_url=IMAGE,
        end_image_url=IMAGE,
        elements=[ELEMENT],
        generate_audio=False,
        voice_ids=["v1"],
        shot_type="intelligent",
        aspect_ratio="1:1",
        duration="15",
        negative_prompt="blur",
        cfg_scale=0.7,
    ),
    VideoReferenceRequest(
        video_url=VIDEO,
        webhook_url=HOOK,
        prompt="like @Video1",
        image_url=IMAGE,
        duration="8",
        aspect_ratio="auto",
        cfg_scale=2.0,
        negative_prompt="",
    ),
]


@pytest.mark.parametrize("request_", FULL_REQUESTS)
def test_encoded_request_decodes_to_an_equal_request(request_: Request) -> None:
    encoded = encode_request(request_)
    assert msgspec.json.decode(encoded, type=type(request_)) == request_
    assert request_from_dict(msgspec.json.decode(encoded), type(request_)) == request_


@pytest.mark.parametrize(
    "request_", [OmniRequest(prompt="p"), Kling3Request(prompt="p"), VideoReferenceRequest(video_url=VIDEO)]
)
def test_with_webhook_returns_a_copy_with_the_url_set(request_: Request) -> None:
    hooked = with_webhook(request_, HOOK)
    assert type(hooked) is type(request_)
    assert hooked.webhook_url == HOOK
    assert request_.webhook_url is None
    assert msgspec.structs.replace(hooked, webhook_url=None) == request_


def test_with_webhook_validates_the_url() -> None:
    raises_invalid(
        lambda: with_webhook(OmniRequest(prompt="p"), "hooks.example.com"), "webhook_url", URL_RULE
    )


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (OmniRequest(prompt="p"), "prompt"),
        (Shot(prompt="p", duration="5"), "duration"),
        (TaskStatus("t", CREATED), "status"),
        (TaskResult("t", COMPLETED, ()), "urls"),
    ],
)
def test_structs_are_immutable(value: object, field: str) -> None:
    with pytest.raises(AttributeError):
        setattr(value, field, "changed")


def test_decode_task_reads_the_data_wrapper() -> None:
    body = b'{"data": {"task_id": "t1", "status": "COMPLETED", "generated": ["https://cdn/v.mp4"]}}'
    assert decode_task(body) == TaskStatus("t1", COMPLETED, ("https://cdn/v.mp4",))


def test_decode_task_ignores_unknown_fields_and_keeps_an_unknown_status() -> None:
    body = b'{"meta": 1, "data": {"task_id": "t1", "status": "WEIRD", "generated": [], "eta": 30}}'
    assert decode_task(body) == TaskStatus("t1", "WEIRD", ())


def test_decode_task_without_generated_has_no_urls() -> None:
    assert decode_task(b'{"data": {"task_id": "t1", "status": "IN_PROGRESS"}}').generated == ()


def test_decode_task_list_reads_items_without_generated() -> None:
    body = b'{"data": [{"task_id": "a", "status": "CREATED"}, {"task_id": "b", "status": "WEIRD", "x": [1]}]}'
    assert decode_task_list(body) == [TaskSummary("a", CREATED), TaskSummary("b", "WEIRD")]


def test_decode_task_list_of_no_tasks_is_empty() -> None:
    assert decode_task_list(b'{"data": []}') == []


def test_decode_webhook_reads_the_task_without_a_wrapper() -> None:
    body = b'{"task_id": "t1", "status": "FAILED", "generated": [], "attempt": 2}'
    assert decode_webhook(body) == TaskStatus("t1", FAILED)


SECRET_PAGE = b"<html>" + b"upstream proxy error page " * 50 + b"</html>"


@pytest.mark.parametrize(
    ("decode", "body"),
    [
        (decode_task, SECRET_PAGE),
        (decode_task, b""),
        (decode_task, b"{}"),
        (decode_task, b'{"data": []}'),
        (decode_task, b'{"data": {"status": "CREATED"}}'),
        (decode_task, b'{"data": {"task_id": 7, "status": "CREATED"}}'),
        (decode_task, b'{"data": {"task_id": "t", "status": "COMPLETED", "generated": "https://cdn/v.mp4"}}'),
        (decode_task, b'{"task_id": "t", "status": "CREATED"}'),
        (decode_task_list, SECRET_PAGE),
        (decode_task_list, b'{"data": {"task_id": "t", "status": "CREATED"}}'),
        (decode_task_list, b'{"data": [{"task_id": "t"}]}'),
        (decode_task_list, b"[]"),
        (decode_webhook, SECRET_PAGE),
        (decode_webhook, b'{"data": {"task_id": "t", "status": "CREATED"}}'),
        (decode_webhook, b'{"task_id": "t", "status": null}'),
    ],
)
def test_body_of_the_wrong_shape_is_a_short_transport_error(
    decode: Callable[[bytes], object], body: bytes
) -> None:
    with pytest.raises(TransportError) as info:
        decode(body)
    message = str(info.value)
    assert message.startswith("unexpected response body: ")
    assert len(message) < 200
    assert "proxy error page" not in message


@pytest.mark.parametrize(("urls", "url"), [(("https://a", "https://b"), "https://a"), ((), None)])
def test_task_result_url_is_the_first_url(urls: tuple[str, ...], url: str | None) -> None:
    assert TaskResult("t", COMPLETED, urls).url == url


def test_terminal_and_failure_statuses() -> None:
    assert (CREATED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED) == (
        "CREATED",
        "IN_PROGRESS",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
    )
    assert {COMPLETED, FAILED, CANCELLED} == TERMINAL_STATUSES
    assert {FAILED, CANCELLED} == FAILURE_STATUSES


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"data":{"task_id":"t-1","status":"CREATED","generated":[]}}', id="wrapped"),
        pytest.param(b'{"task_id":"t-1","status":"CREATED"}', id="bare"),
        pytest.param(b'{"task_id":"t-1","status":"CREATED","generated":[],"extra":{"x":1}}', id="bare-extra"),
        pytest.param(b'{"data":{"task_id":"t-1"}}', id="wrapped-id-only"),
        pytest.param(b'{"task_id":"t-1"}', id="bare-id-only"),
        pytest.param(b'{"data":{"task_id":"t-1","status":"CREATED","generated":null}}', id="null-generated"),
    ],
)
def test_decode_created_accepts_the_wrapped_and_the_bare_task(body: bytes) -> None:
    """The vendor documents no create schema and its pages show both forms: each gives the task. The id is
    all an answer must carry: a task it names was created (and paid for), whatever else is missing."""
    assert decode_created(body) == TaskStatus(task_id="t-1", status="CREATED")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html><body>502 Bad Gateway</body></html>", id="html"),
        pytest.param(b'{"data":[]}', id="data-list"),
        pytest.param(b'{"status":"CREATED"}', id="no-task-id"),
        pytest.param(b'{"data":{"status":"CREATED"}}', id="wrapped-no-task-id"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[" * 100_000, id="deep"),
    ],
)
def test_decode_created_refuses_anything_else_as_a_transport_error(body: bytes) -> None:
    with pytest.raises(TransportError, match="unexpected create response body"):
        decode_created(body)


def test_decode_created_error_carries_a_short_snippet_of_the_body() -> None:
    """The snippet shows what came back (say, a proxy's page) without pasting a megabyte into a log."""
    body = b"<html>upstream said no" + b"!" * 1_000_000
    with pytest.raises(TransportError) as info:
        decode_created(body)
    message = str(info.value)
    snippet = message.removeprefix("unexpected create response body: ")
    assert snippet.startswith("'<html>upstream said no!!!")
    assert len(snippet) <= 200
