"""Property tests: valid requests round-trip, invalid ones fail typed, and hostile bytes never crash us.

Every strategy is built from the limits in ``api/freepik-kling-api.md`` and the validation in
``kling_async/_models.py``. Inputs that once broke a property are pinned as ``@example``s, so they are
tried on every run, not only when the search happens to find them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar, cast

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kling_async._errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    ServerError,
    TransportError,
    api_error,
)
from kling_async._models import (
    Duration,
    Element,
    Kling3Request,
    OmniRequest,
    Request,
    Shot,
    TaskStatus,
    TaskSummary,
    VideoReferenceRequest,
    decode_task,
    decode_task_list,
    decode_webhook,
    encode_request,
    request_from_dict,
)
from kling_async._retry import parse_retry_after

# No example database: the suite must leave no `.hypothesis/` folder behind in the repository.
FAST = settings(max_examples=50, deadline=None, database=None)
QUICK = settings(max_examples=30, deadline=None, database=None)

RequestType: TypeAlias = type[OmniRequest] | type[Kling3Request] | type[VideoReferenceRequest]
ALL_TYPES: tuple[RequestType, ...] = (OmniRequest, Kling3Request, VideoReferenceRequest)
DURATIONS = tuple(str(seconds) for seconds in range(3, 16))
OMNI_RATIOS = ("16:9", "9:16", "1:1")  # plus "auto" with an image
KLING3_RATIOS = ("16:9", "9:16", "1:1")
MAX_TEXT = 2500

_T = TypeVar("_T")
_E = TypeVar("_E", bound=Exception)


def outcome(expected: type[_E], call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T | _E:
    """What ``call(*args, **kwargs)`` returns, or the ``expected`` error it raises (others propagate)."""
    try:
        return call(*args, **kwargs)
    except expected as exc:
        return exc


# -- building blocks -------------------------------------------------------------------------------------

urls = st.from_regex(
    r"https?://[a-z0-9-]{1,12}(\.[a-z]{2,6}){0,2}(:[0-9]{2,5})?(/([A-Za-z0-9._~@=&-]|%[0-9A-F]{2}){0,12}){0,3}",
    fullmatch=True,
)
# Prompts: short arbitrary Unicode (hypothesis's text() has no lone surrogates) and the 2500 boundary.
prompts = st.one_of(
    st.text(min_size=1, max_size=60).filter(lambda text: text.strip() != ""),
    st.integers(1, MAX_TEXT).map(lambda n: "x" * n),
    st.just("é" * MAX_TEXT),
    st.just("\U0001f98a" * MAX_TEXT),  # astral characters count one each
)
negative_prompts = st.one_of(st.text(max_size=40), st.integers(0, MAX_TEXT).map(lambda n: " " * n))
voice_ids = st.text(min_size=1, max_size=20).filter(lambda text: text.strip() != "")
durations = st.sampled_from(DURATIONS)
cfg_scales = st.one_of(st.floats(0.0, 2.0), st.integers(0, 2), st.sampled_from([0.0, 2.0, 0.5]))


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The value or None (None is every optional field's default, and is not sent)."""
    return st.one_of(st.none(), strategy)


@st.composite
def elements(draw: st.DrawFn) -> Element:
    front = draw(maybe(urls))
    refs = draw(st.lists(urls, min_size=0 if front is not None else 1, max_size=3))
    if front is not None and draw(st.booleans()):
        return Element(frontal_image_url=front)
    return Element(reference_image_urls=refs, frontal_image_url=front)


@st.composite
def shot_lists(draw: st.DrawFn) -> list[Shot]:
    """1 to 5 shots whose durations total at most 15 s (6 shots of at least 3 s cannot fit)."""
    count = draw(st.integers(1, 5))
    budget = 15
    shots = []
    for position in range(count):
        still_to_come = count - position - 1
        seconds = draw(st.integers(3, budget - 3 * still_to_come))
        budget -= seconds
        shots.append(Shot(prompt=draw(prompts), duration=cast(Duration, str(seconds))))
    return shots


def prompt_fields(draw: st.DrawFn, has_image: bool, shots: st.SearchStrategy[Any]) -> dict[str, Any]:
    """prompt and/or multi_prompt: one of them at least; not both in image-to-video."""
    modes = ["prompt", "multi"] if has_image else ["prompt", "multi", "both"]
    mode = draw(st.sampled_from(modes))
    fields: dict[str, Any] = {}
    if mode in ("prompt", "both"):
        fields["prompt"] = draw(prompts)
    if mode in ("multi", "both"):
        fields["multi_prompt"] = draw(shots)
    return fields


