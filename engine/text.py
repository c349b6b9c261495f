"""Values as a terminal, a log or a report shows them: never as commands to the terminal."""

from __future__ import annotations

import os
import re

# C0 and C1 control characters: a terminal's escape sequences, newlines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown(value: object) -> str:
    """`value` as printable text: bytes that are not UTF-8 as `\\xff`, control characters as `\\x1b`, `\\n`."""
    text = str(value)
    try:
        text = os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no file name holds
        text = text.encode("utf-8", "backslashreplace").decode()
    return _CONTROL.sub(lambda char: char[0].encode("unicode_escape").decode(), text)
