"""The three packages as users get them. Their wheels and sdists, built as the READMEs say, carry
the Apache-2.0 LICENSE, the package's README as long description, project URLs and classifiers.
The tms-client wheel on its own: installed into a fresh virtual environment with only its
declared dependencies, its typed stubs imported and type-checked, a live server called. All three
installed from the source folders in the READMEs' order: the READMEs' examples run as written."""

from __future__ import annotations

import email.parser
import hashlib
import os
import re
import shlex
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from email.message import Message
from pathlib import Path

import pytest
from PIL import Image

from tests.support import EXAMPLE_NAMES, ROOT, ServerProcess

# The SHA-256 of the Apache License 2.0 exactly as the ASF publishes it (LICENSE-2.0.txt).
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
REPOSITORY = "https://github.com/tinymodelserver/tms"
# distribution name -> its folder in the repository
PACKAGES = {"tms-client": "python_client", "tms-server": "server", "tms-cli": "cli_client"}

pytestmark = pytest.mark.slow

USER_CODE = """
    import numpy as np
    from tms.v1 import model_service_pb2, model_service_pb2_grpc
    import grpc
    from tms_client import ModelClient

    def mean_over_stub(target: str) -> str:
        with grpc.insecure_channel(target) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            reply = stub.ListModels(model_service_pb2.ListModelsRequest())
            names: list[str] = [m.name for m in reply.models]
            return ",".join(names)

    def mean_over_client(target: str) -> float:
        with ModelClient("mean", target) as client:
            result = client.run_image(np.full((8, 8, 3), 3, np.uint8))
            return float(result["mean"])
"""


def run(*command: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, cwd=cwd, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The sdists and wheels of the three packages, built by the READMEs' command."""
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "uv", "build", "--all-packages", "-o", out, cwd=ROOT)
    return out


def built(dist: Path, name: str, suffix: str) -> Path:
    """The one wheel (suffix .whl) or sdist (.tar.gz) of distribution ``name`` in ``dist``."""
    (path,) = dist.glob(f"{name.replace('-', '_')}-*{suffix}")
    return path


@pytest.fixture(scope="module")
def venv(tmp_path_factory, dist) -> Path:
    """A fresh virtual environment with the tms-client wheel, its dependencies and the
    ``types`` extra (stubs of grpcio and protobuf), nothing else."""
    uv = [sys.executable, "-m", "uv"]
    work = tmp_path_factory.mktemp("packaging")
    wheel = built(dist, "tms-client", ".whl")
    run(*uv, "venv", "--quiet", "--python", sys.executable, work / "venv")
    python = work / "venv" / "bin" / "python"
    run(*uv, "pip", "install", "--quiet", "--python", python, f"{wheel}[types]")
    return python


def test_only_declared_dependencies_are_installed(venv):
    installed = run(sys.executable, "-m", "uv", "pip", "list", "--python", venv).lower()
    for name in ("tms-client", "grpcio", "protobuf", "numpy"):
        assert name in installed
    for name in ("pillow", "opencv", "tms-server", "grpcio-tools"):
        assert name not in installed


