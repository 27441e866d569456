"""Text a traced process chose, made safe to print on a terminal.

A process names itself (its comm, its executable's path), its topics, its
formats, its share files and the probes of its ELF files. Printed raw, an
ESC starts a terminal escape sequence (rewrite the screen, retitle the
window, on some terminals answer back), `\\r` overwrites the line, a
newline forges a line of output. Every such string reaches the terminal
through `escape_controls`.
"""

from __future__ import annotations

import re

# C0 and C1 controls and DEL, but tab; the line and paragraph separators
# and the bidi marks, embeddings, overrides and isolates, which reorder
# what is shown (Trojan Source).
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f"
                       "\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == 0x0a:
        return "\\n"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    r"""`text` with control characters shown as \xNN (\n for a newline),
    and the separators and bidi controls as \uXXXX.

    >>> escape_controls("red \x1b[31m\rover \u202eevil")
    'red \\x1b[31m\\x0dover \\u202eevil'
    """
    if not _CONTROLS.search(text):
        return text
    return _CONTROLS.sub(_shown, text)


# What json.dumps(ensure_ascii=False) leaves raw but a terminal acts on:
# DEL and the C1 controls (json escapes only C0), the line and paragraph
# separators, the bidi marks, embeddings, overrides and isolates that
# reorder what is shown (Trojan Source), and lone surrogates (a name
# decoded with surrogateescape, which would not encode as UTF-8).
_JSON_HOSTILE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                           "\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def json_escaped(text: str) -> str:
    r"""JSON text `text` (json.dumps's, ensure_ascii=False) with the code
    points a terminal acts on written as \uXXXX: the same JSON value, the
    rest still UTF-8. Outside its strings JSON text is ASCII, so every
    such code point lies inside a string, where \uXXXX means itself.

    >>> json_escaped('"\x9b31m\u202e\u00e9"')
    '"\\u009b31m\\u202eé"'
    """
    if not _JSON_HOSTILE.search(text):
        return text
    return _JSON_HOSTILE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def printable(value: object) -> str:
    """str(value) with its control characters escaped (None: "-").

    >>> printable(None), printable("a\nb")
    ('-', 'a\\nb')
    """
    return "-" if value is None else escape_controls(str(value))
