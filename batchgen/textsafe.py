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

Names a user reads and types (a batch name, which is also a folder name) must not
hold a character nobody can see either: ``invisible_at`` finds the first one, and
``reveal`` (used for problems, where the exact text matters) escapes them as well.
Invisible means: a control (Cc), a format character (Cf: zero-width space and
joiners, bidi marks, soft hyphen, word joiner, BOM, tags ...), a surrogate, a line or
paragraph separator, a space other than U+0020 (no-break, en, ideographic ...: a
look-alike of the plain space), and the other "default ignorable" code points that
are letters or marks (Hangul fillers, the combining grapheme joiner, Mongolian free
variation selectors, variation selectors). A text or emoji presentation selector
(U+FE0E/U+FE0F) right after a visible character is allowed: keyboards put one after
many emoji (``❤️``) and it only chooses how that character is drawn. Prompts and
other values keep every such character (a ZWJ in an emoji sequence, a ZWNJ in
Persian); ``printable`` leaves them alone.
"""

from __future__ import annotations

import re
import unicodedata

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


#: default-ignorable code points that are not Cf (they are letters or marks)
_IGNORABLE = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u3164\ufe00-\ufe0f\uffa0\U000e0000-\U000e0fff]"
)
_UNSEEN = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))
_PRESENTATION = "\ufe0e\ufe0f"


def invisible_at(text: str) -> int | None:
    """The index of the first character of ``text`` a reader cannot see (module
    docstring), or None."""
    for i in range(len(text)):
        if _unseen_at(text, i):
            return i
    return None


def _unseen_at(text: str, i: int) -> bool:
    char = text[i]
    if char.isascii():
        return not char.isprintable()
    if char in _PRESENTATION and i > 0:
        before = text[i - 1]
        # drawn as part of the character before it (``❤️``); a second one is not
        return before in _PRESENTATION or _unseen(before)
    return _unseen(char)


def _unseen(char: str) -> bool:
    """``char`` cannot be seen (presentation selectors included: no context here)."""
    if char.isascii():
        return not char.isprintable()
    category = unicodedata.category(char)
    if category in _UNSEEN or (category == "Zs" and char != " "):
        return True
    return _IGNORABLE.match(char) is not None


def describe(char: str) -> str:
    """``U+200B ZERO WIDTH SPACE``: a character as a message names it."""
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X}" + (f" {name}" if name else "")


def reveal(text: str) -> str:
    """Like ``printable``, and every invisible character (``invisible_at``) escaped too."""
    text = printable(text)
    if text.isascii():
        return text
    return "".join(_escape_code(c) if _unseen_at(text, i) else c for i, c in enumerate(text))


def _escape_code(char: str) -> str:
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
