"""The command line's user errors: one clear line on stderr and exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

KOM = [sys.executable, "-m", "kom._cli"]
ROOT = Path(__file__).resolve().parent.parent
NETIO = str(ROOT / "examples" / "netio-4all.toml")


def _kom(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KOM, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def _one_clear_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a refused command printed, after checking the exit status and stderr."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_route_on_an_unknown_line_names_it_and_the_lines_there_are() -> None:
    """`kom route --line nope` says there is no such line and lists the file's lines."""
    line = _one_clear_line(_kom("route", NETIO, "a/b", "--line", "nope"))
    assert "--line 'nope'" in line
    assert "'line'" in line


@pytest.mark.parametrize("url", ["sqlite:/nonexistent-dir/x.db", "jsonl:/nonexistent-dir/x.jsonl"])
def test_run_with_a_sink_that_cannot_be_opened_says_so(url: str) -> None:
    """A sink in a directory that does not exist is refused before anything connects."""
    line = _one_clear_line(_kom("run", NETIO, "--sink", url, "--duration", "1"))
    assert line.startswith(f"kom run: --sink {url!r}: ")


@pytest.mark.parametrize("command", ["run", "write"])
@pytest.mark.parametrize("broker", ["a:b:c", ":99999", "127.0.0.1:70000"])
def test_a_malformed_broker_address_is_refused_in_one_line(command: str, broker: str) -> None:
    """`--broker` that is no HOST[:PORT] is a user error, not a ValueError traceback."""
    args = ["netio.out1", "1"] if command == "write" else ["--duration", "1"]
    line = _one_clear_line(_kom(command, NETIO, *args, "--broker", broker))
    assert line == f"kom {command}: --broker {broker!r}: expected HOST[:PORT] or [IPv6]:PORT"


def test_check_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`kom check FILE | head -1`: no traceback when the reader goes away, the SIGPIPE status."""
    cfg = tmp_path / "many.toml"
    # 3,000 stations print far more than a pipe buffers (64 KiB), so the reader's leaving is met.
    cfg.write_text(
        '[line]\nhost = "b"\n'
        + "".join(f'[[station]]\nname = "s{i}"\naddress = "plant/{i}"\n' for i in range(3000))
    )
    proc = subprocess.Popen(
        [*KOM, "check", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()  # the reader leaves, as `head -1` does
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err, err.decode()
    assert err == b""
    assert proc.returncode == 141


def test_check_warns_when_tls_verification_is_off(tmp_path: Path) -> None:
    """`kom check` accepts `tls.verify = false` but warns that the broker is not checked."""
    cfg = tmp_path / "insecure.toml"
    cfg.write_text('[line]\nhost = "b"\ntls = { verify = false }\n')
    result = _kom("check", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "warning: line.tls.verify = false" in result.stderr
    secure = tmp_path / "secure.toml"
    secure.write_text('[line]\nhost = "b"\ntls = true\n')
    assert "warning" not in _kom("check", str(secure)).stderr


@pytest.mark.parametrize(
    ("tag", "why"),
    [
        ("s.level", "Ai is not an output type"),
        ("s.relay", "the tag has neither OUT_VALUE nor publish"),
    ],
)
def test_write_of_a_tag_that_cannot_publish_is_refused_before_connecting(
    tmp_path: Path, tag: str, why: str
) -> None:
    """`kom write` to an input, or to an output that only reads its state back, is a user error."""
    cfg = tmp_path / "w.toml"
    cfg.write_text(
        '[line]\nhost = "127.0.0.1:1"\npayload_type = "json"\n'
        '[[station]]\nname = "s"\naddress = "a"\n'
        '[[station.tag]]\nname = "level"\ntype = "Ai"\naddress = "JA=level"\n'
        '[[station.tag]]\nname = "relay"\ntype = "Do"\naddress = "JA=relay"\n'
    )
    line = _one_clear_line(_kom("write", str(cfg), tag, "1", "--timeout", "30"))
    assert line == f"kom write: {tag}: {why} [not-output]"


def test_route_with_a_payload_file_that_cannot_be_read_says_so() -> None:
    """`kom route --payload-file` of a missing file is one line and exit 2."""
    line = _one_clear_line(_kom("route", NETIO, "a/b", "--payload-file", "/nonexistent/frame.bin"))
    assert line == (
        "kom route: --payload-file '/nonexistent/frame.bin': cannot read it: "
        "No such file or directory"
    )
