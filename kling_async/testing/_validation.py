"""The server's own check of create bodies, written from the API doc's field tables, one schema per family.

This is deliberately independent of the client's models: when the two disagree, a test shows it.
Unknown fields are ignored and a JSON null counts as an absent field, as a lenient server would do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["InvalidParams", "validate"]

InvalidParams = list[dict[str, str]]

MAX_TEXT = 2500
DURATIONS = frozenset(str(seconds) for seconds in range(3, 16))
MAX_SHOTS = 6
MAX_SHOTS_SECONDS = 15
MAX_VOICES = 2
MAX_REFERENCES = 4
OMNI_ASPECTS = ("auto", "16:9", "9:16", "1:1")
KLING3_ASPECTS = ("16:9", "9:16", "1:1")


class _Checker:
    """Collects the `invalid_params` entries of one body."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body
        self.problems: InvalidParams = []

    def fail(self, name: str, reason: str) -> None:
        self.problems.append({"name": name, "reason": reason})

    def get(self, name: str) -> Any:
        return self.body.get(name)

    def text(self, name: str, value: Any, *, max_length: int | None = None) -> bool:
        if not isinstance(value, str):
            self.fail(name, "must be a string")
            return False
        if max_length is not None and len(value) > max_length:
            self.fail(name, f"must be at most {max_length} characters, got {len(value)}")
            return False
        return True

    def field_text(self, name: str, *, max_length: int | None = None) -> None:
        value = self.get(name)
        if value is not None:
            self.text(name, value, max_length=max_length)

    def url(self, name: str) -> None:
        value = self.get(name)
        if value is not None and self.text(name, value) and not value.startswith(("http://", "https://")):
            self.fail(name, "must be an http or https URL")

    def enum(self, name: str, options: tuple[str, ...]) -> None:
        value = self.get(name)
        if value is not None and value not in options:
            self.fail(name, f"must be one of {', '.join(options)}")

    def duration(self, name: str, value: Any) -> bool:
        if value not in DURATIONS:
            self.fail(name, 'must be a string from "3" to "15"')
            return False
        return True

    def boolean(self, name: str) -> None:
        value = self.get(name)
        if value is not None and not isinstance(value, bool):
            self.fail(name, "must be a boolean")

    def cfg_scale(self) -> None:
        value = self.get("cfg_scale")
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 2:
            self.fail("cfg_scale", "must be a number from 0 to 2")

    def array(self, name: str, *, max_items: int | None = None) -> list[Any]:
        value = self.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(name, "must be an array")
            return []
        if max_items is not None and len(value) > max_items:
            self.fail(name, f"must have at most {max_items} items, got {len(value)}")
        return value

    def strings(self, name: str, *, max_items: int | None = None, max_length: int | None = None) -> list[Any]:
        items = self.array(name, max_items=max_items)
        for index, item in enumerate(items):
            self.text(f"{name}[{index}]", item, max_length=max_length)
        return items

    def elements(self) -> list[Any]:
        items = self.array("elements")
        for index, item in enumerate(items):
            name = f"elements[{index}]"
            if not isinstance(item, dict):
                self.fail(name, "must be an object")
                continue
            references = item.get("reference_image_urls")
            if references is not None:
                if not isinstance(references, list):
                    self.fail(f"{name}.reference_image_urls", "must be an array")
                else:
                    for position, url in enumerate(references):
                        self.text(f"{name}.reference_image_urls[{position}]", url)
            frontal = item.get("frontal_image_url")
            if frontal is not None:
                self.text(f"{name}.frontal_image_url", frontal)
        return items


def _common(check: _Checker) -> None:
    """Fields every family shares."""
    check.url("webhook_url")
    check.field_text("prompt", max_length=MAX_TEXT)
    duration = check.get("duration")
    if duration is not None:
        check.duration("duration", duration)


def _omni(check: _Checker) -> None:
    _common(check)
    shots = check.strings("multi_prompt", max_items=MAX_SHOTS, max_length=MAX_TEXT)
    check.enum("shot_type", ("customize",))
    for name in ("image_url", "start_image_url", "end_image_url"):
        check.field_text(name)
    images = check.strings("image_urls")
    elements = check.elements()
    if len(images) + len(elements) > MAX_REFERENCES:
        check.fail("elements", f"image_urls and elements must be at most {MAX_REFERENCES} in total")
    check.boolean("generate_audio")
    check.strings("voice_ids", max_items=MAX_VOICES)
    check.enum("aspect_ratio", OMNI_ASPECTS)
    image_to_video = check.get("image_url") is not None or check.get("start_image_url") is not None
    if check.get("aspect_ratio") == "auto" and not image_to_video:
        check.fail("aspect_ratio", '"auto" needs an input image (image_url or start_image_url)')
    has_prompt, has_shots = check.get("prompt") is not None, bool(shots)
    if not has_prompt and not has_shots:
        check.fail("prompt", "prompt or multi_prompt is required")
    elif has_prompt and has_shots and image_to_video:
        check.fail("multi_prompt", "image-to-video takes prompt or multi_prompt, not both")


def _kling3(check: _Checker) -> None:
    _common(check)
    check.field_text("negative_prompt", max_length=MAX_TEXT)
    total = 0
    for index, shot in enumerate(check.array("multi_prompt", max_items=MAX_SHOTS)):
        name = f"multi_prompt[{index}]"
        if not isinstance(shot, dict):
            check.fail(name, "must be an object with prompt and duration")
            continue
        check.text(f"{name}.prompt", shot.get("prompt"), max_length=MAX_TEXT)
        if check.duration(f"{name}.duration", shot.get("duration")):
            total += int(shot["duration"])
    if total > MAX_SHOTS_SECONDS:
        check.fail("multi_prompt", f"shot durations must total at most {MAX_SHOTS_SECONDS} s, got {total}")
    for name in ("start_image_url", "end_image_url"):
        check.field_text(name)
    if len(check.elements()) > MAX_REFERENCES:
        check.fail("elements", f"must have at most {MAX_REFERENCES} items")
    check.boolean("generate_audio")
    check.strings("voice_ids", max_items=MAX_VOICES)
    check.enum("shot_type", ("customize", "intelligent"))
    check.enum("aspect_ratio", KLING3_ASPECTS)
    check.cfg_scale()


def _reference(check: _Checker) -> None:
    _common(check)
    if check.get("video_url") is None:
        check.fail("video_url", "is required")
    else:
        check.field_text("video_url")
    check.field_text("image_url")
    check.field_text("negative_prompt", max_length=MAX_TEXT)
    check.enum("aspect_ratio", OMNI_ASPECTS)
    check.cfg_scale()


_SCHEMAS: dict[str, Callable[[_Checker], None]] = {"omni": _omni, "kling3": _kling3, "reference": _reference}


def validate(schema: str, body: Mapping[str, Any]) -> InvalidParams:
    """Return the body's `invalid_params` entries under the named schema; empty means valid."""
    check = _Checker(body)
    _SCHEMAS[schema](check)
    return check.problems
