"""Read the shell commands out of a Markdown page (its ```bash blocks) and evaluate kubectl's JSONPath templates, so
that a test runs what a page tells people to paste rather than a copy of it."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any


def commands(page: Path, variables: dict[str, str] | None = None) -> list[list[str]]:
    """Every command of the page's bash blocks, continuation lines joined, comments dropped, split as the shell
    would split it; $NAME is replaced from `variables` (an unknown $NAME fails: the test would miss a step), and
    a line that only sets a variable (`REG=...`) is left out: the test gives its value."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)
    out = []
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        for name, value in (variables or {}).items():
            line = line.replace(f"${name}", value)
        words = shlex.split(line, comments=True)
        if not words or (len(words) == 1 and re.match(r"[A-Z_]+=", words[0])):
            continue
        assert "$" not in line, f"{page.name}: {line.strip()!r} uses a variable the test does not set"
        out.append(words)
    return out


def starting(all_commands: list[list[str]], *prefix: str) -> list[list[str]]:
    return [c for c in all_commands if c[: len(prefix)] == list(prefix)]


def option(command: list[str], name: str) -> str:
    """The value of `name=VALUE` or `name VALUE` in a command."""
    for index, word in enumerate(command):
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
        if word == name:
            return command[index + 1]
    raise KeyError(f"{name} not in {shlex.join(command)}")


def _lookup(value: Any, path: str) -> Any:
    """`.a.b[0].c` or `.items[*]` (a list) relative to value; None where a key is missing, as kubectl prints nothing."""
    for part in re.findall(r"[^.\[\]]+|\[[^\]]*\]", path):
        if value is None:
            return None
        if part == "[*]":
            continue
        if part.startswith("["):
            index = int(part[1:-1])
            value = value[index] if isinstance(value, list) and -len(value) <= index < len(value) else None
        else:
            value = value.get(part) if isinstance(value, dict) else None
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def jsonpath(template: str, obj: Any) -> str:
    """kubectl's `-o jsonpath=TEMPLATE` for what the pages use: `{.path}`, `{"literal"}` with \\t and \\n, plain
    text, and `{range .list[*]}...{end}`."""
    tokens = re.findall(r"\{([^{}]*)\}|([^{}]+)", template)

    def run(start: int, current: Any) -> tuple[str, int]:
        out, index = [], start
        while index < len(tokens):
            expression, literal = tokens[index]
            if literal:
                out.append(literal)
            elif expression.startswith('"'):
                out.append(json.loads(expression))
            elif expression.startswith("range "):
                items = _lookup(current, expression[len("range ") :].strip()) or []
                end = index
                for item in items:
                    text, end = run(index + 1, item)
                    out.append(text)
                if not items:  # skip the body
                    _, end = run(index + 1, None)
                index = end
            elif expression == "end":
                return "".join(out), index
            else:
                out.append(_text(_lookup(current, expression.strip())))
            index += 1
        return "".join(out), index

    return run(0, obj)[0]
