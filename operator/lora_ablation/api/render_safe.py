"""Untrusted text made safe where it is shown. Trial images write result.json, stage-one.json and failure.json; what
they say reaches summary.md (rendered as Markdown, often as HTML), the resource status, events, terminals and plots.
Pure, standard library only."""

from __future__ import annotations

import hashlib
import unicodedata

ELLIPSIS = "…"
MAX_PLAIN = 512  # a status message or an event line
MAX_MARKDOWN = 2000  # a note or a rationale in summary.md
MAX_LABEL = 256  # a configuration label: the status repeats it in bestConfig, the leaderboard, tied and paretoFront
# Control characters (ESC starts terminal escape sequences), format characters (bidi overrides reorder what a
# reader sees), lone surrogates (no UTF-8 encoding: writing the file would fail) and line or paragraph separators.
_DROPPED = {"Cc", "Cf", "Cs", "Zl", "Zp"}
_WHITESPACE = {"\t", "\n", "\r", "\v", "\f", "\u2028", "\u2029", "\x85"}
_MARKDOWN = {
    "&": "&amp;",  # one pass, a character at a time: nothing is escaped twice
    "<": "&lt;",  # raw HTML (<img onerror>, <script>) and autolinks
    ">": "&gt;",
    "`": "&#96;",  # a backtick would close the code span a label is shown in (escapes do not work inside one)
    "|": "&#124;",  # a table cell boundary, even inside a code span
    "\\": "\\\\",
    "[": "\\[",  # link and image syntax: [text](url), ![alt](src), [text][ref]
    "]": "\\]",
}


def _one_line(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    out = []
    for char in text:
        if char in _WHITESPACE:
            out.append(" ")
        elif unicodedata.category(char) not in _DROPPED:
            out.append(char)
    return "".join(out).strip()


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)].rstrip() + ELLIPSIS


def plain_text(value: object, limit: int = MAX_PLAIN) -> str:
    """One line of plain text (status messages, events, terminal tables, plot labels): control and format
    characters removed, line breaks turned into spaces, at most `limit` characters (an ellipsis marks a cut)."""
    return _cap(_one_line(value), limit)


def label_text(value: object, limit: int = MAX_LABEL) -> str:
    """plain_text for an identifier such as a configuration label: when cut, a hash of the whole text follows the
    ellipsis, so two long labels that share their beginning stay two labels (they group results)."""
    text = _one_line(value)
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return text[: max(limit - len(digest) - 1, 0)] + ELLIPSIS + digest


def markdown_text(value: object, limit: int = MAX_MARKDOWN) -> str:
    """Text for Markdown that may be rendered as HTML: one line (as plain_text), cut to `limit` characters, then
    HTML special characters, backticks, table pipes and link or image brackets escaped; safe in running text, in a
    table cell and inside a code span. Ordinary labels ('o_proj+fc2 r16 lora layers=0-3') come out unchanged."""
    return "".join(_MARKDOWN.get(char, char) for char in plain_text(value, limit))
