"""Untrusted text made safe where it is shown: one line, bounded, and no HTML, links or table breaks in Markdown."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lora_ablation.api.render_safe import ELLIPSIS, label_text, markdown_text, plain_text

ORDINARY = ["o_proj+fc2 r16 lora", "qkv r8 dora layers=0-3,8-11", "base", "all r64 rslora layers=lastHalf"]


def test_ordinary_labels_come_out_unchanged():
    for label in ORDINARY:
        assert plain_text(label) == label_text(label) == markdown_text(label) == label


def test_plain_text_is_one_line_without_control_or_format_characters():
    assert plain_text("a\nb\r\nc\td") == "a b  c d"
    assert plain_text("\x1b[31mred\x1b[0m") == "[31mred[0m"  # ESC gone: no terminal escape sequence survives
    assert plain_text("abc\u202edef\u200b") == "abcdef"  # bidi override and zero-width space
    assert plain_text("lone \ud800 surrogate").encode("utf-8") == b"lone  surrogate"


def test_plain_text_caps_the_length_with_an_ellipsis():
    out = plain_text("x" * 1000, 50)
    assert len(out) == 50 and out.endswith(ELLIPSIS)


def test_cut_labels_stay_distinct():
    a, b = "m" * 300 + "a", "m" * 300 + "b"
    assert len(label_text(a)) <= 256 and len(label_text(b)) <= 256
    assert label_text(a) != label_text(b) and label_text(a) == label_text(a)


def test_markdown_text_escapes_html_links_images_pipes_and_backticks():
    out = markdown_text("<img src=x onerror=alert(1)> ![i](http://e/x.png) [l](javascript:x) a|b `code` &amp;")
    for raw in ("<", ">", "![i](", "[l](", "|", "`"):
        assert raw not in out
    assert "&lt;img" in out and "&amp;amp;" in out


@settings(max_examples=200, deadline=None)
@given(st.text(), st.integers(min_value=1, max_value=300))
def test_any_text_renders_bounded_and_encodable(text, limit):
    for out in (plain_text(text, limit), label_text(text, limit), markdown_text(text, limit)):
        out.encode("utf-8")
        assert "\n" not in out and "\x1b" not in out
    assert len(plain_text(text, limit)) <= limit
    assert len(label_text(text, max(limit, 16))) <= max(limit, 16)
    assert "<" not in markdown_text(text, limit) and "`" not in markdown_text(text, limit)
