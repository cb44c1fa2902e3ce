"""Baselines beside kom's drain: gmqtt with a hand-written pipeline, and MQTT.js (node).

`gmqtt`: gmqtt (asyncio) receives; its on_message decodes the 12 fields of the workload by
hand, with orjson and the conversions kom makes (ISO time to an aware datetime, the uptime to a
timedelta, analogs to float, the counter to int, digitals to bool), and builds the same
`Update` records kom hands out, handed over in lists as kom's callback gets them. It is the
floor of a pipeline written for this one document: no routing table, no qualities to decide,
no configuration.

`mqttjs` / `mqttjs-fields`: MQTT.js in node, counting only, or with JSON.parse and the same
12 fields. It is installed by `npm install mqtt` into bench/mqttjs/ (not committed) the first
time; without node and npm, the pipelines are skipped with a printed reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from kom import Quality, Update

MQTTJS = Path(__file__).resolve().parent / "mqttjs"
HANDOVER = 5000  # updates per hand-over, as kom's callback gets them in lists


class HandPipeline:
    """The 12 fields of the workload, decoded by hand into kom's `Update` records."""

    def __init__(self) -> None:
        self.updates = 0
        self.batch: list[Update] = []

    def __call__(self, topic: str, payload: bytes) -> None:
        doc = orjson.loads(payload)
        agent = doc["Agent"]
        gm = doc["GlobalMeasure"]
        outputs = doc["Outputs"]
        ts = datetime.fromisoformat(agent["Time"]).astimezone(UTC)
        now = datetime.now(UTC)
        valid = Quality.VALID
        out1 = outputs[0]
        out2 = outputs[1]
        batch = self.batch
        batch += (
            Update("device_time", ts, valid, None, ts, now, topic),
            Update("uptime", timedelta(seconds=agent["Uptime"]), valid, None, ts, now, topic),
            Update("voltage", float(gm["Voltage"]), valid, None, ts, now, topic),
            Update("frequency", float(gm["Frequency"]), valid, None, ts, now, topic),
            Update("total_current", float(gm["TotalCurrent"]), valid, None, ts, now, topic),
            Update("power_factor", float(gm["OverallPowerFactor"]), valid, None, ts, now, topic),
            Update("total_load", float(gm["TotalLoad"]), valid, None, ts, now, topic),
            Update("total_energy", int(gm["TotalEnergy"]), valid, None, ts, now, topic),
            Update("out1_state", bool(out1["State"]), valid, None, ts, now, topic),
            Update("out1_load", float(out1["Load"]), valid, None, ts, now, topic),
            Update("out2_state", bool(out2["State"]), valid, None, ts, now, topic),
            Update("out2_load", float(out2["Load"]), valid, None, ts, now, topic),
        )
        if len(batch) >= HANDOVER:
            self.updates += len(batch)
            batch.clear()

    def flush(self) -> None:
        self.updates += len(self.batch)
        self.batch.clear()


def drain_gmqtt(
    port: int, client_id: str, qos: int, count: int, timeout: float
) -> tuple[float, int, dict[str, Any]]:
    """gmqtt + the hand-written pipeline: seconds to `count` messages, and how many arrived."""
    return asyncio.run(_drain_gmqtt(port, client_id, count, timeout))


async def _drain_gmqtt(
    port: int, client_id: str, count: int, timeout: float
) -> tuple[float, int, dict[str, Any]]:
    import gmqtt
    from gmqtt.mqtt.constants import MQTTv311

    pipeline = HandPipeline()
    received = 0
    t_end = 0.0
    finished = asyncio.Event()

    def on_message(client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        nonlocal received, t_end
        pipeline(topic, payload)
        received += 1
        if received == count:
            pipeline.flush()
            t_end = time.perf_counter()
            finished.set()
        return 0  # the PUBACK's reason: success

    client = gmqtt.Client(client_id, clean_session=False)
    client.on_message = on_message
    t0 = time.perf_counter()
    await client.connect("127.0.0.1", port, keepalive=60, version=MQTTv311)
    try:
        await asyncio.wait_for(finished.wait(), timeout)
    except TimeoutError:
        t_end = time.perf_counter()
    await client.disconnect()
    return t_end - t0, received, {"updates": pipeline.updates}


def mqttjs_missing() -> str | None:
    """Why MQTT.js cannot run here (None when it can; installs it the first time)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "node and npm are not on PATH"
    if not (MQTTJS / "node_modules" / "mqtt").is_dir():
        done = subprocess.run(
            [npm, "install", "--no-save", "--no-audit", "--no-fund", "--silent", "mqtt@5"],
            cwd=MQTTJS,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            return f"npm install mqtt failed: {done.stderr.strip()[-300:]}"
    return None


def drain_mqttjs(
    port: int, client_id: str, qos: int, count: int, timeout: float, *, fields: bool
) -> tuple[float, int, dict[str, Any]]:
    """MQTT.js in node: seconds to `count` messages (timed inside node), how many arrived."""
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run(
        [
            node,
            "drain.js",
            str(port),
            client_id,
            str(qos),
            str(count),
            "fields" if fields else "count",
        ],
        cwd=MQTTJS,
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        env={**os.environ, "KOM_BENCH_TIMEOUT": str(int(timeout))},
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"MQTT.js drain failed: {done.stderr.strip()[-300:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return float(out["seconds"]), int(out["received"]), {"fields": out["fields"]}
