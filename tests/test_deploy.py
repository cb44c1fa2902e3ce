"""What docs/deploy.md tells an integrator to install works as written: the unit and the broker."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ._broker import BrokerFactory
from ._kom import Publisher, wait_until

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "docs" / "deploy.md"
#: More than mosquitto queues for an absent client by default (max_queued_messages 1000).
AWAY = 1500


def _block(after: str) -> str:
    """The first fenced code block of docs/deploy.md after the text `after`."""
    text = DEPLOY.read_text(encoding="utf-8")
    start = text.index(after)
    found = re.search(r"^```[a-z]*\n(.*?)^```$", text[start:], re.S | re.M)
    assert found is not None, f"no code block after {after!r} in {DEPLOY}"
    return found.group(1)


@pytest.mark.broker
def test_broker_settings_load_beside_debians_and_queue_for_an_absent_kom(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    """The conf.d file loads beside Debian's main file, and queues past 1,000 messages."""
    confd = tmp_path / "conf.d"
    confd.mkdir()
    (confd / "historian.conf").write_text(_block("/etc/mosquitto/conf.d/historian.conf"))
    # Debian's /etc/mosquitto/mosquitto.conf sets persistence and its location, then includes
    # conf.d: the test's broker does the same with its own directory.
    broker = broker_factory(persistence=True, extra=[f"include_dir {confd}"])
    with Publisher(broker.port, client_id="kom-away", clean_session=False) as kom:
        kom.subscribe("plant/#")
    with Publisher(broker.port) as device:
        for number in range(AWAY):
            device.publish("plant/meter", str(number))
    with Publisher(broker.port, client_id="kom-away", clean_session=False) as kom:
        wait_until(lambda: len(kom.messages()) >= AWAY, 20, "every queued message")
        assert sorted(int(m.payload) for m in kom.messages()) == list(range(AWAY))


@pytest.mark.broker
def test_a_full_queue_keeps_the_beginning_of_an_outage(broker_factory: BrokerFactory) -> None:
    """With max_queued_messages 10 an absent client gets the first 10 messages, not the last."""
    broker = broker_factory(extra=["max_queued_messages 10"])
    with Publisher(broker.port, client_id="kom-away", clean_session=False) as kom:
        kom.subscribe("plant/#")
    with Publisher(broker.port) as device:
        for number in range(30):
            device.publish("plant/meter", str(number))
    with Publisher(broker.port, client_id="kom-away", clean_session=False) as kom:
        wait_until(lambda: len(kom.messages()) >= 10, 10, "the queued messages")
        time.sleep(0.5)  # nothing more comes
        assert sorted(int(m.payload) for m in kom.messages()) == list(range(10))


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds nothing wrong in the unit, its commands where kom is."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit is not verified here")
    kom = Path(sys.executable).parent / "kom"
    assert kom.exists()
    unit = _block("/etc/systemd/system/kom.service").replace("/usr/local/bin/kom", str(kom))
    path = tmp_path / "kom.service"
    path.write_text(unit)
    done = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
