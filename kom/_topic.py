"""Topics and topic filters as frozen, validated values (MQTT 3.1.1 §4.7)."""

from __future__ import annotations

import attrs

MAX_TOPIC_BYTES = 65535


def check_topic(topic: str) -> str | None:
    """Return why `topic` cannot be published to, or None when it can.

    Empty levels are allowed (MQTT 3.1.1 §4.7.1.1): NETIO's command topic ends with `/`.
    An empty level that a placeholder leaves is refused where templates are rendered.
    """
    if not topic:
        return "a topic may not be empty"
    if "+" in topic or "#" in topic:
        return f"a topic may not contain wildcards: {topic!r}"
    if "\x00" in topic:
        return "a topic may not contain NUL"
    if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        return "a topic may not be longer than 65535 bytes"
    return None


@attrs.frozen
class TopicFilter:
    """A subscription filter, with `+`, `#` and the `$share/group/` prefix (MQTT 5 §4.8.2)."""

    text: str
    share_group: str | None = attrs.field(init=False)
    levels: tuple[str, ...] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        text = self.text
        group = None
        if text.startswith("$share/"):
            parts = text.split("/", 2)
            if len(parts) < 3 or not parts[1] or not parts[2]:
                raise ValueError(f"a shared subscription is $share/GROUP/FILTER, found {text!r}")
            group, text = parts[1], parts[2]
            if "+" in group or "#" in group:
                raise ValueError(f"a share group may not contain wildcards: {group!r}")
        if not text:
            raise ValueError("a topic filter may not be empty")
        if "\x00" in text:
            raise ValueError("a topic filter may not contain NUL")
        levels = tuple(text.split("/"))
        for i, level in enumerate(levels):
            if "#" in level and (level != "#" or i != len(levels) - 1):
                raise ValueError(f"'#' must be a whole last level, found {self.text!r}")
            if "+" in level and level != "+":
                raise ValueError(f"'+' must be a whole level, found {self.text!r}")
        object.__setattr__(self, "share_group", group)
        object.__setattr__(self, "levels", levels)

    @property
    def filter(self) -> str:
        """The filter without its `$share/group/` prefix."""
        return "/".join(self.levels)

    def matches(self, topic: str) -> bool:
        """Whether a message on `topic` is delivered by this filter."""
        parts = topic.split("/")
        # MQTT 3.1.1 §4.7.2: wildcards at the first level do not match topics starting with $.
        if topic.startswith("$") and self.levels[0] in ("+", "#"):
            return False
        for i, level in enumerate(self.levels):
            if level == "#":
                return True
            if i >= len(parts):
                return False
            if level != "+" and level != parts[i]:
                return False
        return len(parts) == len(self.levels)


def overlap(a: TopicFilter, b: TopicFilter) -> bool:
    """Whether some topic matches both filters (their `$share/` prefixes aside).

    One client with both subscriptions may get a message on such a topic twice: MQTT 3.1.1
    §3.3.5 lets a broker send a copy for each matching subscription.
    """
    x, y = a.levels, b.levels
    # MQTT 3.1.1 §4.7.2: a wildcard first level does not match a topic starting with $.
    if (x[0].startswith("$") and y[0] in ("+", "#")) or (
        y[0].startswith("$") and x[0] in ("+", "#")
    ):
        return False
    for i in range(max(len(x), len(y)) + 1):
        p = x[i] if i < len(x) else None
        q = y[i] if i < len(y) else None
        if p == "#" or q == "#":  # '#' also matches its parent level (§4.7.1.2)
            return True
        if p is None or q is None:
            return p is None and q is None
        if "+" not in (p, q) and p != q:
            return False
    return True  # pragma: no cover - the loop returns by the level past the shorter end


def overlapping(filters: list[TopicFilter]) -> list[tuple[str, str]]:
    """Each pair of distinct filters (by text) that some topic matches both."""
    return [
        (a.text, b.text)
        for i, a in enumerate(filters)
        for b in filters[i + 1 :]
        if a.text != b.text and overlap(a, b)
    ]
