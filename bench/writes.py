"""Writes: QoS 1 PUBLISHes from output tags, each with a completion future.

kom: a line with publish_qos = 1 and a station whose output tag has
`publish = { topic, payload }` (the NETIO SetOutputs command); K calls of
`Kom.write()` are fired at once from the main thread, then every future is awaited
(each completes on its PUBACK). Baseline: paho publishing the same K QoS 1 messages with
the same in-flight window as kom's session (1,000), waiting for every on_publish.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from kom import Kom, WriteResult, loads

from ._common import Broker, Report, Row, Settings, fmt, median_spread
from ._workload import line_block

ROOT = Path(__file__).resolve().parent.parent
GOAL = 10_000
#: Issue 13: writes with completion >= 3x paho's publish + on_publish, in the same run.
PAHO_GOAL = 3.0
TOPIC = "devices/dev0001/messages/devicebound/"
PAYLOAD = '{"Operation":"SetOutputs","Outputs":[{"ID":1,"Action":{value}}]}'
INFLIGHT = 1000  # kom's Session sets paho's max_inflight_messages to this
MODES = ("kom", "paho", "kom-seq", "paho-seq")


def config_text(port: int, client_id: str) -> str:
    return (
        line_block(port, client_id, 1, clean_session=True, extra="publish_qos = 1\n")
        + '\n[[station]]\nname = "netio"\naddress = "devices/dev0001/messages/events/"\n'
        + '[[station.tag]]\nname = "out1_action"\ntype = "Co"\n'
        + f"publish = {{ topic = {_q(TOPIC)}, payload = {_q(PAYLOAD)} }}\n"
    )


def _q(text: str) -> str:
    return "'" + text + "'"  # a TOML literal string: no escapes in the JSON template


def kom_writes(port: int, count: int, run_index: int, one_at_a_time: bool) -> tuple[float, int]:
    kom = Kom(loads(config_text(port, f"bench-writes-kom-{run_index}")), iterate=False)
    kom.start()
    if not kom.wait_connected(10):
        raise RuntimeError("kom did not connect")
    time.sleep(0.1)
    t0 = time.perf_counter()
    if one_at_a_time:
        ok = 0
        for i in range(count):
            future = kom.write("netio.out1_action", i % 6)
            if future.exception(timeout=20) is None:
                ok += 1
        seconds = time.perf_counter() - t0
    else:
        futures: list[Future[WriteResult]] = [
            kom.write("netio.out1_action", i % 6) for i in range(count)
        ]
        done, _ = wait(futures, timeout=max(60.0, count / 500))
        seconds = time.perf_counter() - t0
        ok = sum(1 for f in done if f.exception() is None)
    kom.close()
    return seconds, ok


def paho_writes(port: int, count: int, run_index: int, one_at_a_time: bool) -> tuple[float, int]:
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-writes-paho-{run_index}", clean_session=True
    )
    client.max_inflight_messages_set(INFLIGHT)
    client.max_queued_messages_set(0)
    acked = 0
    all_done = threading.Event()
    connected = threading.Event()

    def on_publish(c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
        nonlocal acked
        acked += 1
        if acked >= count:
            all_done.set()

    client.on_publish = on_publish
    client.on_connect = lambda *args: connected.set()
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError("paho did not connect")
    t0 = time.perf_counter()
    for i in range(count):
        info = client.publish(TOPIC, PAYLOAD.replace("{value}", str(i % 6)), 1)
        if one_at_a_time:
            info.wait_for_publish(20)
    all_done.wait(max(60.0, count / 500))
    seconds = time.perf_counter() - t0
    client.disconnect()
    client.loop_stop()
    return seconds, acked


def _measure(name: str, port: int, count: int, run_index: int) -> dict[str, Any]:
    """One measurement in a fresh interpreter, so that a hang cannot stop the suite.

    On a time-out the child's threads are dumped with py-spy (when installed) and it is killed.
    """
    limit = 10.0 + count / 2000
    cmd = [
        sys.executable,
        "-m",
        "bench.writes",
        "--child",
        name,
        str(port),
        str(count),
        str(run_index),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        dump = _py_spy_dump(proc.pid)
        proc.kill()
        proc.communicate()
        return {"hung": True, "limit": limit, "dump": dump}
    if proc.returncode != 0:
        raise RuntimeError(f"writes child {name} failed:\n{err}")
    result: dict[str, Any] = json.loads(out)
    return result


def _py_spy_dump(pid: int) -> str:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return "(py-spy not installed: no thread dump)"
    try:
        done = subprocess.run(
            [spy, "dump", "--pid", str(pid)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(py-spy dump failed: {exc})"
    return done.stdout or done.stderr


def _stuck_at(dump: str) -> str:
    """The innermost kom frames of each thread of a py-spy dump, one line."""
    out = []
    thread = ""
    for line in dump.splitlines():
        if line.startswith("Thread "):
            thread = line.split('"')[1] if '"' in line else line
            seen = False
        elif thread and "(kom/" in line and not seen:
            out.append(f"{thread}: {line.strip()}")
            seen = True
    return "; ".join(out) or "(no kom frames)"


def run(settings: Settings) -> Report:
    report = Report("writes", "QoS 1 writes with completion futures, writes/s")
    count = 5_000 if settings.quick else 20_000
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    hung: set[str] = set()
    problems: list[str] = []
    with Broker() as broker:
        report.settings["broker"] = broker.describe()
        report.settings["workload"] = (
            f"{count:,} writes of a Co output tag with publish = {{topic, payload}} (NETIO "
            "SetOutputs JSON), publish_qos 1, fired at once from one thread, then all awaited; "
            "each measurement in a fresh interpreter"
        )
        report.settings["runs"] = f"median of {settings.runs} [min..max]"
        for run_index in range(settings.runs):
            for name in MODES:
                if name in hung:
                    continue  # once hung, not again: each hang costs the whole time limit
                n = count // 5 if name.endswith("-seq") else count
                result = _measure(name, broker.port, n, run_index)
                if result.get("hung"):
                    hung.add(name)
                    rates[name].append(0.0)
                    stuck = _stuck_at(result["dump"])
                    problems.append(
                        f"{name} run {run_index + 1}: HUNG, no completion within "
                        f"{result['limit']:.0f} s; threads: {stuck}"
                    )
                    report.extra.setdefault("dumps", []).append(result["dump"])
                    print(f"   [writes] run {run_index + 1} {name:<8} HUNG ({stuck})", flush=True)
                    continue
                ok, seconds = result["ok"], result["seconds"]
                rates[name].append(ok / seconds)
                if ok < n:
                    problems.append(f"{name} run {run_index + 1}: {ok:,} of {n:,} completed")
                print(
                    f"   [writes] run {run_index + 1} {name:<8} {fmt(ok / seconds, 'writes/s')}",
                    flush=True,
                )
    value, spread = median_spread(rates["kom"])
    base = median_spread(rates["paho"])[0]
    hung_display = "HUNG (no completion)" if not any(rates["kom"]) else None
    report.rows.append(
        Row(
            "QoS 1 writes, futures completed on PUBACK",
            value,
            "writes/s",
            f"paho publish + on_publish, inflight {INFLIGHT}",
            base,
            f">= {PAHO_GOAL:g}x paho",
            value >= PAHO_GOAL * base,
            spread,
            display=hung_display,
        )
    )
    report.rows.append(
        Row(
            "QoS 1 writes, futures completed on PUBACK (absolute)",
            value,
            "writes/s",
            goal=f">= {GOAL:,} writes/s",
            met=value >= GOAL,
            spread=spread,
            display=hung_display,
        )
    )
    value, spread = median_spread(rates["kom-seq"])
    report.rows.append(
        Row(
            "QoS 1 writes one at a time (each awaited)",
            value,
            "writes/s",
            "paho, each wait_for_publish",
            median_spread(rates["paho-seq"])[0],
            spread=spread,
        )
    )
    pairs = [
        f"{k / p:.2f}x" if p else "-" for k, p in zip(rates["kom"], rates["paho"], strict=False)
    ]
    report.notes.append(
        "kom / paho by run (each run measures both, one after the other): " + ", ".join(pairs)
    )
    report.notes.append(
        f"one at a time: {count // 5:,} writes, each future awaited before the next write "
        "(a round trip each; no writes overlap)."
    )
    report.notes.extend(problems)
    return report


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        fn = kom_writes if sys.argv[2].startswith("kom") else paho_writes
        secs, done_ok = fn(
            int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[2].endswith("-seq")
        )
        print(json.dumps({"seconds": secs, "ok": done_ok}))
    else:
        sys.exit("usage: python -m bench.writes --child kom|paho PORT COUNT RUN")
