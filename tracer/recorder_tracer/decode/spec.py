"""Topic selection with the core's spec syntax, for the controller.

The same items as RECORDER_TRACES: `[-|/]regex[=value]`, separated by ':'
or spaces, regexes matching whole names case-insensitively, `all` for every
topic. Applied in order to a topic starting from "off": a topic is armed
when its final value is positive, so `all:/net.*` arms everything but net.

>>> TopicSpec.parse("net.*:-net_debug").armed("net_send")
True
>>> TopicSpec.parse("net.*:-net_debug").armed("net_debug")
False
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from recorder_tracer.errors import TracerError


@dataclass(frozen=True)
class SpecItem:
    """One `[-|/]regex[=value]` item."""

    pattern: re.Pattern[str] | None     # None: `all`
    value: int
    text: str

    def matches(self, name: str) -> bool:
        return self.pattern is None or self.pattern.fullmatch(name) is not None


@dataclass(frozen=True)
class TopicSpec:
    """An ordered list of items; no items means every topic."""

    items: tuple[SpecItem, ...]

    @classmethod
    def parse(cls, *specs: str) -> TopicSpec:
        """Parse specs; raises TracerError with a one-line reason if bad."""
        items = []
        for spec in specs:
            for text in re.split(r"[:\s]+", spec.strip()):
                if text:
                    items.append(_parse_item(text))
        return cls(tuple(items))

    def armed(self, name: str) -> bool:
        """Whether topic `name` is to be armed."""
        if not self.items:
            return True
        value = 0
        for item in self.items:
            if item.matches(name):
                value = item.value
        return value > 0

    def unmatched(self, names: list[str]) -> list[str]:
        """Items (as written) that match none of `names`."""
        return [
            item.text for item in self.items
            if not any(item.matches(name) for name in names)
        ]


def _parse_item(text: str) -> SpecItem:
    body, value = text, 1
    if body.startswith("-"):
        body, value = body[1:], 0
    elif body.startswith("/"):
        body, value = body[1:], -1
    if "=" in body:
        body, _, raw = body.partition("=")
        try:
            value = int(raw, 0)
        except ValueError:
            raise TracerError(
                f"invalid value {raw!r} for {body!r} in spec (expected an integer)"
            ) from None
    if not body:
        raise TracerError(f"empty topic pattern in spec item {text!r}")
    if body == "all":
        return SpecItem(None, value, text)
    try:
        pattern = re.compile(body, re.IGNORECASE)
    except re.error as error:
        raise TracerError(f"invalid topic pattern {body!r}: {error}") from None
    return SpecItem(pattern, value, text)
