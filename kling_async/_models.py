"""Request and response structs, their validation, and the JSON encoder and decoders built once.

Requests validate in ``__post_init__``, so a broken limit raises ``InvalidRequestError`` when a struct is
built by hand, and (wrapped by msgspec) when one is decoded; ``request_from_dict`` unwraps it again.
Every optional field defaults to None and is then not sent, so the server applies its own default.
Responses decode leniently: unknown fields are ignored and an unknown status stays a plain string.
"""

# No `from __future__ import annotations`: kling_async/__init__ renames the structs' module, and msgspec
# would then look the type aliases up there, where they are not exported.
import json
import re
from collections.abc import Mapping, Sequence
from types import UnionType
from typing import Any, Final, Literal, TypeAlias, TypeVar, Union, cast, get_args, get_origin, get_type_hints

import msgspec

from ._errors import InvalidRequestError, TransportError

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "CREATED",
    "FAILED",
    "FAILURE_STATUSES",
    "IN_PROGRESS",
    "TERMINAL_STATUSES",
    "Element",
    "Kling3Request",
    "OmniRequest",
    "Request",
    "Shot",
    "TaskResult",
    "TaskStatus",
    "TaskSummary",
    "VideoReferenceRequest",
    "decode_created",
    "decode_task",
    "decode_task_list",
    "decode_webhook",
    "encode_request",
    "request_from_dict",
    "with_webhook",
]

CREATED: Final = "CREATED"
IN_PROGRESS: Final = "IN_PROGRESS"
COMPLETED: Final = "COMPLETED"
FAILED: Final = "FAILED"
CANCELLED: Final = "CANCELLED"
TERMINAL_STATUSES: Final = frozenset({COMPLETED, FAILED, CANCELLED})
FAILURE_STATUSES: Final = frozenset({FAILED, CANCELLED})

# The vendor's enums as types, so that mypy and an IDE catch a typo; msgspec checks them when decoding and
# __post_init__ checks them when a struct is built by hand (the messages are ours either way).
Duration: TypeAlias = Literal["3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15"]
"""A video's or a shot's length in seconds: a string, as the API takes it."""
OmniAspectRatio: TypeAlias = Literal["auto", "16:9", "9:16", "1:1"]
"""The aspect ratios of ``OmniRequest`` and ``VideoReferenceRequest`` (``"auto"``: the input's)."""
Kling3AspectRatio: TypeAlias = Literal["16:9", "9:16", "1:1"]
"""The aspect ratios of ``Kling3Request``."""
AspectRatio: TypeAlias = OmniAspectRatio | Kling3AspectRatio
"""Any request's aspect ratio."""
OmniShotType: TypeAlias = Literal["customize"]
"""The shot types of ``OmniRequest``."""
Kling3ShotType: TypeAlias = Literal["customize", "intelligent"]
"""The shot types of ``Kling3Request``."""
ShotType: TypeAlias = OmniShotType | Kling3ShotType
"""Any request's shot type."""

_MAX_TEXT = 2500
_MAX_SHOTS = 6
_MAX_TOTAL_SECONDS = 15
_MAX_REFERENCES = 4
_MAX_VOICES = 2
_DURATIONS: tuple[str, ...] = get_args(Duration)
_DURATION_RULE = 'must be a string "3".."15"'
_OMNI_ASPECT_RATIOS: tuple[str, ...] = get_args(OmniAspectRatio)
_KLING3_ASPECT_RATIOS: tuple[str, ...] = get_args(Kling3AspectRatio)
_OMNI_SHOT_TYPES: tuple[str, ...] = get_args(OmniShotType)
_KLING3_SHOT_TYPES: tuple[str, ...] = get_args(Kling3ShotType)
_OMNI_IMAGE_FIELDS = "an image_url or start_image_url"
# A scheme, a non-empty host, and no whitespace anywhere (a stray space from a CSV cell is a typo, not a URL).
_URL = re.compile(r"https?://[^\s/?#]+\S*", re.IGNORECASE)
# What the vendor's `format: uri` fields (webhook_url, video_url) allow: RFC 3986's characters only.
_URI_CHARACTERS = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
_MSGSPEC_FIELD = re.compile(
    r"Object (?P<kind>contains unknown|missing required) field `(?P<name>.*)`", re.DOTALL
)