def test_stubs_are_typed_and_a_live_server_answers(venv, example_server, tmp_path):
    module = tmp_path / "user_code.py"
    module.write_text(textwrap.dedent(USER_CODE))
    script = (
        "import sys, user_code; "
        "print(user_code.mean_over_stub(sys.argv[1])); "
        "print(user_code.mean_over_client(sys.argv[1]))"
    )
    out = run(venv, "-c", script, example_server.target, cwd=tmp_path).split()
    assert out == [",".join(EXAMPLE_NAMES), "3.0"]
    site = Path(run(venv, "-c", "import tms, sys; print(tms.__path__[0])").strip())
    assert (site / "py.typed").is_file()
    assert (site / "v1" / "model_service_pb2.pyi").is_file()
    assert (site.parent / "tms_client" / "py.typed").is_file()
    # mypy (from the dev environment) checks user code against the installed package only.
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--python-executable"]
    run(*mypy, venv, module, cwd=tmp_path)
    broken = tmp_path / "broken.py"
    broken.write_text(
        "from tms.v1 import model_service_pb2\nmodel_service_pb2.RunImageRequest(model=3)\n"
    )
    result = subprocess.run(
        [*map(str, mypy), str(venv), str(broken)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1
    assert 'Argument "model" to "RunImageRequest" has incompatible type "int"' in result.stdout


def test_wheel_has_no_server_code(dist):
    names = zipfile.ZipFile(built(dist, "tms-client", ".whl")).namelist()
    assert "tms/v1/model_service_pb2_grpc.pyi" in names
    assert not any(name.startswith("tms_server/") for name in names)


# -- license, long description, project URLs, classifiers ------------------------------------


def metadata(wheel: Path) -> Message:
    """The core metadata (METADATA) of a wheel; its body is the long description."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.BytesParser().parsebytes(archive.read(name))


def test_the_license_is_apache_2_0_and_each_package_has_the_same_copy():
    license_text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.sha256(license_text).hexdigest() == APACHE_2_0_SHA256
    for folder in PACKAGES.values():  # a wheel takes no file from outside its folder
        assert (ROOT / folder / "LICENSE").read_bytes() == license_text, folder


@pytest.mark.parametrize("name", PACKAGES)
def test_wheel_metadata(dist, name):
    wheel = built(dist, name, ".whl")
    meta = metadata(wheel)
    assert meta["Name"] == name
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    with zipfile.ZipFile(wheel) as archive:
        (license_file,) = [
            n for n in archive.namelist() if n.endswith(".dist-info/licenses/LICENSE")
        ]
        assert archive.read(license_file) == (ROOT / "LICENSE").read_bytes()
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["Author"] == "TMS contributors"
    # The long description is the package's README, and that is more than a heading.
    readme = (ROOT / PACKAGES[name] / "README.md").read_text()
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload() == readme
    assert readme.startswith(f"# {name}\n\n")
    assert "\n## Install\n" in readme
    assert f"pip install ./{PACKAGES[name]}" in readme
    assert "python3 -m uv build --all-packages -o dist" in readme
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL") or [])
    assert set(urls) == {"Homepage", "Documentation", "Source", "Issues"}
    assert urls["Homepage"] == REPOSITORY
    assert urls["Source"] == f"{REPOSITORY}/tree/main/{PACKAGES[name]}"
    assert urls["Issues"] == f"{REPOSITORY}/issues"
    assert urls["Documentation"].startswith(REPOSITORY)
    classifiers = meta.get_all("Classifier") or []
    for version in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert "Typing :: Typed" in classifiers
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    assert any(c.startswith("Intended Audience :: ") for c in classifiers)
    assert any(c.startswith("Operating System :: ") for c in classifiers)
    assert any(c.startswith("Topic :: ") for c in classifiers)
    # The license is the SPDX expression alone (PEP 639): no License :: classifier beside it.
    assert not any(c.startswith("License :: ") for c in classifiers)
    assert meta["Keywords"]


@pytest.mark.parametrize("name", PACKAGES)
def test_sdist_has_the_license_and_the_readme(dist, name):
    sdist = built(dist, name, ".tar.gz")
    top = sdist.name.removesuffix(".tar.gz")
    with tarfile.open(sdist) as archive:
        license_file = archive.extractfile(f"{top}/LICENSE")
        readme = archive.extractfile(f"{top}/README.md")
        assert license_file is not None
        assert readme is not None
        assert license_file.read() == (ROOT / "LICENSE").read_bytes()
        assert readme.read() == (ROOT / PACKAGES[name] / "README.md").read_bytes()


# -- the READMEs, as a new user follows them ----------------------------------------------------

FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
README_TARGET = "localhost:50051"


def blocks(folder: str, language: str) -> list[str]:
    """The fenced code blocks of one language in a package's README."""
    text = (ROOT / folder / "README.md").read_text()
    return [body for lang, body in FENCE.findall(text) if lang == language]


def install_lines(folder: str, kind: str) -> list[list[str]]:
    """The arguments of each ``pip install`` line of a package README that installs from the
    source folders (kind "folder") or from the built wheels (kind "wheel")."""
    lines = [
        shlex.split(line, comments=True)[2:]
        for block in blocks(folder, "sh")
        for line in block.splitlines()
        if line.startswith("pip install ")
    ]
    wheels = [args for args in lines if args[0].startswith("dist/")]
    return wheels if kind == "wheel" else [args for args in lines if args not in wheels]


def fresh_venv(work: Path) -> Path:
    run(sys.executable, "-m", "uv", "venv", "--quiet", "--python", sys.executable, work / "venv")
    return work / "venv" / "bin"


@pytest.fixture(scope="module")
def from_folders(tmp_path_factory) -> Path:
    """A fresh virtual environment where each README's install-from-a-clone lines have run, in
    the order of the packages (tms-client first); its bin folder."""
    bin_dir = fresh_venv(tmp_path_factory.mktemp("from-folders"))
    for folder in PACKAGES.values():
        lines = install_lines(folder, "folder")
        assert lines, f"{folder}/README.md shows no pip install from the clone"
        for args in lines:
            uv_pip = [sys.executable, "-m", "uv", "pip", "install", "--quiet"]
            run(*uv_pip, "--python", bin_dir / "python", *args, cwd=ROOT)
    return bin_dir


def test_the_readmes_wheel_lines_install_every_package(dist, tmp_path):
    bin_dir = fresh_venv(tmp_path)
    uv_pip = [
        sys.executable,
        "-m",
        "uv",
        "pip",
        "install",
        "--quiet",
        "--python",
        bin_dir / "python",
    ]
    for folder in PACKAGES.values():
        lines = install_lines(folder, "wheel")
        assert lines, f"{folder}/README.md shows no pip install of the wheels"
        for args in lines:
            wheels = [path for arg in args for path in dist.glob(arg.removeprefix("dist/"))]
            assert len(wheels) == len(args), args
            run(*uv_pip, *wheels)
    assert run(bin_dir / "tms-server", "--version").startswith("tms-server 0.1.0")
    assert run(bin_dir / "tms", "--version").startswith("tms 0.1.0 (tms-client 0.1.0)")


def expected_prints(block: str) -> list[str]:
    """What each ``print(...)  # OUTPUT`` line of a snippet says it prints."""
    return [line.split("  # ", 1)[1] for line in block.splitlines() if "print(" in line]


def test_the_readmes_examples_run_as_written(from_folders, tmp_path):
    # tms-server's README: the model file, and the command that serves it.
    (model,) = [b for b in blocks("server", "python") if b.startswith("# models/")]
    path = tmp_path / model.splitlines()[0].removeprefix("# ")
    path.parent.mkdir(parents=True)
    path.write_text(model)
    (serve,) = [
        line
        for b in blocks("server", "sh")
        for line in b.splitlines()
        if line.startswith("tms-server ")
    ]
    argv = shlex.split(serve)
    server = ServerProcess(
        subprocess.Popen(
            [str(from_folders / argv[0]), *argv[1:], "--host", "127.0.0.1", "--port", "0"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    )
    try:
        assert server.wait_started(60), server.logs()
        promised = re.search(
            r"It prints `(tms-server: serving on [^`]*)`",
            (ROOT / "server" / "README.md").read_text(),
        )
        assert promised, "server/README.md no longer says what tms-server prints"
        said = [line for line in server.output if line.startswith("tms-server: serving on")]
        assert said[0].strip().replace(server.target, "0.0.0.0:50051") == promised.group(1)

        # tms-client's README: the snippet prints what its comments say.
        (snippet,) = [b for b in blocks("python_client", "python") if "ModelClient(" in b]
        out = run(from_folders / "python", "-c", snippet.replace(README_TARGET, server.target))
        assert out.splitlines() == expected_prints(snippet)

        # tms-cli's README: each command of the console session prints what it shows.
        Image.new("RGB", (64, 48), (200, 200, 200)).save(tmp_path / "grey.png")
        env = {**os.environ, "PATH": f"{from_folders}{os.pathsep}{os.environ['PATH']}"}
        (session,) = blocks("cli_client", "console")
        steps = re.findall(r"^\$ (.*)\n((?:(?!\$ ).*\n)*)", session, re.MULTILINE)
        assert len(steps) >= 3
        for command, shown in steps:
            argv = shlex.split(command.replace(README_TARGET, server.target))
            if argv[0] == "export":
                key, value = argv[1].split("=", 1)
                env[key] = value
                continue
            argv[0] = str(from_folders / argv[0])
            result = subprocess.run(
                argv, capture_output=True, text=True, cwd=tmp_path, env=env, check=False
            )
            assert (result.returncode, result.stdout) == (0, shown), result.stderr
    finally:
        server.stop()
