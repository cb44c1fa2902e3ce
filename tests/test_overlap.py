"""Overlapping topic filters: the pure check, and `kom check` warning about them."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kom._topic import TopicFilter, overlap, overlapping

KOM = [sys.executable, "-m", "kom._cli"]
WORDS = ("a", "b", "$s")


@st.composite
def filters(draw: st.DrawFn) -> TopicFilter:
    """A filter of up to three levels over a small alphabet, `#` only last."""
    levels = draw(st.lists(st.sampled_from((*WORDS, "+")), min_size=0, max_size=3))
    if not levels or draw(st.booleans()):
        levels.append("#")
    return TopicFilter("/".join(levels))


def _topics(longest: int) -> list[str]:
    """Every topic of up to `longest` levels over the words and one word no filter names."""
    return [
        "/".join(levels)
        for n in range(1, longest + 1)
        for levels in itertools.product((*WORDS, "z"), repeat=n)
    ]


@given(a=filters(), b=filters())
def test_overlap_agrees_with_brute_force(a: TopicFilter, b: TopicFilter) -> None:
    """Two filters overlap exactly when some topic (of a bounded set) matches both."""
    topics = _topics(max(len(a.levels), len(b.levels)) + 1)
    assert overlap(a, b) == any(a.matches(t) and b.matches(t) for t in topics)
    assert overlap(a, b) == overlap(b, a)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("a/#", "a/b/+", True),
        ("a/#", "a", True),
        ("a/+", "b/+", False),
        ("+/x", "a/+", True),
        ("#", "$SYS/x", False),
        ("$share/g/a/#", "a/b", True),
        ("a/b", "a/b/c", False),
    ],
)
def test_overlap_table(a: str, b: str, expected: bool) -> None:
    """Known pairs, `$` topics and shared subscriptions included."""
    assert overlap(TopicFilter(a), TopicFilter(b)) is expected


def test_overlapping_lists_each_pair_once() -> None:
    """Pairs come in configuration order, once each; identical texts are not a pair."""
    fs = [TopicFilter(t) for t in ("a/#", "a/b/+", "c", "a/b/c")]
    assert overlapping(fs) == [("a/#", "a/b/+"), ("a/#", "a/b/c"), ("a/b/+", "a/b/c")]


def test_kom_check_warns_about_overlapping_filters(tmp_path: Path) -> None:
    """`kom check` passes (exit 0) but prints a warning naming the two overlapping filters."""
    cfg = tmp_path / "stations.toml"
    body = '[[station]]\nname = "s"\naddress = "a/b/c"\n[[station.tag]]\nname = "d"\n'
    body += 'type = "TxtI"\naddress = "IN_DATA"\n'
    cfg.write_text('[line]\nhost = "127.0.0.1"\ntopic_filter = ["a/#", "a/b/+"]\n' + body)
    done = subprocess.run([*KOM, "check", str(cfg)], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert b"warning: line line: topic filters 'a/#' and 'a/b/+' overlap" in done.stdout
    cfg.write_text('[line]\nhost = "127.0.0.1"\ntopic_filter = ["a/#", "b/+"]\n' + body)
    clean = subprocess.run([*KOM, "check", str(cfg)], capture_output=True, check=True)
    assert b"overlap" not in clean.stdout