def _got(value: object) -> str:
    """The offending value, short, with its type when it is not a string."""
    if isinstance(value, str):
        text = json.dumps(value)  # escapes what msgspec cannot encode (lone surrogates)
        return text if len(text) <= 60 else text[:56] + '..."'
    if value is None:
        return "None"
    name = type(value).__name__
    return f"{value!r:.60}, {'an' if name[0] in 'aeiouAEIOU' else 'a'} {name}"


def _reject(field: str, rule: str, value: object) -> InvalidRequestError:
    return InvalidRequestError.for_field(field, f"{rule} (got {_got(value)})")


def _one_of(choices: tuple[str, ...]) -> str:
    quoted = ", ".join(f'"{choice}"' for choice in choices)
    return f"must be {quoted}" if len(choices) == 1 else f"must be one of {quoted}"


def _sendable(value: str) -> bool:
    """Whether a string can be sent as UTF-8 JSON (a lone surrogate, e.g. from a JSON escape, cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(field: str, value: object, *, blank_ok: bool = False) -> None:
    """A string of at most 2500 characters; unless ``blank_ok``, with something besides whitespace."""
    if not isinstance(value, str):
        raise _reject(field, "must be a string", value)
    if not _sendable(value):
        raise _reject(field, "must be valid Unicode text (it holds a lone surrogate)", value)
    if len(value) > _MAX_TEXT:
        raise InvalidRequestError.for_field(field, f"at most {_MAX_TEXT} characters (got {len(value)})")
    if not blank_ok and not value.strip():
        raise _reject(field, "must not be empty or blank", value)


def _check_url(field: str, value: object) -> None:
    if not isinstance(value, str) or not _URL.fullmatch(value) or not _sendable(value):
        raise _reject(field, "must be an http:// or https:// URL", value)


def _check_uri(field: str, value: object) -> None:
    """An http(s) URL the vendor's ``format: uri`` takes: non-ASCII, spaces, braces, ``%`` not followed by
    two hex digits and the like percent-encoded (the API refuses them with a 400)."""
    _check_url(field, value)
    if not _URI_CHARACTERS.fullmatch(cast(str, value)):
        raise _reject(field, "must be a URI: percent-encode non-ASCII and reserved characters", value)


def _check_list(field: str, value: object) -> Sequence[Any]:
    if not isinstance(value, list | tuple):
        raise _reject(field, "must be a list", value)
    return value


def _freeze(struct: msgspec.Struct, *names: str) -> None:
    """Keep a request's lists as tuples: checked once, they must stay as checked (a list appended to after
    the check would send what the API refuses, or what the caller never saw checked)."""
    for name in names:
        value = getattr(struct, name)
        if isinstance(value, list):
            msgspec.structs.force_setattr(struct, name, tuple(value))


def _check_at_most(field: str, count: int, most: int, noun: str) -> None:
    if count > most:
        raise InvalidRequestError.for_field(field, f"at most {most} {noun} (got {count})")


def _check_url_list(field: str, value: object) -> None:
    for index, item in enumerate(_check_list(field, value)):
        _check_url(f"{field}[{index}]", item)


def _check_shot_count(shots: object) -> Sequence[Any]:
    items = _check_list("multi_prompt", shots)
    _check_at_most("multi_prompt", len(items), _MAX_SHOTS, "shots")
    if not items:
        raise InvalidRequestError.for_field("multi_prompt", "at least 1 shot when given (got an empty list)")
    return items


def _check_elements(elements: object) -> Sequence[Any]:
    items = _check_list("elements", elements)
    for index, item in enumerate(items):
        if not isinstance(item, Element):
            raise _reject(f"elements[{index}]", "must be an Element", item)
    return items


def _check_voices(voice_ids: object) -> None:
    items = _check_list("voice_ids", voice_ids)
    _check_at_most("voice_ids", len(items), _MAX_VOICES, "voices")
    for index, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise _reject(f"voice_ids[{index}]", "must be a non-empty string", item)
        if not _sendable(item):
            raise _reject(
                f"voice_ids[{index}]", "must be valid Unicode text (it holds a lone surrogate)", item
            )


def _check_choice(field: str, value: object, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise _reject(field, _one_of(choices), value)


def _check_duration(field: str, value: object) -> None:
    if not isinstance(value, str) or value not in _DURATIONS:
        raise _reject(field, _DURATION_RULE, value)


def _choice_rule(choices: tuple[str, ...]) -> str:
    """The rule of a Literal field: the duration's range, or the list of its values."""
    return _DURATION_RULE if choices == _DURATIONS else _one_of(choices)


