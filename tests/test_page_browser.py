"""The status page in a real browser: headless Chromium sees the NETIO tags change, and a trend."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kom.sim import NetioSimulator

from ._broker import Mosquitto
from ._http import NETIO_PROFILE, ROOT, KomRun, netio_inputs

pytestmark = pytest.mark.broker

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Screenshots the test keeps (gitignored), for a person to look at.
ARTIFACTS = ROOT / "test-artifacts"
DEVICE = "netio-4All-25E0"


def _require_browser() -> None:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (scripts/setup installs "
            "them as root): the page's browser test needs /usr/bin/chromium and chromedriver"
        )
    try:
        import selenium  # noqa: F401 - only whether it is there
    except ImportError:
        pytest.skip("selenium is not installed (the dev extra has it)")


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Headless Chromium driven by the system's chromedriver, with a profile of its own."""
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Selenium may not look for or fetch a driver or a browser: both are given.
    monkeypatch.setenv("SE_OFFLINE", "true")
    with tempfile.TemporaryDirectory(prefix="kom-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--window-size=1280,1100",
        ):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def _wait(driver: Any, script: str, what: str, *args: object, timeout: float = 15.0) -> Any:
    """Run `script` (with `args`) in the page until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = driver.execute_script(script, *args)
        if result:
            return result
        time.sleep(0.2)
    raise TimeoutError(f"the page did not show {what} within {timeout} s")


VALUE = (
    "const row = document.querySelector('tr[data-tag=\"netio.voltage\"]');"
    "return row ? row.children[1].firstChild.textContent : null;"
)
CHANGED = VALUE.replace(
    "return row ?", "return row && row.children[1].firstChild.textContent !== arguments[0] ?"
)


def test_page_shows_tags_changing_and_a_trend(
    broker: Mosquitto, browser: Any, tmp_path: Path
) -> None:
    """Chromium sees the line connected, every input tag, the voltage changing and a trend."""
    sim = NetioSimulator("127.0.0.1", broker.port, client_id=DEVICE, period=0.3)
    sim.start()
    args = ["run", NETIO_PROFILE, "--broker", broker.address]
    inputs = netio_inputs()
    try:
        assert sim.wait_connected(5)
        with KomRun(
            [*args, "--sink", f"sqlite:{tmp_path / 'kom.db'}", "--http", "127.0.0.1:0"]
        ) as run:
            browser.get(run.url + "#netio.voltage")
            assert browser.title == "kom status"
            _wait(
                browser,
                "return document.querySelectorAll('#tags tbody tr').length === arguments[0]",
                "every input tag",
                inputs,
            )
            first = _wait(browser, VALUE, "the voltage")
            # The simulator's voltage moves with every message: the page follows.
            _wait(browser, CHANGED, "the voltage changing", first)
            changed = browser.execute_script(VALUE)
            assert changed != first
            lines = browser.execute_script(
                "return [...document.querySelectorAll('#lines .card')].map(c => c.innerText)"
            )
            assert len(lines) == 1
            assert "connected" in lines[0]
            assert broker.address.split(":")[0] in lines[0]
            assert (
                browser.execute_script("return document.getElementById('health').textContent")
                == "healthy"
            )
            stations = browser.execute_script(
                "return document.querySelector('tr[data-station=\"netio\"]').innerText"
            )
            assert "on" in stations.split()
            # The selected tag's trend: a uPlot chart with several points.
            points = _wait(
                browser,
                "return chart && chart.data[0].length >= 5 ? chart.data[0].length : 0",
                "a trend of 5 points",
                timeout=20,
            )
            assert points >= 5
            assert browser.execute_script("return document.querySelector('#trend canvas') !== null")
            # Clicking another tag shows its trend instead.
            browser.execute_script(
                "document.querySelector('tr[data-tag=\"netio.frequency\"]').click()"
            )
            _wait(browser, "return chartTag === 'netio.frequency'", "the frequency trend")
            assert browser.current_url.endswith("#netio.frequency")
            browser.execute_script(
                "document.querySelector('tr[data-tag=\"netio.voltage\"]').click()"
            )
            _wait(
                browser,
                "return chartTag === 'netio.voltage' && chart.data[0].length >= 5",
                "voltage again",
            )
            ARTIFACTS.mkdir(exist_ok=True)
            assert browser.save_screenshot(str(ARTIFACTS / "status-page.png"))
            # A phone's width: nothing wider than the screen but the tables' own scrolling.
            browser.set_window_size(390, 1600)
            _wait(browser, "return chart && chart.width <= 390", "the chart resized", timeout=10)
            assert browser.save_screenshot(str(ARTIFACTS / "status-page-phone.png"))
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0
            # ... and the tags' table, the one a person reads there, needs no sideways scrolling.
            table_overflow = browser.execute_script(
                "const box = document.querySelector('#tags').parentElement;"
                "return box.scrollWidth - box.clientWidth"
            )
            assert table_overflow <= 0
    finally:
        sim.stop()