@st.composite
def omni_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "webhook_url": draw(maybe(urls)),
        "image_url": draw(maybe(urls)),
        "start_image_url": draw(maybe(urls)),
        "end_image_url": draw(maybe(urls)),
        "shot_type": draw(maybe(st.just("customize"))),
        "generate_audio": draw(maybe(st.booleans())),
        "voice_ids": draw(maybe(st.lists(voice_ids, max_size=2))),
        "duration": draw(maybe(durations)),
    }
    has_image = kw["image_url"] is not None or kw["start_image_url"] is not None
    kw |= prompt_fields(draw, has_image, st.lists(prompts, min_size=1, max_size=6))
    images = draw(maybe(st.lists(urls, max_size=4)))
    kw["image_urls"] = images
    room = 4 - len(images or [])
    kw["elements"] = draw(maybe(st.lists(elements(), max_size=room)))
    ratios = (*OMNI_RATIOS, "auto") if has_image else OMNI_RATIOS
    kw["aspect_ratio"] = draw(maybe(st.sampled_from(ratios)))
    return kw


@st.composite
def kling3_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "webhook_url": draw(maybe(urls)),
        "start_image_url": draw(maybe(urls)),
        "end_image_url": draw(maybe(urls)),
        "elements": draw(maybe(st.lists(elements(), max_size=4))),
        "generate_audio": draw(maybe(st.booleans())),
        "voice_ids": draw(maybe(st.lists(voice_ids, max_size=2))),
        "shot_type": draw(maybe(st.sampled_from(["customize", "intelligent"]))),
        "aspect_ratio": draw(maybe(st.sampled_from(KLING3_RATIOS))),
        "duration": draw(maybe(durations)),
        "negative_prompt": draw(maybe(negative_prompts)),
        "cfg_scale": draw(maybe(cfg_scales)),
    }
    kw |= prompt_fields(draw, kw["start_image_url"] is not None, shot_lists())
    return kw


@st.composite
def reference_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "video_url": draw(urls),
        "webhook_url": draw(maybe(urls)),
        "prompt": draw(maybe(prompts)),
        "image_url": draw(maybe(urls)),
        "duration": draw(maybe(durations)),
        "cfg_scale": draw(maybe(cfg_scales)),
        "negative_prompt": draw(maybe(negative_prompts)),
    }
    ratios = (*OMNI_RATIOS, "auto") if kw["image_url"] is not None else OMNI_RATIOS
    kw["aspect_ratio"] = draw(maybe(st.sampled_from(ratios)))
    return kw


KWARGS: dict[RequestType, Callable[[], st.SearchStrategy[dict[str, Any]]]] = {
    OmniRequest: omni_kwargs,
    Kling3Request: kling3_kwargs,
    VideoReferenceRequest: reference_kwargs,
}


@st.composite
def valid_requests(draw: st.DrawFn) -> Request:
    cls = draw(st.sampled_from(ALL_TYPES))
    return cls(**draw(KWARGS[cls]()))


# -- 1. valid requests encode and round-trip -------------------------------------------------------------


@FAST
@given(valid_requests())
def test_every_valid_request_encodes_and_round_trips(request: Request) -> None:
    """A request that validates encodes to JSON that decodes (and validates) back to an equal request."""
    encoded = encode_request(request)
    assert msgspec.json.decode(encoded, type=type(request)) == request
    # unset fields are not sent, so the server applies its own defaults
    sent = msgspec.json.decode(encoded)
    assert None not in sent.values()


@FAST
@given(valid_requests())
def test_every_valid_request_survives_request_from_dict(request: Request) -> None:
    """The plain-data path (JSONL / CSV) accepts what the constructor accepts, unchanged."""
    data = msgspec.to_builtins(request)
    assert request_from_dict(data, type(request)) == request


def test_a_prompt_of_exactly_2500_characters_is_valid_and_2501_is_not() -> None:
    assert OmniRequest(prompt="x" * MAX_TEXT).prompt == "x" * MAX_TEXT
    with pytest.raises(InvalidRequestError) as caught:
        OmniRequest(prompt="x" * (MAX_TEXT + 1))
    assert caught.value.field == "prompt"


