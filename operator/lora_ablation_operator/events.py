"""Events that help a person and cost little: a burst of same-reason events from one pass (twenty trials started,
a batch of results collected) becomes one Event that names the first few, so one pass posts a handful at most."""

from __future__ import annotations

MAX_LISTED = 5  # trials named in an aggregated Event's message
MAX_MESSAGE = 1024  # characters, as the API server's event message limit


def aggregate(events: list[tuple[str, str, str]], max_listed: int = MAX_LISTED) -> list[tuple[str, str, str]]:
    """(type, reason, message) events -> at most one per (type, reason), in first-seen order."""
    groups: dict[tuple[str, str], list[str]] = {}
    for event_type, reason, message in events:
        groups.setdefault((event_type, reason), []).append(message)
    out = []
    for (event_type, reason), messages in groups.items():
        if len(messages) == 1:
            text = messages[0]
        else:
            listed = "; ".join(messages[:max_listed])
            more = f"; and {len(messages) - max_listed} more" if len(messages) > max_listed else ""
            text = f"{len(messages)} trials: {listed}{more}"
        out.append((event_type, reason, text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."))
    return out
