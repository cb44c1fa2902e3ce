"""Shared fixtures: brokers the tests start themselves, unique topics, the Hypothesis profile."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings

from tests._broker import BrokerFactory, Mosquitto, mosquitto_binary

# CI machines are slower and shared: no per-example deadline, and the same examples every run so
# that a red build can be reproduced.
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

BROKER_FIXTURES = frozenset({"broker", "broker_factory"})
NO_MOSQUITTO = "mosquitto is not installed (scripts/setup installs it); broker tests need it"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests that start a broker, and leave `slow` tests out unless -m asks for them."""
    for item in items:
        if BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.broker)
    if config.option.markexpr:
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]


def _require_mosquitto() -> None:
    if mosquitto_binary() is None:
        pytest.skip(NO_MOSQUITTO)


@pytest.fixture
def broker_factory() -> Iterator[BrokerFactory]:
    """Make any number of brokers with `Mosquitto` options; all are closed after the test."""
    _require_mosquitto()
    made: list[Mosquitto] = []

    def make(**options: Any) -> Mosquitto:
        instance = Mosquitto(**options)
        made.append(instance)
        return instance

    try:
        yield make
    finally:
        for instance in reversed(made):
            instance.close()


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> Mosquitto:
    """A plain mosquitto (anonymous, no TLS, no persistence) for this test alone."""
    return broker_factory()


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix no other test uses: the test's name plus a short random suffix."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", request.node.name).strip("_")[:60]
    return f"kom-test/{name}-{secrets.token_hex(3)}"


@pytest.fixture(autouse=True, scope="session")
def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """kom's state (the subscriptions of kept sessions) in a directory of the test run's own."""
    before = os.environ.get("KOM_STATE_DIR")
    os.environ["KOM_STATE_DIR"] = str(tmp_path_factory.mktemp("kom-state"))
    yield
    if before is None:
        os.environ.pop("KOM_STATE_DIR", None)
    else:
        os.environ["KOM_STATE_DIR"] = before


@pytest.fixture
def no_backoff() -> Iterator[None]:
    """Reconnect without back-off pauses for this test (`pytestmark = usefixtures(...)`)."""
    from kom._backoff import set_testing

    set_testing(True)
    yield
    set_testing(False)