BASE_FIELDS: dict[RequestType, dict[str, Any]] = {
    OmniRequest: {"prompt": "a fox in snow"},
    Kling3Request: {"prompt": "a fox in snow"},
    VideoReferenceRequest: {"video_url": "https://cdn.example.com/clip.mp4"},
}


# -- 2. invalid requests: one broken rule at a time --------------------------------------------------------


@dataclass(frozen=True)
class Broken:
    """A request's fields with exactly one rule broken, and the field the error must name."""

    cls: RequestType
    kwargs: dict[str, Any]
    field: str
    rule: str
    by_constructor: bool = True  # the fields can be passed to the struct itself
    by_dict: bool = True  # the fields are plain data that request_from_dict must refuse the same way


not_a_url = st.one_of(
    st.sampled_from(
        [
            "",
            "example.com/a.png",
            "ftp://example.com/a.png",
            "https://",
            "http:///path",
            "https://exa mple.com/a.png",
            " https://example.com/a.png",
            "https://example.com/a.png\n",
            "javascript:alert(1)",
            "file:///etc/passwd",
            "//example.com/a.png",
        ]
    ),
    st.text(max_size=30).filter(lambda text: not text.lower().startswith(("http://", "https://"))),
)
not_a_string: st.SearchStrategy[Any] = st.one_of(
    st.integers(), st.floats(allow_nan=False), st.booleans(), st.just([])
)
blank = st.text(alphabet=" \t\r\n\u00a0\u2003\u3000", max_size=10)
too_long = st.integers(MAX_TEXT + 1, MAX_TEXT + 50).map(lambda n: "x" * n)
bad_duration = st.one_of(
    st.text(max_size=5).filter(lambda text: text not in DURATIONS),
    st.sampled_from(["2", "16", "0", "-5", "5.0", " 5", "5 ", "05", "five", "", "10s"]),
    st.integers(),
    st.floats(),
    st.booleans(),
)
bad_cfg = st.one_of(
    st.floats().filter(lambda x: math.isnan(x) or not 0 <= x <= 2),
    st.integers().filter(lambda n: not 0 <= n <= 2),
    st.booleans(),
    st.sampled_from([-1e-9, 2.0000001, math.inf, -math.inf, math.nan]),
)
bad_cfg_for_dict: st.SearchStrategy[Any] = st.one_of(bad_cfg, st.text(max_size=5), st.just([]))


def url_fields(cls: RequestType) -> tuple[str, ...]:
    if cls is OmniRequest:
        return ("webhook_url", "image_url", "start_image_url", "end_image_url")
    if cls is Kling3Request:
        return ("webhook_url", "start_image_url", "end_image_url")
    return ("video_url", "webhook_url", "image_url")


def has_image(cls: RequestType, kw: dict[str, Any]) -> bool:
    if cls is OmniRequest:
        return kw.get("image_url") is not None or kw.get("start_image_url") is not None
    if cls is Kling3Request:
        return kw.get("start_image_url") is not None
    return kw.get("image_url") is not None


