"""The live view renders tags, values, units, qualities and the line state."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from kom import Kom, Quality, Reason, Update
from kom._watch import LiveView

from ._kom import config

BODY = """
[[station]]
name = "netio"
address = "d"
[[station.tag]]
name = "voltage"
type = "Ai"
address = "JA=v"
unit = "V"
[[station.tag]]
name = "out1"
type = "Di"
address = "JA=o"
"""


def test_the_live_view_shows_each_tag_once_with_its_latest_value() -> None:
    """The table has one row per tag with the latest value, its unit and its quality or reason."""
    kom = Kom(config(BODY, host="127.0.0.1:1", payload_type="json"), iterate=False)
    view = LiveView(kom, title="test")
    now = datetime.now(UTC)
    view([Update("netio.voltage", 229.9, Quality.VALID, None, now, now, "d")])
    view([Update("netio.voltage", 230.4, Quality.VALID, None, now, now, "d")])
    view([Update("netio.out1", None, Quality.INVALID, Reason.WILL, now, now, None)])
    view.note("switched")
    console = Console(width=120, record=True, color_system=None)
    console.print(view.render())
    text = console.export_text()
    assert "230.40" in text
    assert "229.90" not in text
    assert "netio.voltage" in text
    assert " V " in text
    assert "will" in text
    assert "switched" in text
    assert "line line" in text
    assert "idle" in text
