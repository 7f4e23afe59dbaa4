"""The tms-client wheel on its own: built, installed into a fresh virtual environment with only
its declared dependencies, its typed stubs imported and type-checked, a live server called."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.support import ROOT

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
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with the tms-client wheel, its dependencies and the
    ``types`` extra (stubs of grpcio and protobuf), nothing else."""
    uv = [sys.executable, "-m", "uv"]
    work = tmp_path_factory.mktemp("packaging")
    run(*uv, "build", "--package", "tms-client", "--wheel", "--out-dir", work / "dist", cwd=ROOT)
    wheels = list((work / "dist").glob("tms_client-*.whl"))
    assert len(wheels) == 1
    run(*uv, "venv", "--quiet", "--python", sys.executable, work / "venv")
    python = work / "venv" / "bin" / "python"
    run(*uv, "pip", "install", "--quiet", "--python", python, f"{wheels[0]}[types]")
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
    assert out == ["edges,face,mean,ocr,optical_flow,text_stats,upright", "3.0"]
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


def test_wheel_has_no_server_code(tmp_path):
    dist = tmp_path / "dist"
    run(
        sys.executable,
        "-m",
        "uv",
        "build",
        "--package",
        "tms-client",
        "--wheel",
        "--out-dir",
        dist,
        cwd=ROOT,
    )
    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tms/v1/model_service_pb2_grpc.pyi" in names
    assert not any(name.startswith("tms_server/") for name in names)