@st.composite
def broken_requests(draw: st.DrawFn) -> Broken:
    cls = draw(st.sampled_from(ALL_TYPES))
    kw = draw(KWARGS[cls]())
    text_type = cls is not VideoReferenceRequest
    with_cfg = cls is not OmniRequest
    rules = ["prompt too long", "prompt blank", "prompt not a string", "bad duration", "bad url"]
    rules += ["bad aspect ratio", "unknown field"]
    if text_type:
        rules += ["too many shots", "no shots", "neither prompt", "bad shot type", "auto without image"]
        rules += ["too many voices", "blank voice", "audio not bool", "element not an Element"]
    if cls is OmniRequest:
        # The vendor states these for Omni only: Kling 3 takes any number of elements, and a prompt
        # beside its shots with a start image; reference-to-video's "auto" needs no image.
        rules += ["shot too long", "bad reference url", "both with image", "too many references"]
    if cls is Kling3Request:
        rules += ["shots over 15 s", "bad shot duration"]
    if with_cfg:
        rules += ["bad cfg_scale", "negative prompt too long"]
    if cls is VideoReferenceRequest:
        rules += ["no video_url"]
    rule = draw(st.sampled_from(rules))
    by_constructor = by_dict = True

    if rule == "prompt too long":
        kw["prompt"], field = draw(too_long), "prompt"
    elif rule == "prompt blank":
        kw["prompt"], field = draw(blank), "prompt"
    elif rule == "prompt not a string":
        kw["prompt"], field = draw(not_a_string), "prompt"
    elif rule == "bad duration":
        kw["duration"], field = draw(bad_duration), "duration"
    elif rule == "bad url":
        field = draw(st.sampled_from(url_fields(cls)))
        kw[field] = draw(st.one_of(not_a_url, st.integers()))
    elif rule == "bad aspect ratio":
        choices = ("auto", *KLING3_RATIOS) if cls is not Kling3Request else KLING3_RATIOS
        kw["aspect_ratio"] = draw(
            st.one_of(st.text(max_size=6), st.sampled_from(["16:10", "AUTO", " 1:1", "1:1 ", "4:3"])).filter(
                lambda text: text not in choices
            )
        )
        field = "aspect_ratio"
    elif rule == "auto without image":
        if cls is Kling3Request:
            kw["aspect_ratio"] = "auto"  # not a Kling 3 ratio at all
        else:
            for name in ("image_url", "start_image_url"):
                kw.pop(name, None)
            kw["aspect_ratio"] = "auto"
        field = "aspect_ratio"
    elif rule == "unknown field":
        field = draw(st.sampled_from(["promt", "model", "seed", "durations", "negative-prompt", "id"]))
        if cls is OmniRequest and field == "negative-prompt":
            field = "cfg_scale"  # a Kling 3 field that the Omni body does not have
        kw[field] = "x"
        by_constructor = False  # a Python TypeError by design: the signature has no such keyword
    elif rule == "too many shots":
        count = draw(st.integers(7, 10))
        kw["multi_prompt"] = (
            ["a shot"] * count
            if cls is OmniRequest
            else [Shot(prompt="a shot", duration="3") for _ in range(count)]
        )
        field = "multi_prompt"
    elif rule == "no shots":
        kw["multi_prompt"], field = [], "multi_prompt"
    elif rule == "neither prompt":
        kw.pop("prompt", None)
        kw.pop("multi_prompt", None)
        field = "prompt + multi_prompt"
    elif rule == "both with image":
        kw[draw(st.sampled_from(["image_url", "start_image_url"]))] = draw(urls)
        kw["prompt"] = draw(prompts)
        kw["multi_prompt"] = [draw(prompts)]
        field = "prompt + multi_prompt"
    elif rule == "bad shot type":
        shot_types: tuple[str, ...] = ("customize",) if cls is OmniRequest else ("customize", "intelligent")
        kw["shot_type"] = draw(
            st.one_of(st.text(max_size=12), st.sampled_from(["Customize", "intelligent", "auto"])).filter(
                lambda text: text not in shot_types
            )
        )
        field = "shot_type"
    elif rule == "too many voices":
        kw["voice_ids"], field = draw(st.lists(voice_ids, min_size=3, max_size=6)), "voice_ids"
    elif rule == "blank voice":
        index = draw(st.integers(0, 1))
        voices: list[Any] = [draw(voice_ids), draw(voice_ids)]
        voices[index] = draw(st.one_of(blank, st.integers()))
        kw["voice_ids"], field = voices[: index + 1], f"voice_ids[{index}]"
    elif rule == "too many references":
        image_count = draw(st.integers(0, 5))
        kw["image_urls"] = [draw(urls) for _ in range(image_count)]
        element_count = draw(st.integers(max(0, 5 - image_count), 5))
        kw["elements"] = [draw(elements()) for _ in range(element_count)]
        field = "image_urls + elements"
    elif rule == "audio not bool":
        kw["generate_audio"] = draw(st.one_of(st.integers(), st.sampled_from(["true", "false", "yes"])))
        field = "generate_audio"
    elif rule == "element not an Element":
        kw["elements"] = [{"frontal_image_url": draw(urls)}]
        field = "elements[0]"
        by_dict = False  # as plain data this is a valid element
    elif rule == "shot too long":
        shots = list(kw.get("multi_prompt") or ["a shot"])
        index = draw(st.integers(0, len(shots) - 1))
        shots[index] = draw(st.one_of(too_long, blank, not_a_string))
        kw["multi_prompt"], field = shots, f"multi_prompt[{index}]"
        if has_image(cls, kw):
            kw.pop("prompt", None)
    elif rule == "bad reference url":
        images = [draw(urls) for _ in range(draw(st.integers(1, 2)))]
        index = draw(st.integers(0, len(images) - 1))
        images[index] = draw(not_a_url)
        kw["image_urls"], kw["elements"], field = images, None, f"image_urls[{index}]"
    elif rule == "shots over 15 s":
        seconds = draw(st.lists(st.integers(3, 15), min_size=2, max_size=6).filter(lambda xs: sum(xs) > 15))
        kw["multi_prompt"] = [Shot(prompt="a shot", duration=cast(Duration, str(s))) for s in seconds]
        field = "multi_prompt"
        if has_image(cls, kw):
            kw.pop("prompt", None)
    elif rule == "bad shot duration":
        # Only through plain data: Shot(...) itself refuses first, naming "duration".
        kw["multi_prompt"] = [{"prompt": "a shot", "duration": draw(bad_duration)}]
        field = "multi_prompt[0].duration"
        by_constructor = False
        if has_image(cls, kw):
            kw.pop("prompt", None)
    elif rule == "bad cfg_scale":
        kw["cfg_scale"], field = draw(bad_cfg), "cfg_scale"
    elif rule == "negative prompt too long":
        kw["negative_prompt"], field = draw(too_long), "negative_prompt"
    else:
        assert rule == "no video_url"
        del kw["video_url"]
        field = "video_url"
        by_constructor = False  # a required keyword: Python's TypeError
    return Broken(cls, kw, field, rule, by_constructor, by_dict)


