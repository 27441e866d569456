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

# C0 and C1 controls and DEL, but tab.
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    r"""`text` with control characters shown as \xNN (\n for a newline).

    >>> escape_controls("red \x1b[31m\rover")
    'red \\x1b[31m\\x0dover'
    """
    if not _CONTROLS.search(text):
        return text
    return _CONTROLS.sub(lambda match: "\\n" if match.group() == "\n"
                         else f"\\x{ord(match.group()):02x}", text)


def printable(value: object) -> str:
    """str(value) with its control characters escaped (None: "-").

    >>> printable(None), printable("a\nb")
    ('-', 'a\\nb')
    """
    return "-" if value is None else escape_controls(str(value))
