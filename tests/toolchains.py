"""Building the other-language clients and the tritonclient environment for the interop tests.

Each helper runs the toolchain the README documents (Go, npm, uv) and fails loudly when one is
missing: these tests are part of the test command, never skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

GO_MODULE = ROOT / "clients" / "go"
TS_PACKAGE = ROOT / "clients" / "ts"
JAVA_PROJECT = ROOT / "clients" / "java"
TRITONCLIENT_REQUIREMENTS = ROOT / "tests" / "interop" / "tritonclient.txt"
TRITONCLIENT_CALLS = ROOT / "tests" / "interop" / "tritonclient_calls.py"


def find_go() -> str:
    """The ``go`` command: $GO, then PATH, then Go's default install location."""
    for candidate in (os.environ.get("GO"), shutil.which("go"), "/usr/local/go/bin/go"):
        if candidate and Path(candidate).is_file():
            return candidate
    raise RuntimeError("the Go toolchain is needed (https://go.dev/dl/); set GO=/path/to/go")


def find_buf() -> str:
    """buf from the codegen dependencies (beside this Python), else on PATH."""
    beside = Path(sys.executable).with_name("buf")
    found = str(beside) if beside.exists() else shutil.which("buf")
    if found is None:
        raise RuntimeError("buf is missing: run `python3 -m uv sync` (the codegen group)")
    return found


def find_npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("Node.js with npm is needed (https://nodejs.org/)")
    return npm


def run(command: list[str], *, cwd: Path, timeout: float) -> str:
    """Run a build step; on failure raise with its output, so the test report shows why."""
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result.stdout


def build_go_client(out_dir: Path) -> Path:
    """Build clients/go's tms-go command into ``out_dir`` (modules from the Go proxy, pinned by
    go.sum; the Go build cache makes rebuilds fast)."""
    binary = out_dir / "tms-go"
    run([find_go(), "build", "-o", str(binary), "./cmd/tms-go"], cwd=GO_MODULE, timeout=300)
    return binary


def build_ts_client() -> Path:
    """``npm ci`` (when node_modules is missing or older than the lock file) and ``tsc`` in
    clients/ts; returns the built cli.js."""
    lock = TS_PACKAGE / "package-lock.json"
    installed = TS_PACKAGE / "node_modules" / ".package-lock.json"
    if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
        run([find_npm(), "ci", "--no-audit", "--no-fund"], cwd=TS_PACKAGE, timeout=300)
    run([find_npm(), "run", "--silent", "build"], cwd=TS_PACKAGE, timeout=120)
    return TS_PACKAGE / "dist" / "cli.js"


def build_java_client() -> str:
    """``mvn package`` in clients/java; the classpath of its classes, test classes (the
    conformance runner) and dependencies."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError(
            "Maven (mvn) is needed to build clients/java (https://maven.apache.org/)"
        )
    run([mvn, "-q", "-B", "package"], cwd=JAVA_PROJECT, timeout=600)
    target = JAVA_PROJECT / "target"
    dependencies = (target / "classpath.txt").read_text().strip()
    return os.pathsep.join([str(target / "test-classes"), str(target / "classes"), dependencies])


def tritonclient_python(venv: Path) -> Path:
    """A virtual environment of its own holding tritonclient (tests/interop/tritonclient.txt),
    so that its protobuf pin never meets TMS's dependencies; returns its Python."""
    uv = [sys.executable, "-m", "uv"]
    run([*uv, "venv", "--quiet", "--python", sys.executable, str(venv)], cwd=ROOT, timeout=120)
    python = venv / "bin" / "python"
    run(
        [
            *uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            "-r",
            str(TRITONCLIENT_REQUIREMENTS),
        ],
        cwd=ROOT,
        timeout=300,
    )
    return python