def _check_bool(field: str, value: object) -> None:
    if not isinstance(value, bool):
        raise _reject(field, "must be true or false", value)


def _check_cfg_scale(value: object) -> None:
    # bool is an int subclass, and NaN fails every comparison, so both land in the error.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 2:
        raise _reject("cfg_scale", "must be a number from 0 to 2", value)


def _check_prompt_or_shots(prompt: str | None, multi_prompt: Sequence[Any] | None) -> None:
    if prompt is None and multi_prompt is None:
        raise InvalidRequestError.for_field("prompt + multi_prompt", "one of them is required")


# Everything sent forbids unknown fields: a typo in a JSONL line must fail, not vanish.
class Element(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A character or object kept consistent across the video, cited in the prompt as ``@Element1``...

    At least one image is required.

    Attributes:
        reference_image_urls: images of the element from any angle (http(s) URLs).
        frontal_image_url: a frontal image of the element (http(s) URL).

    Raises:
        InvalidRequestError: a field breaks a documented limit.
    """

    reference_image_urls: Sequence[str] | None = None
    frontal_image_url: str | None = None

    def __post_init__(self) -> None:
        _freeze(self, "reference_image_urls")
        if self.reference_image_urls is not None:
            _check_url_list("reference_image_urls", self.reference_image_urls)
        if self.frontal_image_url is not None:
            _check_url("frontal_image_url", self.frontal_image_url)
        elif not self.reference_image_urls:
            raise InvalidRequestError.for_field(
                "frontal_image_url",
                "at least one image is required (frontal_image_url or reference_image_urls)",
            )


class Shot(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One shot of a Kling 3 (non-omni) multi-shot video.

    Attributes:
        prompt: what happens in the shot, at most 2500 characters.
        duration: the shot's length in seconds, a string ``"3"``..``"15"``; all shots together at most 15 s.

    Raises:
        InvalidRequestError: a field breaks a documented limit.
    """

    prompt: str
    duration: Duration

    def __post_init__(self) -> None:
        _check_text("prompt", self.prompt)
        _check_duration("duration", self.duration)


class OmniRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A Kling 3 Omni video (models ``kling-v3-omni-std``, the default, and ``kling-v3-omni-pro``).

    Text-to-video needs ``prompt`` or ``multi_prompt``; image-to-video (``image_url`` or ``start_image_url``)
    needs exactly one of them. Fields left unset are not sent; the server applies its defaults.

    Attributes:
        webhook_url: where the API POSTs the task on each status change (http(s) URL).
        prompt: the video's description, at most 2500 characters; cite ``@Image1``, ``@Element1``,
            ``<<<voice_1>>>``.
        multi_prompt: one prompt per shot, at most 6, each at most 2500 characters.
        shot_type: ``"customize"`` (the only value, and the default).
        image_url: start frame for image-to-video (JPG/PNG, at least 300x300, at most 10 MB).
        start_image_url: first frame of the video.
        end_image_url: last frame of the video.
        image_urls: reference images for style or appearance; with ``elements``, at most 4 in total.
        elements: characters or objects kept consistent (``Element``); at most 4 with ``image_urls``.
        generate_audio: whether to generate native audio.
        voice_ids: at most 2 voice ids.
        aspect_ratio: ``"16:9"`` (default), ``"9:16"``, ``"1:1"``, or ``"auto"`` (image-to-video only).
        duration: seconds, a string ``"3"``..``"15"`` (default ``"5"``).

    Raises:
        InvalidRequestError: a field breaks a documented limit.
    """

    webhook_url: str | None = None
    prompt: str | None = None
    multi_prompt: Sequence[str] | None = None
    shot_type: OmniShotType | None = None
    image_url: str | None = None
    start_image_url: str | None = None
    end_image_url: str | None = None
    image_urls: Sequence[str] | None = None
    elements: Sequence[Element] | None = None
    generate_audio: bool | None = None
    voice_ids: Sequence[str] | None = None
    aspect_ratio: OmniAspectRatio | None = None
    duration: Duration | None = None

    def __post_init__(self) -> None:
        _freeze(self, "multi_prompt", "image_urls", "elements", "voice_ids")
        if self.webhook_url is not None:
            _check_uri("webhook_url", self.webhook_url)
        if self.prompt is not None:
            _check_text("prompt", self.prompt)
        if self.multi_prompt is not None:
            for index, shot in enumerate(_check_shot_count(self.multi_prompt)):
                _check_text(f"multi_prompt[{index}]", shot)
        if self.shot_type is not None:
            _check_choice("shot_type", self.shot_type, _OMNI_SHOT_TYPES)
        if self.image_url is not None:
            _check_url("image_url", self.image_url)
        if self.start_image_url is not None:
            _check_url("start_image_url", self.start_image_url)
        if self.end_image_url is not None:
            _check_url("end_image_url", self.end_image_url)
        references = 0
        if self.image_urls is not None:
            _check_url_list("image_urls", self.image_urls)
            references += len(self.image_urls)
        if self.elements is not None:
            references += len(_check_elements(self.elements))
        _check_at_most("image_urls + elements", references, _MAX_REFERENCES, "references in total")
        if self.generate_audio is not None:
            _check_bool("generate_audio", self.generate_audio)
        if self.voice_ids is not None:
            _check_voices(self.voice_ids)
        has_image = self.image_url is not None or self.start_image_url is not None
        if self.aspect_ratio is not None:
            _check_choice("aspect_ratio", self.aspect_ratio, _OMNI_ASPECT_RATIOS)
            if self.aspect_ratio == "auto" and not has_image:
                raise InvalidRequestError.for_field(
                    "aspect_ratio", f'"auto" needs {_OMNI_IMAGE_FIELDS} (image-to-video only)'
                )
        if self.duration is not None:
            _check_duration("duration", self.duration)
        _check_prompt_or_shots(self.prompt, self.multi_prompt)
        if has_image and self.prompt is not None and self.multi_prompt is not None:
            raise InvalidRequestError.for_field(
                "prompt + multi_prompt", f"not both in image-to-video (with {_OMNI_IMAGE_FIELDS})"
            )


class Kling3Request(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """A Kling 3 (non-omni) video (models ``kling-v3-std`` and ``kling-v3-pro``).

    Needs ``prompt`` or ``multi_prompt`` (or both). Fields left unset are not sent; the server applies its
    defaults.

    Attributes:
        webhook_url: where the API POSTs the task on each status change (http(s) URL).
        prompt: the video's description, at most 2500 characters.
        multi_prompt: at most 6 shots (``Shot``), their durations at most 15 s in total (so 5 shots at most
            in practice: each lasts at least 3 s).
        start_image_url: first frame of the video (image-to-video).
        end_image_url: last frame of the video.
        elements: characters or objects kept consistent (``Element``).
        generate_audio: whether to generate native audio (server default: true).
        voice_ids: at most 2 voice ids.
        shot_type: ``"customize"`` or ``"intelligent"``.
        aspect_ratio: ``"16:9"``, ``"9:16"`` or ``"1:1"``.
        duration: seconds, a string ``"3"``..``"15"``.
        negative_prompt: what to avoid, at most 2500 characters.
        cfg_scale: how closely to follow the prompt, a number from 0 to 2 (server default: 0.5).

    Raises:
        InvalidRequestError: a field breaks a documented limit.
    """

    webhook_url: str | None = None
    prompt: str | None = None
    multi_prompt: Sequence[Shot] | None = None
    start_image_url: str | None = None
    end_image_url: str | None = None
    elements: Sequence[Element] | None = None
    generate_audio: bool | None = None
    voice_ids: Sequence[str] | None = None
    shot_type: Kling3ShotType | None = None
    aspect_ratio: Kling3AspectRatio | None = None
    duration: Duration | None = None
    negative_prompt: str | None = None
    cfg_scale: float | None = None

    def __post_init__(self) -> None:
        _freeze(self, "multi_prompt", "elements", "voice_ids")
        if self.webhook_url is not None:
            _check_uri("webhook_url", self.webhook_url)
        if self.prompt is not None:
            _check_text("prompt", self.prompt)
        if self.multi_prompt is not None:
            shots = _check_shot_count(self.multi_prompt)
            for index, shot in enumerate(shots):
                if not isinstance(shot, Shot):
                    raise _reject(f"multi_prompt[{index}]", "must be a Shot", shot)
            total = sum(int(shot.duration) for shot in shots)
            if total > _MAX_TOTAL_SECONDS:
                raise InvalidRequestError.for_field(
                    "multi_prompt", f"total duration at most {_MAX_TOTAL_SECONDS} s (got {total} s)"
                )
        if self.start_image_url is not None:
            _check_url("start_image_url", self.start_image_url)
        if self.end_image_url is not None:
            _check_url("end_image_url", self.end_image_url)
        if self.elements is not None:
            _check_elements(self.elements)
        if self.generate_audio is not None:
            _check_bool("generate_audio", self.generate_audio)
        if self.voice_ids is not None:
            _check_voices(self.voice_ids)
        if self.shot_type is not None:
            _check_choice("shot_type", self.shot_type, _KLING3_SHOT_TYPES)
        if self.aspect_ratio is not None:
            _check_choice("aspect_ratio", self.aspect_ratio, _KLING3_ASPECT_RATIOS)
        if self.duration is not None:
            _check_duration("duration", self.duration)
        if self.negative_prompt is not None:
            _check_text("negative_prompt", self.negative_prompt, blank_ok=True)
        if self.cfg_scale is not None:
            _check_cfg_scale(self.cfg_scale)
        # Unlike Omni's, the Kling 3 page does not forbid prompt + multi_prompt in image-to-video.
        _check_prompt_or_shots(self.prompt, self.multi_prompt)


class VideoReferenceRequest(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """A Kling 3 Omni video guided by a reference video (models ``kling-v3-omni-{std,pro}-reference``).

    Fields left unset are not sent; the server applies its defaults.

    Attributes:
        video_url: the reference video, required (mp4/mov, 3-10 s, 720-2160 px, at most 200 MB, 24-60 fps);
            cite it in the prompt as ``@Video1``.
        webhook_url: where the API POSTs the task on each status change (http(s) URL).
        prompt: the video's description, at most 2500 characters.
        image_url: a reference image.
        duration: seconds, a string ``"3"``..``"15"``.
        aspect_ratio: ``"16:9"``, ``"9:16"``, ``"1:1"``, or ``"auto"`` (matches the input).
        cfg_scale: how closely to follow the prompt, a number from 0 to 2 (server default: 0.5).
        negative_prompt: what to avoid, at most 2500 characters.

    Raises:
        InvalidRequestError: a field breaks a documented limit.
    """

    video_url: str
    webhook_url: str | None = None
    prompt: str | None = None
    image_url: str | None = None
    duration: Duration | None = None
    aspect_ratio: OmniAspectRatio | None = None
    cfg_scale: float | None = None
    negative_prompt: str | None = None

    def __post_init__(self) -> None:
        _check_uri("video_url", self.video_url)
        if self.webhook_url is not None:
            _check_uri("webhook_url", self.webhook_url)
        if self.prompt is not None:
            _check_text("prompt", self.prompt)
        if self.image_url is not None:
            _check_url("image_url", self.image_url)
        if self.duration is not None:
            _check_duration("duration", self.duration)
        if self.aspect_ratio is not None:
            # "auto" matches the input, and here the reference video is always one.
            _check_choice("aspect_ratio", self.aspect_ratio, _OMNI_ASPECT_RATIOS)
        if self.cfg_scale is not None:
            _check_cfg_scale(self.cfg_scale)
        if self.negative_prompt is not None:
            _check_text("negative_prompt", self.negative_prompt, blank_ok=True)


Request: TypeAlias = OmniRequest | Kling3Request | VideoReferenceRequest
_RequestT = TypeVar("_RequestT", bound=Request)

_encoder = msgspec.json.Encoder()


def encode_request(request: Request) -> bytes:
    """The JSON body of a create request; fields left unset are omitted."""
    return _encoder.encode(request)


def with_webhook(request: _RequestT, url: str) -> _RequestT:
    """A copy of ``request`` with ``webhook_url`` set (validated like any other field)."""
    return msgspec.structs.replace(request, webhook_url=url)


def request_from_dict(
    data: Mapping[str, Any], request_type: type[_RequestT], *, strict: bool = True
) -> _RequestT:
    """Build a request from plain data (a JSONL line, a CSV row), with the same validation as by hand.

    Args:
        data: the request's fields; nested ``elements`` and ``multi_prompt`` shots as plain dicts.
        request_type: ``OmniRequest``, ``Kling3Request`` or ``VideoReferenceRequest``.
        strict: False also accepts numbers and booleans written as strings (``"0.5"``, ``"true"``),
            which is what CSV cells hold. A duration stays a string either way.

    Raises:
        InvalidRequestError: an unknown or missing field, a wrong type, or a broken limit; ``field`` is the
            path to it (``multi_prompt[1].duration``).
    """
    try:
        return msgspec.convert(data, request_type, strict=strict)
    except msgspec.ValidationError as exc:
        raise _invalid_from(exc, data, request_type) from exc
    except UnicodeEncodeError as exc:  # a field name with a lone surrogate, from a JSON escape
        bad = next((key for key in data if isinstance(key, str) and not _sendable(key)), "?")
        raise InvalidRequestError.for_field(
            json.dumps(bad)[1:-1], "a field name must be valid Unicode text (it holds a lone surrogate)"
        ) from exc


# One step of a msgspec path: `.name` (or a leading `name`) or `[index]`.
_STEP = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")


def _without_none(hint: Any) -> Any:
    args = [arg for arg in get_args(hint) if arg is not type(None)]
    return args[0] if get_origin(hint) in (Union, UnionType) and len(args) == 1 else hint


def _literal_at(request_type: type[Any], data: object, path: str) -> tuple[tuple[str, ...], object] | None:
    """The values of the Literal field at ``path`` (``multi_prompt[0].duration``) and the value given there.

    None when the field is not a Literal (or the path leads nowhere known).
    """
    hint: Any = request_type
    value = data
    for name, index in _STEP.findall(path):
        hint = _without_none(hint)
        try:
            if name:
                hint, value = get_type_hints(hint)[name], value[name]  # type: ignore[index]
            else:
                hint, value = get_args(hint)[0], value[int(index)]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return None
    hint = _without_none(hint)
    return (get_args(hint), value) if get_origin(hint) is Literal else None


_EXPECTED = re.compile(r"Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`")
_TYPE_RULES = {
    "str": "must be a string",
    "float": "must be a number",
    "int | float": "must be a number",
    "bool": "must be true or false",
    "array": "must be a list",
    "object": "must be an object",
}
_JSON_TYPES = {
    "str": "a string",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "array": "a list",
    "object": "an object",
    "null": "null",
}


def _invalid_from(exc: msgspec.ValidationError, data: object, request_type: type[Any]) -> InvalidRequestError:
    """Our error for msgspec's, with the field's path (``$.elements[0]`` + ``frontal_image_url``)."""
    # msgspec's text is "<what> - at `$.path`", without the suffix when the error is at the top level
    what, at, path = str(exc).rpartition(" - at `$")
    if at:
        path = path.removesuffix("`").removeprefix(".")
    else:
        what, path = path, ""
    cause = exc.__cause__
    if isinstance(cause, InvalidRequestError) and cause.field is not None:
        # raised by a __post_init__: its field is relative to the struct at `path`
        field, rule = cause.field, cause.rule or str(cause)
    else:
        named = _MSGSPEC_FIELD.fullmatch(what)
        if named is not None:
            field = named["name"]
            rule = "unknown field" if named["kind"] == "contains unknown" else "required"
        elif (literal := _literal_at(request_type, data, path)) is not None:
            # msgspec checked a Literal ("Invalid enum value"): say it as __post_init__ would
            return _reject(path, _choice_rule(literal[0]), literal[1])
        elif path and (expected := _EXPECTED.fullmatch(what)) is not None:
            # msgspec's "Expected `float | null`, got `str`": null is never sent, and `float` is Python's
            wanted = _TYPE_RULES.get(expected["want"].removesuffix(" | null"), f"must be {expected['want']}")
            got = _JSON_TYPES.get(expected["got"], expected["got"])
            return InvalidRequestError.for_field(path, f"{wanted} (got {got})")
        elif path:
            return InvalidRequestError.for_field(path, what[:1].lower() + what[1:])
        else:
            return InvalidRequestError(what)
    return InvalidRequestError.for_field(f"{path}.{field}" if path else field, rule)


class TaskStatus(msgspec.Struct, frozen=True, gc=False):
    """A task's state as the API reports it; ``generated`` fills on COMPLETED; unknown statuses are kept."""

    # gc=False: only strings inside, so no cycles, and 10,000 live statuses stay out of the GC's way.
    task_id: str
    status: str
    generated: tuple[str, ...] = ()


class TaskSummary(msgspec.Struct, frozen=True, gc=False):
    """One item of a task list: the id and status, without result URLs."""

    task_id: str
    status: str


class TaskResult(msgspec.Struct, frozen=True, gc=False):
    """A finished task: its id, final status, the video URLs (signed, expiring) and the model that made it."""

    task_id: str
    status: str
    urls: tuple[str, ...]
    model: str | None = None

    @property
    def url(self) -> str | None:
        """The first video URL, or None when there is none."""
        return self.urls[0] if self.urls else None


class _TaskEnvelope(msgspec.Struct, gc=False):
    data: TaskStatus


class _TaskListEnvelope(msgspec.Struct):
    data: list[TaskSummary]


class _CreatedTask(msgspec.Struct, gc=False):
    """A create answer's task: the id is all it must carry (the vendor gives the answer no schema, and
    every client reads ``task_id`` alone); a task just made is CREATED, with nothing generated yet."""

    task_id: str
    status: str = CREATED
    generated: tuple[str, ...] | None = None


class _CreatedEnvelope(msgspec.Struct):
    data: _CreatedTask


_task_decoder = msgspec.json.Decoder(_TaskEnvelope)
_task_list_decoder = msgspec.json.Decoder(_TaskListEnvelope)
_webhook_decoder = msgspec.json.Decoder(TaskStatus)
_created_decoders = (msgspec.json.Decoder(_CreatedEnvelope), msgspec.json.Decoder(_CreatedTask))


# What a hostile body can make msgspec raise: bad JSON or shape, bytes that are not UTF-8 inside a
# string, nesting deeper than the interpreter's stack.
_BAD_BODY = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
_SNIPPET = 200


def _unexpected(exc: Exception) -> TransportError:
    # msgspec's message names the problem and its path, never the body itself
    reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
    return TransportError(f"unexpected response body: {reason}")


def decode_task(body: bytes) -> TaskStatus:
    """The task in a create or status answer, ``{"data": {...}}``.

    Raises:
        TransportError: the body is not JSON or not shaped like a task.
    """
    try:
        return _task_decoder.decode(body).data
    except _BAD_BODY as exc:
        raise _unexpected(exc) from exc


def decode_created(body: bytes) -> TaskStatus:
    """The task in a create answer: ``{"data": {task_id, ...}}`` or the bare task object.

    The vendor documents no schema for it; its pages show both forms. Only ``task_id`` is required: an
    answer that carries the id created that task, whatever else it lacks (``status`` then is CREATED, and a
    null ``generated`` is none).

    Raises:
        TransportError: the body is neither form; the message carries its first 200 characters.
    """
    for decoder in _created_decoders:
        try:
            decoded = decoder.decode(body)
        except _BAD_BODY as exc:
            failure = exc
            continue
        task = decoded.data if isinstance(decoded, _CreatedEnvelope) else decoded
        return TaskStatus(task.task_id, task.status, task.generated or ())
    # repr() keeps control characters and odd bytes from reaching a terminal or a log as they are
    snippet = repr(body[:_SNIPPET].decode("utf-8", "replace"))[:_SNIPPET]
    raise TransportError(f"unexpected create response body: {snippet}") from failure


def decode_task_list(body: bytes) -> list[TaskSummary]:
    """The tasks in a list answer, ``{"data": [...]}``.

    Raises:
        TransportError: the body is not JSON or not shaped like a task list.
    """
    try:
        return _task_list_decoder.decode(body).data
    except _BAD_BODY as exc:
        raise _unexpected(exc) from exc


def decode_webhook(body: bytes) -> TaskStatus:
    """The task in a webhook delivery (no ``data`` wrapper).

    Raises:
        TransportError: the body is not JSON or not shaped like a task.
    """
    try:
        return _webhook_decoder.decode(body)
    except _BAD_BODY as exc:
        raise _unexpected(exc) from exc
