"""The server's own check of create bodies, written from the vendor's OpenAPI and its prose, one per family.

It follows the vendor, not the SDK: where the SDK is stricter (http(s) URLs only, no blank prompt, no unknown
fields), this accepts what the vendor accepts, so that a test can show the difference. Unknown fields are
ignored (the vendor's schemas allow them); a JSON null is refused (no field of theirs is nullable); a value
of the wrong type is refused by name, never an error of our own. The rules written only in prose (prompt or
multi_prompt, the 4-reference cap on Omni, 2 voices, 15 s of shots, "auto" needs an image on Omni) are
applied too: the vendor states them, its schema just cannot.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["InvalidParams", "validate"]

InvalidParams = list[dict[str, str]]

MAX_TEXT = 2500
DURATIONS = tuple(str(seconds) for seconds in range(3, 16))
MAX_SHOTS = 6
MAX_SHOTS_SECONDS = 15
MAX_VOICES = 2
MAX_REFERENCES = 4
OMNI_ASPECTS = ("auto", "16:9", "9:16", "1:1")
KLING3_ASPECTS = ("16:9", "9:16", "1:1")
# JSON Schema's "uri" format, RFC 3986: a scheme, a colon, then only the characters a URI may hold.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")


class _Checker:
    """Collects the `invalid_params` entries of one body."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body
        self.problems: InvalidParams = []

    def fail(self, name: str, reason: str) -> None:
        self.problems.append({"name": name, "reason": reason})

    def get(self, name: str) -> Any:
        return self.body.get(name)

    def given(self, name: str) -> bool:
        """Whether the field is there; a null is reported here, once, as the wrong type."""
        if name not in self.body:
            return False
        if self.body[name] is None:
            self.fail(name, "must not be null")
            return False
        return True

    def text(self, name: str, value: Any, *, max_length: int | None = None) -> bool:
        if not isinstance(value, str):
            self.fail(name, "must be a string")
            return False
        if max_length is not None and len(value) > max_length:
            self.fail(name, f"must be at most {max_length} characters, got {len(value)}")
            return False
        return True

    def field_text(self, name: str, *, max_length: int | None = None) -> None:
        if self.given(name):
            self.text(name, self.get(name), max_length=max_length)

    def uri(self, name: str) -> None:
        if self.given(name) and self.text(name, value := self.get(name)) and not _URI.fullmatch(value):
            self.fail(name, "must be a URI")

    def choice(self, name: str, value: Any, options: tuple[str, ...]) -> bool:
        # The type first: `{} in options` is fine, but a set of options would raise on an unhashable value.
        if not isinstance(value, str) or value not in options:
            self.fail(name, f"must be one of {', '.join(options)}")
            return False
        return True

    def enum(self, name: str, options: tuple[str, ...]) -> None:
        if self.given(name):
            self.choice(name, self.get(name), options)

    def boolean(self, name: str) -> None:
        if self.given(name) and not isinstance(self.get(name), bool):
            self.fail(name, "must be a boolean")

    def cfg_scale(self) -> None:
        if not self.given("cfg_scale"):
            return
        value = self.get("cfg_scale")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 2:
            self.fail("cfg_scale", "must be a number from 0 to 2")

    def array(self, name: str, value: Any, *, max_items: int | None = None) -> list[Any]:
        if not isinstance(value, list):
            self.fail(name, "must be an array")
            return []
        if max_items is not None and len(value) > max_items:
            self.fail(name, f"must have at most {max_items} items, got {len(value)}")
        return value

    def field_array(self, name: str, *, max_items: int | None = None) -> list[Any]:
        return self.array(name, self.get(name), max_items=max_items) if self.given(name) else []

    def strings(self, name: str, value: Any, *, max_items: int | None = None) -> list[Any]:
        items = self.array(name, value, max_items=max_items)
        for index, item in enumerate(items):
            self.text(f"{name}[{index}]", item)
        return items

    def field_strings(self, name: str, *, max_items: int | None = None) -> list[Any]:
        return self.strings(name, self.get(name), max_items=max_items) if self.given(name) else []

    def elements(self) -> list[Any]:
        items = self.field_array("elements")
        for index, item in enumerate(items):
            name = f"elements[{index}]"
            if not isinstance(item, dict):
                self.fail(name, "must be an object")
                continue
            element = _Checker(item)
            if element.given("reference_image_urls"):
                element.strings("reference_image_urls", item["reference_image_urls"])
            element.field_text("frontal_image_url")
            self.problems.extend(
                {"name": f"{name}.{problem['name']}", "reason": problem["reason"]}
                for problem in element.problems
            )
        return items


def _common(check: _Checker) -> None:
    """Fields every family shares."""
    check.uri("webhook_url")
    check.field_text("prompt", max_length=MAX_TEXT)
    check.enum("duration", DURATIONS)


def _needs_prompt(check: _Checker, shots: list[Any]) -> bool:
    """Text-to-video needs a prompt unless shots are given; whether the body has a prompt."""
    has_prompt = "prompt" in check.body
    if not has_prompt and not shots:
        check.fail("prompt", "prompt or multi_prompt is required")
    return has_prompt


def _omni(check: _Checker) -> None:
    _common(check)
    shots = check.field_strings("multi_prompt", max_items=MAX_SHOTS)
    check.enum("shot_type", ("customize",))
    for name in ("image_url", "start_image_url", "end_image_url"):
        check.field_text(name)
    images = check.field_strings("image_urls")
    elements = check.elements()
    if len(images) + len(elements) > MAX_REFERENCES:
        check.fail("elements", f"image_urls and elements must be at most {MAX_REFERENCES} in total")
    check.boolean("generate_audio")
    check.field_strings("voice_ids", max_items=MAX_VOICES)
    check.enum("aspect_ratio", OMNI_ASPECTS)
    image_to_video = check.get("image_url") is not None or check.get("start_image_url") is not None
    if check.get("aspect_ratio") == "auto" and not image_to_video:
        check.fail("aspect_ratio", '"auto" needs an input image (image_url or start_image_url)')
    if _needs_prompt(check, shots) and shots and image_to_video:
        check.fail("multi_prompt", "image-to-video takes prompt or multi_prompt, not both")


def _kling3(check: _Checker) -> None:
    _common(check)
    check.field_text("negative_prompt", max_length=MAX_TEXT)
    shots = check.field_array("multi_prompt", max_items=MAX_SHOTS)
    total = 0
    for index, shot in enumerate(shots):
        name = f"multi_prompt[{index}]"
        if not isinstance(shot, dict):
            check.fail(name, "must be an object with prompt and duration")
            continue
        # "Each item specifies a prompt and duration for that shot": both are needed.
        check.text(f"{name}.prompt", shot.get("prompt"), max_length=MAX_TEXT)
        if check.choice(f"{name}.duration", shot.get("duration"), DURATIONS):
            total += int(shot["duration"])
    if total > MAX_SHOTS_SECONDS:
        check.fail("multi_prompt", f"shot durations must total at most {MAX_SHOTS_SECONDS} s, got {total}")
    _needs_prompt(check, shots)
    for name in ("start_image_url", "end_image_url"):
        check.field_text(name)
    check.elements()
    check.boolean("generate_audio")
    check.field_strings("voice_ids", max_items=MAX_VOICES)
    check.enum("shot_type", ("customize", "intelligent"))
    check.enum("aspect_ratio", KLING3_ASPECTS)
    check.cfg_scale()


def _reference(check: _Checker) -> None:
    _common(check)
    if "video_url" not in check.body:
        check.fail("video_url", "is required")
    check.uri("video_url")
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
