"""Regenerate every stub from the buf modules (proto/, proto-oip/); ``--check`` fails on drift.

Run from anywhere: ``uv run python codegen/generate.py [--check]``. One buf template per
target (``codegen/buf.gen.*.yaml``):

- python: tms.v1 for tms-client (python_client/src/tms/v1)
- oip: the Open Inference Protocol messages for the server (server/src/tms_server/_gen)
- go: tms.v1 for the Go client (clients/go/gen)
- ts: tms.v1 for the TypeScript client (clients/ts/src/gen), and the google.rpc error details it
  decodes (google/rpc/status.proto, error_details.proto), which npm has no package of: the same
  template run on those files of googleapis-common-protos (a dependency of tms-client, pinned in
  uv.lock)
- java: tms.v1 for the Java client (clients/java/src/main/java/io/tinymodelserver/tms/v1)

Every generator is pinned: the Python ones in the ``codegen`` dependency group of the root
pyproject.toml (uv.lock), protoc-gen-go and protoc-gen-go-grpc as tools in clients/go/go.mod
(built into codegen/.bin), ts-proto in clients/ts/package-lock.json (installed by ``npm ci``),
protoc and protoc-gen-grpc-java in clients/java/pom.xml (fetched from Maven Central into
codegen/.bin). So this needs Go, Node.js (with npm) and Maven besides uv.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GO_MODULE = ROOT / "clients" / "go"
TS_PACKAGE = ROOT / "clients" / "ts"
JAVA_PROJECT = ROOT / "clients" / "java"
PLUGIN_BIN = ROOT / "codegen" / ".bin"
# Hand-written files inside generated folders (package markers), kept and not compared.
HANDWRITTEN = {"__init__.py", "py.typed"}


@dataclass(frozen=True)
class Target:
    """One buf template and the folders (relative to the root) whose files it writes."""

    name: str
    template: str
    folders: tuple[Path, ...]
    #: googleapis protos (from googleapis-common-protos) also generated with the template.
    googleapis: tuple[str, ...] = ()


TARGETS = (
    Target("python", "codegen/buf.gen.python.yaml", (Path("python_client/src/tms/v1"),)),
    Target("oip", "codegen/buf.gen.oip.yaml", (Path("server/src/tms_server/_gen/inference"),)),
    Target("go", "codegen/buf.gen.go.yaml", (Path("clients/go/gen"),)),
    Target(
        "ts",
        "codegen/buf.gen.ts.yaml",
        (Path("clients/ts/src/gen"),),
        googleapis=("google/rpc/status.proto", "google/rpc/error_details.proto"),
    ),
    Target(
        "java",
        "codegen/buf.gen.java.yaml",
        (Path("clients/java/src/main/java/io/tinymodelserver/tms/v1"),),
    ),
)
# Maven Central's classifiers of protoc and protoc-gen-grpc-java executables.
MAVEN_CLASSIFIERS = {
    ("Linux", "x86_64"): "linux-x86_64",
    ("Linux", "aarch64"): "linux-aarch_64",
    ("Darwin", "x86_64"): "osx-x86_64",
    ("Darwin", "arm64"): "osx-aarch_64",
}
JAVA_PLUGINS = ("protoc", "protoc-gen-grpc-java")


def find_go() -> str:
    """The ``go`` command: $GO, then PATH, then the default install location."""
    for candidate in (os.environ.get("GO"), shutil.which("go"), "/usr/local/go/bin/go"):
        if candidate and Path(candidate).is_file():
            return candidate
    raise SystemExit("generate.py needs Go (https://go.dev/dl/); set GO=/path/to/go")


def find_npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("generate.py needs Node.js with npm (https://nodejs.org/)")
    return npm


def find_mvn() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise SystemExit("generate.py needs Maven (https://maven.apache.org/)")
    return mvn


def fetch_java_plugins() -> None:
    """protoc and protoc-gen-grpc-java at the versions clients/java/pom.xml pins, from Maven
    Central into codegen/.bin, when missing or older than the pom."""
    pom = JAVA_PROJECT / "pom.xml"
    paths = [PLUGIN_BIN / name for name in JAVA_PLUGINS]
    if all(p.is_file() and p.stat().st_mtime >= pom.stat().st_mtime for p in paths):
        return
    key = (platform.system(), platform.machine())
    if key not in MAVEN_CLASSIFIERS:
        raise SystemExit(f"no protoc build on Maven Central for {key}")
    subprocess.run(
        [
            find_mvn(),
            "-q",
            "-B",
            "dependency:copy@codegen-plugins",
            f"-Dcodegen.classifier={MAVEN_CLASSIFIERS[key]}",
            f"-Dcodegen.bin={PLUGIN_BIN}",
            "-Dmdep.overWriteReleases=true",
        ],
        cwd=JAVA_PROJECT,
        check=True,
    )
    for path in paths:
        path.chmod(0o755)  # Maven copies files, not modes
        path.touch()  # Maven keeps the artifact's date: mark it fetched for this pom


def install_plugins() -> None:
    """Build the pinned Go plugins, install the pinned npm one and fetch the pinned Java ones,
    when missing or stale."""
    env = {**os.environ, "GOBIN": str(PLUGIN_BIN)}
    # `go install tool` builds the tools listed in go.mod; a no-op when its cache is warm.
    subprocess.run([find_go(), "install", "tool"], cwd=GO_MODULE, env=env, check=True)
    lock = TS_PACKAGE / "package-lock.json"
    installed = TS_PACKAGE / "node_modules" / ".package-lock.json"
    if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(
            [find_npm(), "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=TS_PACKAGE,
            check=True,
        )
    fetch_java_plugins()


def _googleapis_module(protos: tuple[str, ...], folder: Path) -> Path:
    """A buf module in `folder` holding `protos` as googleapis-common-protos installs them
    (beside google/rpc/status_pb2.py), under their import paths."""
    spec = importlib.util.find_spec("google.rpc.status_pb2")
    if spec is None or spec.origin is None:
        raise SystemExit("generate.py needs googleapis-common-protos (uv sync)")
    root = Path(spec.origin).parent.parent.parent  # site-packages/google/rpc/status_pb2.py
    for proto in protos:
        (folder / proto).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / proto, folder / proto)
    return folder


def _buf_generate(template: str, out: Path, source: Path | None = None) -> None:
    """Run a template on its own inputs, or on the module at `source`."""
    env = dict(os.environ)
    # Templates call `python`: make it this interpreter, whose environment has the pins.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    inputs = [str(source)] if source else []
    subprocess.run(
        ["buf", "generate", *inputs, "--template", template, "--output", str(out)],
        cwd=ROOT,
        env=env,
        check=True,
    )


def _generated_files(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name not in HANDWRITTEN and "__pycache__" not in p.parts
    }


def _drift(fresh_root: Path) -> list[str]:
    problems = []
    for target in TARGETS:
        for rel in target.folders:
            fresh, committed = fresh_root / rel, ROOT / rel
            fresh_files, committed_files = _generated_files(fresh), _generated_files(committed)
            for name in sorted(fresh_files - committed_files):
                problems.append(f"missing: {rel / name}")
            for name in sorted(committed_files - fresh_files):
                problems.append(f"stale: {rel / name}")
            for name in sorted(fresh_files & committed_files):
                if not filecmp.cmp(fresh / name, committed / name, shallow=False):
                    problems.append(f"differs: {rel / name}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if committed stubs drift")
    args = parser.parse_args()
    install_plugins()
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as protos:
        fresh_root = Path(tmp)
        for target in TARGETS:
            _buf_generate(target.template, fresh_root)
            if target.googleapis:
                module = _googleapis_module(target.googleapis, Path(protos) / target.name)
                _buf_generate(target.template, fresh_root, module)
        if args.check:
            problems = _drift(fresh_root)
            if problems:
                print("generated code drifted from proto/; run: uv run python codegen/generate.py")
                print("\n".join(f"  {p}" for p in problems))
                return 1
            print("generated code is up to date")
            return 0
        for target in TARGETS:
            for rel in target.folders:
                folder = ROOT / rel
                for name in _generated_files(folder):
                    (folder / name).unlink()
                shutil.copytree(fresh_root / rel, folder, dirs_exist_ok=True)
                print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
