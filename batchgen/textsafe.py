"""Make any text safe to print on a terminal or to write as one line of a log.

Values that reach a terminal come from manifests, files, the API and the database:
a batch name, a prompt, an axis value, an error message from the service, a file
name. Any of them may hold control characters: an escape sequence that recolours,
moves the cursor, retitles the window or hides the lines before it, a carriage return
that overwrites the line, a newline that fakes a line of its own, a Unicode
bidirectional override that shows text in another order than it is.

``printable`` escapes each such character the way Python writes it in a string
(``\\x1b``, ``\\n``, ``\\u202e``): visible, unambiguous for a reader, and the same
function for every printer (CLI messages, validate, plan, status, the progress panel
and lines). Backslashes are left alone, so escaping twice changes nothing.
"""

from __future__ import annotations

import re

#: C0 and C1 controls, DEL, lone surrogates, line/paragraph separators and the
#: bidirectional embedding, override and isolate characters
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every control character escaped: one line, safe on a terminal."""
    return _UNSAFE.sub(_escape, text)


def printable_lines(text: str) -> str:
    """Like ``printable``, but the line breaks of a multi-line message stay."""
    return "\n".join(printable(line) for line in text.split("\n"))


def printable_json(text: str) -> str:
    """JSON text (``json.dumps``) with the control characters JSON leaves raw (DEL, C1,
    separators, bidi controls) written as ``\\uXXXX``: still the same JSON, since
    they can only occur inside strings."""
    return _UNSAFE.sub(lambda m: "\n" if m.group() == "\n" else f"\\u{ord(m.group()):04x}", text)
