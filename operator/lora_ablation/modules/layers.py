"""Layer subsets (search.layers): which decoder layers get adapters. A selection is a word or a list of
indices, so it fits a trial name, a label and the CRD as one string; it becomes PEFT's layers_to_transform
once the model's layer count is known (the planner's inventory, or the trainer's loaded model)."""

from __future__ import annotations

import re

ALL = "all"
PRESETS = ("all", "firstHalf", "lastHalf", "everyOther")
_RANGE = r"[0-9]{1,4}(-[0-9]{1,4})?"
PATTERN = re.compile(rf"^(all|firstHalf|lastHalf|everyOther|{_RANGE}(,{_RANGE}){{0,63}})$")
EXPECTED = (
    "expected all, firstHalf, lastHalf, everyOther, or layer indices such as '0,2,4' or '8-15' (0-based, "
    "comma-separated, ranges inclusive)"
)


def check(selection: str) -> str | None:
    """Why `selection` is not a layer subset, or None. Independent of the model (that check comes later)."""
    if not PATTERN.fullmatch(selection):
        return f"{selection!r}: {EXPECTED}"
    if selection in PRESETS:
        return None
    for part in selection.split(","):
        low, _, high = part.partition("-")
        if high and int(high) < int(low):
            return f"{selection!r}: range {part} runs backwards; write {high}-{low}"
    indices = _explicit(selection)
    if len(indices) != len(set(indices)):
        return f"{selection!r}: lists a layer twice"
    return None


def _explicit(selection: str) -> list[int]:
    out: list[int] = []
    for part in selection.split(","):
        low, _, high = part.partition("-")
        out += list(range(int(low), int(high or low) + 1))
    return out


def indices(selection: str, layers: int) -> list[int] | None:
    """The 0-based layer indices `selection` picks in a model with `layers` decoder layers; None means every
    layer (PEFT's default, so 'all' leaves layers_to_transform unset). ValueError names what is wrong.

    firstHalf and lastHalf each take ceil(layers / 2), so with an odd count both hold the middle layer;
    everyOther takes the even indices 0, 2, 4, ..."""
    problem = check(selection)
    if problem:
        raise ValueError(problem)
    if selection == ALL:
        return None
    if selection == "firstHalf":
        return list(range((layers + 1) // 2))
    if selection == "lastHalf":
        return list(range(layers // 2, layers))
    if selection == "everyOther":
        return list(range(0, layers, 2))
    picked = sorted(_explicit(selection))
    beyond = [i for i in picked if i >= layers]
    if beyond:
        raise ValueError(
            f"{selection!r}: layer {beyond[0]} does not exist; the model has {layers} layers (0-{layers - 1})"
        )
    return picked


def fraction(selection: str, layers: int | None) -> float | None:
    """Share of the layers a selection adapts (scales the parameter estimate); None when unknowable."""
    if selection == ALL:
        return 1.0
    if not layers:
        return None
    picked = indices(selection, layers)
    return 1.0 if picked is None else len(picked) / layers


def slug(selection: str) -> str:
    """The selection in a trial name: 'lasthalf', 'l0-2-4', 'l8-15'."""
    return selection.lower() if selection in PRESETS else "l" + selection.replace(",", "-")
