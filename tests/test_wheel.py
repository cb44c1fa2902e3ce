"""A built wheel installs with pipx into a fresh place and its `kom` runs (docs/deploy.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: What a clean checkout does not have: left out of the copy the wheel is built from.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
    "test-artifacts", "*.db", "*.db-*",
)  # fmt: skip


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_wheel_installs_with_pipx_and_runs(tmp_path: Path) -> None:
    """`pip wheel` builds kom; `pipx install` puts it in its own venv; `kom check` works there."""
    try:
        import pipx  # noqa: F401 - only whether it is there
    except ImportError:
        pytest.skip("pipx is not installed (the dev extra has it)")
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    env = {
        **os.environ,
        "PIPX_HOME": str(tmp_path / "pipx"),
        "PIPX_BIN_DIR": str(tmp_path / "bin"),
        "PIPX_MAN_DIR": str(tmp_path / "man"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), "."],
        env,
        source,
    )
    (wheel,) = wheels.glob("kom-*.whl")
    _run([sys.executable, "-m", "pipx", "install", str(wheel)], env, tmp_path)
    kom = tmp_path / "bin" / "kom"
    assert kom.exists()
    assert "check" in _run([str(kom), "--help"], env, tmp_path)
    out = _run([str(kom), "check", str(ROOT / "examples" / "netio-4all.toml")], env, tmp_path)
    assert "OK" in out
    assert "station netio" in out
    # The status page's files are in the wheel, read the way the server reads them.
    python = tmp_path / "pipx" / "venvs" / "kom" / "bin" / "python"
    files = _run(
        [str(python), "-c",
         "from importlib import resources; from kom.http._server import STATIC; "
         "print(*(len(resources.files('kom.http').joinpath('static', n).read_bytes()) "
         "for n in ['index.html', *STATIC]))"],
        env, tmp_path,
    )  # fmt: skip
    assert all(int(size) > 0 for size in files.split())
    assert len(files.split()) == 6