def plain(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The fields as a JSONL line would hold them (nested structs as dicts, unset fields absent)."""
    data = {name: value for name, value in kwargs.items() if value is not None}
    converted: dict[str, Any] = msgspec.to_builtins(data)
    return converted


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(broken_requests())
def test_every_invalid_request_raises_invalid_request_error_naming_the_field(case: Broken) -> None:
    """Only InvalidRequestError, whatever the rule; ``.field`` names the broken field."""
    if case.by_constructor:
        with pytest.raises(InvalidRequestError) as caught:
            case.cls(**case.kwargs)
        assert caught.value.field == case.field, (case.rule, str(caught.value))
        assert str(caught.value).startswith(case.field)
    if case.by_dict:
        with pytest.raises(InvalidRequestError) as from_dict:
            request_from_dict(plain(case.kwargs), case.cls)
        assert from_dict.value.field == case.field, (case.rule, str(from_dict.value))


@QUICK
@given(st.sampled_from(ALL_TYPES), st.data())
def test_cfg_scale_as_text_or_list_in_plain_data_names_cfg_scale(
    cls: RequestType, data: st.DataObject
) -> None:
    if cls is OmniRequest:
        cls = Kling3Request
    kw = plain(data.draw(KWARGS[cls]()))
    kw["cfg_scale"] = data.draw(bad_cfg_for_dict)
    with pytest.raises(InvalidRequestError) as caught:
        request_from_dict(kw, cls)
    assert caught.value.field == "cfg_scale"


# -- 3. request_from_dict on arbitrary JSON-like data ------------------------------------------------------

FIELD_NAMES = sorted({f.name for cls in (*ALL_TYPES, Element, Shot) for f in msgspec.structs.fields(cls)})
# Random keys hold neither a backtick nor a lone surrogate: those bugs have their own pinned tests below.
keys = st.one_of(
    st.sampled_from(FIELD_NAMES),
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="`"), max_size=10),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(),  # NaN and infinities too: a Python dict can hold them
    st.text(max_size=20),
    durations,
    st.sampled_from(["https://cdn.example.com/a.png", "http://x.io/v.mp4", "https://h"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(keys, children, max_size=5),
    ),
    max_leaves=25,
)
# Objects whose keys are mostly real field names, so the search reaches the validation code.
request_like = st.dictionaries(keys, json_values, max_size=8)


@settings(max_examples=100, deadline=None, database=None)
@given(st.sampled_from(ALL_TYPES), request_like, st.booleans())
def test_request_from_dict_gives_a_request_or_invalid_request_error(
    cls: RequestType, data: dict[str, Any], strict: bool
) -> None:
    """Never another exception; an error names a field; a request that comes out also encodes."""
    request = outcome(InvalidRequestError, request_from_dict, data, cls, strict=strict)
    if isinstance(request, InvalidRequestError):
        assert request.field is not None, str(request)
        assert str(request)
    else:
        assert isinstance(request, cls)
        encoded = encode_request(request)
        assert msgspec.json.decode(encoded, type=cls) == request


@QUICK
@given(st.sampled_from(ALL_TYPES), json_values)
def test_request_from_dict_on_values_that_are_not_objects(cls: RequestType, data: Any) -> None:
    if isinstance(data, dict):
        data = {"x": data}
    with pytest.raises(InvalidRequestError):
        request_from_dict(data, cls)


@QUICK
@given(st.sampled_from(ALL_TYPES), st.text(max_size=8))
@example(OmniRequest, "")
def test_an_unknown_field_is_named_whatever_its_name(cls: RequestType, junk: str) -> None:
    name = f"x`{junk}"
    data = {**plain(BASE_FIELDS[cls]), name: 1}
    with pytest.raises(InvalidRequestError) as caught:
        request_from_dict(data, cls)
    assert caught.value.field == name


@pytest.mark.parametrize("field", ["prompt", "multi_prompt", "voice_ids", "webhook_url"])
def test_text_that_cannot_be_sent_as_utf8_is_refused_or_encoded(field: str) -> None:
    """Validation is the promise that encoding works: either refuse the text, or encode it."""
    text = "a\udfffb"  # a lone surrogate: a Python str, but not Unicode text that UTF-8 can carry
    value: Any = {
        "prompt": text,
        "multi_prompt": [text],
        "voice_ids": [text],
        "webhook_url": f"https://hooks.example.com/{text}",
    }[field]
    request = outcome(InvalidRequestError, OmniRequest, **{"prompt": "a fox", field: value})
    if isinstance(request, InvalidRequestError):
        assert request.field is not None
    else:
        encode_request(request)


@pytest.mark.parametrize("field", ["duration", "aspect_ratio", "shot_type", "image_url"])
def test_an_invalid_value_with_a_lone_surrogate_is_refused_naming_its_field(field: str) -> None:
    fields: dict[str, Any] = {"prompt": "a fox", field: "\ud800"}
    with pytest.raises(InvalidRequestError) as caught:
        OmniRequest(**fields)
    assert caught.value.field == field


@pytest.mark.parametrize(
    "data",
    [
        {"prompt": "a fox", "\ud800": 1},
        {"prompt": "a \ud800 fox"},
        {"prompt": "a fox", "voice_ids": ["\udc00"]},
    ],
    ids=["key", "prompt", "voice"],
)
def test_request_from_dict_with_a_lone_surrogate_refuses_it(data: dict[str, Any]) -> None:
    request = outcome(InvalidRequestError, request_from_dict, data, OmniRequest)
    if isinstance(request, InvalidRequestError):
        assert request.field is not None
    else:
        encode_request(request)


# -- 4. hostile server bodies -----------------------------------------------------------------------------


def as_json(value: Any) -> bytes:
    """Stdlib JSON: unlike msgspec it also writes huge ints and NaN (as the non-JSON token ``NaN``)."""
    return json.dumps(value).encode()


task_like = st.fixed_dictionaries(
    {},
    optional={
        "task_id": json_values,
        "status": st.one_of(st.sampled_from(["CREATED", "IN_PROGRESS", "COMPLETED", "FAILED"]), json_values),
        "generated": st.one_of(st.lists(urls, max_size=3), json_values),
        "extra": json_values,
    },
)
response_bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(as_json),
    task_like.map(as_json),
    task_like.map(lambda task: as_json({"data": task})),
    st.lists(task_like, max_size=4).map(lambda tasks: as_json({"data": tasks})),
    json_values.map(lambda value: as_json({"data": value})),
    st.text(max_size=100).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.sampled_from(
        [
            b"",
            b"<html><body>502 Bad Gateway</body></html>",
            b'{"data": {"task_id": "a", "status": "CREATED"',
            b'{"data": {"task_id": "a", "status": "CREATED", "generated": []}}trailing',
            b"\xff\xfe{}",
            b'\xef\xbb\xbf{"data": {"task_id": "a", "status": "CREATED"}}',
            b'{"data": {"task_id": "\\ud800", "status": "CREATED"}}',
            b"[" * 5000 + b"]" * 5000,  # refused at the first level: a task is an object
            b'{"data": ' * 500 + b"1" + b"}" * 500,  # deep, but under msgspec's limit (see below)
            b'{"data": {"task_id": "a", "status": "CREATED", "generated": [null]}}',
            b'{"data": {"task_id": "a", "status": "CREATED", "generated": "https://x"}}',
        ]
    ),
)


def check_task(task: object) -> None:
    assert isinstance(task, TaskStatus)
    assert isinstance(task.task_id, str)
    assert isinstance(task.status, str)
    assert isinstance(task.generated, tuple)
    assert all(isinstance(url, str) for url in task.generated)


@settings(max_examples=100, deadline=None, database=None)
@given(response_bodies)
def test_decoding_any_body_as_a_task_gives_a_task_or_transport_error(body: bytes) -> None:
    for decode in (decode_task, decode_webhook):
        task = outcome(TransportError, decode, body)
        if isinstance(task, TransportError):
            assert "unexpected response body" in str(task)
        else:
            check_task(task)


@settings(max_examples=80, deadline=None, database=None)
@given(response_bodies)
def test_decoding_any_body_as_a_task_list_gives_a_list_or_transport_error(body: bytes) -> None:
    tasks = outcome(TransportError, decode_task_list, body)
    if isinstance(tasks, TransportError):
        return
    assert isinstance(tasks, list)
    for task in tasks:
        assert isinstance(task, TaskSummary)
        assert isinstance(task.task_id, str)
        assert isinstance(task.status, str)


error_bodies = st.one_of(
    response_bodies,
    st.fixed_dictionaries(
        {},
        optional={
            "message": json_values,
            "invalid_params": st.one_of(
                json_values,
                st.lists(st.fixed_dictionaries({}, optional={"name": json_values, "reason": json_values})),
            ),
            "problem": json_values,
        },
    ).map(as_json),
)


@settings(max_examples=100, deadline=None, database=None)
@given(st.integers(100, 599), error_bodies, maybe(st.floats(0, 1e6)))
def test_api_error_turns_any_status_and_body_into_a_typed_api_error(
    status: int, body: bytes, retry_after: float | None
) -> None:
    error = api_error(status, body, task_id="t-1", retry_after=retry_after)
    assert isinstance(error, APIError)
    assert error.status == status
    assert isinstance(error.message, str)
    assert error.message
    assert str(error).startswith(f"HTTP {status}: ")
    expected: type[APIError] = {
        400: BadRequestError,
        401: AuthenticationError,
        403: AuthenticationError,
        404: NotFoundError,
        429: RateLimitError,
    }.get(status, ServerError if status >= 500 else APIError)
    assert type(error) is expected
    if isinstance(error, RateLimitError):
        assert error.retry_after == retry_after


# Bytes that are not UTF-8, as a Latin-1 proxy page or a broken server writes them inside a JSON string.
NOT_UTF8 = [b"\xff", b"\x80", b"\xc3", b"\xe9t\xe9", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]


@st.composite
def bodies_with_bytes_that_are_not_utf8(draw: st.DrawFn) -> bytes:
    """A well-formed answer (task, task list, webhook, error) with one string's bytes not UTF-8."""
    bad = draw(st.sampled_from(NOT_UTF8))
    where = draw(st.sampled_from(["task_id", "status", "generated", "message", "name"]))
    text = b'"' + draw(st.text("abc", max_size=3)).encode() + bad + b'"'
    task = {
        b"task_id": b'"t-1"',
        b"status": b'"CREATED"',
        b"generated": b"[]",
    }
    if where in ("task_id", "status"):
        task[where.encode()] = text
    elif where == "generated":
        task[b"generated"] = b"[" + text + b"]"
    obj = b"{" + b", ".join(b'"' + k + b'": ' + v for k, v in task.items()) + b"}"
    shape = draw(st.sampled_from(["task", "list", "webhook", "error"]))
    if where in ("message", "name") or shape == "error":
        inner = b'[{"name": ' + text + b', "reason": "r"}]' if where == "name" else b"[]"
        message = text if where != "name" else b'"m"'
        return b'{"message": ' + message + b', "invalid_params": ' + inner + b"}"
    if shape == "list":
        return b'{"data": [' + obj + b"]}"
    if shape == "webhook":
        return obj
    return b'{"data": ' + obj + b"}"


@QUICK
@given(bodies_with_bytes_that_are_not_utf8())
@example(b'{"data": {"task_id": "\xff", "status": "CREATED", "generated": []}}')
def test_decoding_a_body_with_bytes_that_are_not_utf8_gives_transport_error(body: bytes) -> None:
    for decode in (decode_task, decode_task_list, decode_webhook):
        outcome(TransportError, decode, body)


@QUICK
@given(st.integers(400, 599), bodies_with_bytes_that_are_not_utf8())
@example(500, b'{"message": "Interner Fehler: ung\xfcltig"}')
def test_api_error_of_a_body_with_bytes_that_are_not_utf8_is_typed(status: int, body: bytes) -> None:
    error = api_error(status, body)
    assert isinstance(error, APIError)
    assert error.message


def nested(depth: int) -> bytes:
    """A well-formed task whose unknown field nests ``depth`` arrays deep (a few KB on the wire)."""
    return b'{"data": {"task_id": "t-1", "status": "CREATED", "x": ' + b"[" * depth + b"]" * depth + b"}}"


@pytest.mark.parametrize("depth", [100, 900])
def test_deep_but_reasonable_nesting_decodes(depth: int) -> None:
    assert decode_task(nested(depth)).task_id == "t-1"


DEEP = 1000  # msgspec enters Python's recursion guard per level; the default limit is 1000


@pytest.mark.parametrize("decoder", ["decode_task", "decode_task_list", "decode_webhook", "api_error"])
def test_deeply_nested_answers_give_typed_errors(decoder: str) -> None:
    body = nested(DEEP)
    if decoder == "api_error":
        error = api_error(500, body.replace(b'"data"', b'"message": "m", "problem"', 1))
        assert isinstance(error, ServerError)
        return
    task = body[9:-1]  # the task object, without the {"data": ...} envelope
    shaped = {
        "decode_task": (decode_task, body),
        "decode_task_list": (decode_task_list, b'{"data": [' + task + b"]}"),
        "decode_webhook": (decode_webhook, task),
    }
    decode, answer = shaped[decoder]
    outcome(TransportError, decode, answer)


# -- 5. Retry-After ---------------------------------------------------------------------------------------


def check_delay(value: str) -> None:
    seconds = parse_retry_after(value, now=1_700_000_000.0)
    if seconds is not None:
        assert isinstance(seconds, float)
        assert math.isfinite(seconds)
        assert seconds >= 0


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.one_of(
        st.text(),
        st.floats().map(repr),
        st.integers().map(str),
        st.text(alphabet="0123456789.eE+-_ \t", max_size=20),
    )
)
def test_retry_after_of_any_text_is_none_or_a_finite_delay(value: str) -> None:
    check_delay(value)


WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun", "Xyz", ""]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec", "Foo"]
ZONES = ["GMT", "UTC", "+0000", "-0800", "+2359", "-2400", "+9999", "EST", "", "Z"]


def http_dates(years: st.SearchStrategy[int]) -> st.SearchStrategy[str]:
    return st.builds(
        "{}, {:02d} {} {} {:02d}:{:02d}:{:02d} {}".format,
        st.sampled_from(WEEKDAYS),
        st.integers(0, 99),
        st.sampled_from(MONTHS),
        years,
        st.integers(0, 99),
        st.integers(0, 99),
        st.integers(0, 99),
        st.sampled_from(ZONES),
    )


@settings(max_examples=200, deadline=None, database=None)
@given(http_dates(st.integers(0, 9999)))
def test_retry_after_of_any_http_date_with_a_four_digit_year_is_none_or_a_finite_delay(value: str) -> None:
    check_delay(value)


OVERFLOWING_DATE = "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"


@QUICK
@given(http_dates(st.integers(0, 10**30)))
@example(OVERFLOWING_DATE)
def test_retry_after_of_any_http_date_is_none_or_a_finite_delay(value: str) -> None:
    check_delay(value)


def test_retry_after_parses_the_documented_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    for junk in ("", "nan", "inf", "-inf", "1e400", "soon", "Wed, 21 Oct 2015 07:28:00"):
        assert parse_retry_after(junk) is None


_NAME = re.compile(r"[a-z_]+")


def test_field_names_used_by_the_search_are_the_structs_fields() -> None:
    """Guards the strategies: if a field is renamed, the search must follow."""
    assert all(_NAME.fullmatch(name) for name in FIELD_NAMES)
    assert {"prompt", "multi_prompt", "cfg_scale", "video_url", "voice_ids"} <= set(FIELD_NAMES)
