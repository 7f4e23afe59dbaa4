"""The proto as a contract for people outside this repository.

- Identity: every tms/v1 file names its Go, Java and C# packages, and the Go one is the module
  of clients/go.
- ``buf breaking`` (the lines of scripts/check.sh) compares each buf module with the image of its
  last release kept in git (proto/releases, proto-oip/releases), so it fails when a field goes.
- A stranger who copies only proto/ generates Go, Java and Python with stock generators (no
  managed mode, no M flags) and builds the result: ``go build``, ``javac``, ``import``.

The toolchains come from where a stranger gets them: the Go plugins at the versions pinned in
clients/go/go.mod, protoc and grpc-java's plugin and jars from Maven Central (through Maven).
Like tests/test_polyglot.py, nothing here is skipped when a tool is missing: it fails.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import google.protobuf
import pytest

from tests.support import ROOT
from tests.toolchains import GO_MODULE, find_go, run
from tms.v1 import admin_service_pb2, image_pb2, model_service_pb2

BIN = Path(sys.executable).parent  # buf and the codegen Python (grpcio-tools) live here
CHECK_SCRIPT = ROOT / "scripts" / "check.sh"
GO_IMPORT_PATH = "github.com/tinymodelserver/tms/clients/go"

# protoc and protobuf-java come from one protobuf release. grpc-java's protoc plugin for
# linux-x86_64 is missing from Maven Central for 1.84.0 to 1.85.1, so 1.83.1 (plugin and jars).
PROTOBUF_JAVA = "4.36.2"
GRPC_JAVA = "1.83.1"
MAVEN_CLASSIFIERS = {
    ("Linux", "x86_64"): "linux-x86_64",
    ("Linux", "aarch64"): "linux-aarch_64",
    ("Darwin", "x86_64"): "osx-x86_64",
    ("Darwin", "arm64"): "osx-aarch_64",
}


def tool_env() -> dict[str, str]:
    """This environment with its bin folder first: ``buf``, and ``python`` with grpcio-tools."""
    return {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])}


def buf(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "buf"), *args],
        cwd=cwd,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- identity -------------------------------------------------------------------------------


def test_every_file_names_its_packages():
    go_module = (GO_MODULE / "go.mod").read_text().splitlines()[0]
    assert go_module == f"module {GO_IMPORT_PATH}"
    for module in (admin_service_pb2, image_pb2, model_service_pb2):
        options = module.DESCRIPTOR.GetOptions()
        stem = Path(module.DESCRIPTOR.name).stem  # image, model_service...
        assert options.go_package == f"{GO_IMPORT_PATH}/gen/tms/v1;tmsv1", stem
        assert options.java_package == "io.tinymodelserver.tms.v1", stem
        assert options.java_multiple_files, stem
        outer = "".join(word.title() for word in stem.split("_")) + "Proto"
        assert options.java_outer_classname == outer, stem
        assert options.csharp_namespace == "TinyModelServer.Tms.V1", stem


# --- buf breaking against the release images ------------------------------------------------


@dataclass(frozen=True)
class BreakingCheck:
    """One ``buf breaking`` line of scripts/check.sh: a module folder and its release image."""

    module: str
    against: str


def breaking_checks() -> list[BreakingCheck]:
    lines = re.findall(
        r"^run buf breaking (\S+) --against (\S+)$", CHECK_SCRIPT.read_text(), re.MULTILINE
    )
    return [BreakingCheck(module, against) for module, against in lines]


def contract_copy(tmp_path: Path) -> Path:
    """The buf workspace (buf.yaml and both modules, release images included) in ``tmp_path``."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    for check in breaking_checks():
        shutil.copytree(ROOT / check.module, tmp_path / check.module)
    return tmp_path


def test_check_script_checks_each_module_against_a_kept_image():
    checks = breaking_checks()
    assert sorted(check.module for check in checks) == ["proto", "proto-oip"]
    for check in checks:
        assert check.against.startswith(f"{check.module}/releases/"), check
        assert check.against.endswith(".binpb"), check
        assert (ROOT / check.against).is_file(), check
    assert ".git#" not in CHECK_SCRIPT.read_text()


def test_contract_is_compatible_with_its_release(tmp_path):
    root = contract_copy(tmp_path)
    for check in breaking_checks():
        result = buf("breaking", check.module, "--against", check.against, cwd=root)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "proto_file", "field", "message"),
    [
        ("proto", "tms/v1/model_service.proto", "string hostname = 6;", "GetWorkerInfoResponse"),
        ("proto", "tms/v1/image.proto", "bytes data = 3;", "Image"),
        ("proto-oip", "inference/grpc_predict_v2.proto", "bool live = 1;", "ServerLiveResponse"),
    ],
)
def test_breaking_check_fails_when_a_field_is_removed(tmp_path, module, proto_file, field, message):
    root = contract_copy(tmp_path)
    path = root / module / proto_file
    source = path.read_text()
    assert source.count(f"  {field}\n") == 1
    path.write_text(source.replace(f"  {field}\n", ""))
    check = next(check for check in breaking_checks() if check.module == module)

    result = buf("breaking", check.module, "--against", check.against, cwd=root)

    assert result.returncode != 0
    name = field.split()[1]
    assert f'with name "{name}" on message "{message}" was deleted' in result.stdout, (
        result.stdout + result.stderr
    )


# --- a stranger's generation ----------------------------------------------------------------


@dataclass(frozen=True)
class JavaToolchain:
    protoc: Path
    grpc_plugin: Path
    classpath: str


def maven_classifier() -> str:
    key = (platform.system(), platform.machine())
    if key not in MAVEN_CLASSIFIERS:
        raise RuntimeError(f"no protoc build on Maven Central for {key}")
    return MAVEN_CLASSIFIERS[key]


@pytest.fixture(scope="module")
def java_toolchain(tmp_path_factory) -> JavaToolchain:
    """protoc, protoc-gen-grpc-java and the jars generated Java compiles against, fetched from
    Maven Central by Maven (cached in ~/.m2 after the first run)."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven (mvn) is needed to fetch protoc and grpc-java")
    folder = tmp_path_factory.mktemp("java-toolchain")
    (folder / "pom.xml").write_text(
        textwrap.dedent(f"""\
        <project xmlns="http://maven.apache.org/POM/4.0.0">
          <modelVersion>4.0.0</modelVersion>
          <groupId>example</groupId>
          <artifactId>stranger</artifactId>
          <version>1</version>
          <dependencies>
            <dependency>
              <groupId>com.google.protobuf</groupId>
              <artifactId>protobuf-java</artifactId>
              <version>{PROTOBUF_JAVA}</version>
            </dependency>
            <dependency>
              <groupId>io.grpc</groupId>
              <artifactId>grpc-protobuf</artifactId>
              <version>{GRPC_JAVA}</version>
            </dependency>
            <dependency>
              <groupId>io.grpc</groupId>
              <artifactId>grpc-stub</artifactId>
              <version>{GRPC_JAVA}</version>
            </dependency>
          </dependencies>
        </project>
        """)
    )
    classifier = maven_classifier()
    tools = folder / "tools"
    executables = []
    for group, artifact, version in (
        ("com.google.protobuf", "protoc", PROTOBUF_JAVA),
        ("io.grpc", "protoc-gen-grpc-java", GRPC_JAVA),
    ):
        coordinates = f"{group}:{artifact}:{version}:exe:{classifier}"
        copy = ["dependency:copy", f"-Dartifact={coordinates}", f"-DoutputDirectory={tools}"]
        run([mvn, "-q", "-B", *copy], cwd=folder, timeout=300)
        executable = tools / f"{artifact}-{version}-{classifier}.exe"
        executable.chmod(executable.stat().st_mode | stat.S_IXUSR)
        executables.append(executable)
    classpath_file = folder / "classpath.txt"
    run(
        [mvn, "-q", "-B", "dependency:build-classpath", f"-Dmdep.outputFile={classpath_file}"],
        cwd=folder,
        timeout=300,
    )
    return JavaToolchain(executables[0], executables[1], classpath_file.read_text().strip())


@pytest.fixture(scope="module")
def go_plugins(tmp_path_factory) -> Path:
    """protoc-gen-go and protoc-gen-go-grpc, at the versions clients/go/go.mod pins."""
    folder = tmp_path_factory.mktemp("go-plugins")
    installed = subprocess.run(
        [find_go(), "install", "tool"],
        cwd=GO_MODULE,
        env={**os.environ, "GOBIN": str(folder)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    return folder


@pytest.fixture(scope="module")
def stranger_output(tmp_path_factory, go_plugins, java_toolchain) -> Path:
    """Only proto/ copied into an empty folder, and a stranger's buf.gen.yaml run there."""
    work = tmp_path_factory.mktemp("stranger")
    shutil.copytree(ROOT / "proto", work / "proto")
    (work / "buf.gen.yaml").write_text(
        textwrap.dedent(f"""\
        version: v2
        inputs:
          - directory: proto
        plugins:
          - local: {go_plugins / "protoc-gen-go"}
            out: out/go
            opt: [paths=source_relative]
          - local: {go_plugins / "protoc-gen-go-grpc"}
            out: out/go
            opt: [paths=source_relative]
          - protoc_builtin: java
            protoc_path: [{java_toolchain.protoc}]
            out: out/java
          - local: {java_toolchain.grpc_plugin}
            out: out/java
          - protoc_builtin: python
            protoc_path: [python, -m, grpc_tools.protoc]
            out: out/python
        """)
    )
    result = buf("generate", cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    return work / "out"


GO_MAIN = """\
package main

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	tmsv1 "example.com/stranger/gen/tms/v1"
)

func main() {
	image := &tmsv1.Image{Dtype: tmsv1.DType_D_TYPE_UINT8, Shape: []int64{1, 1}, Data: []byte{7}}
	wire, err := proto.Marshal(image)
	if err != nil {
		panic(err)
	}
	fmt.Println(image.ProtoReflect().Descriptor().FullName(), len(wire) > 0,
		tmsv1.ModelService_RunImage_FullMethodName)
}
"""

JAVA_MAIN = """\
package example;

import io.tinymodelserver.tms.v1.DType;
import io.tinymodelserver.tms.v1.Image;
import io.tinymodelserver.tms.v1.ModelServiceGrpc;

public final class Main {
  public static void main(String[] args) {
    Image image = Image.newBuilder().setDtype(DType.D_TYPE_UINT8).addShape(1).build();
    System.out.println(image.getDescriptorForType().getFullName() + " "
        + ModelServiceGrpc.SERVICE_NAME);
  }
}
"""


def go_requirement(module: str) -> str:
    """The version of ``module`` that clients/go/go.mod requires."""
    found = re.search(rf"^\s*{re.escape(module)} (v\S+)", (GO_MODULE / "go.mod").read_text(), re.M)
    assert found, module
    return found.group(1)


@pytest.mark.slow
def test_stranger_builds_go_stubs(stranger_output, tmp_path):
    module = tmp_path / "app"
    shutil.copytree(stranger_output / "go", module / "gen")
    (module / "go.mod").write_text(
        "module example.com/stranger\n\ngo 1.26.0\n\nrequire (\n"
        f"\tgoogle.golang.org/grpc {go_requirement('google.golang.org/grpc')}\n"
        f"\tgoogle.golang.org/protobuf {go_requirement('google.golang.org/protobuf')}\n)\n"
    )
    (module / "main.go").write_text(GO_MAIN)
    go = find_go()
    env = {**os.environ, "GOFLAGS": "-mod=mod"}  # go.sum from the module proxy
    for command in ([go, "build", "./..."], [go, "build", "-o", "app", "."]):
        built = subprocess.run(
            command, cwd=module, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert built.returncode == 0, built.stderr
    output = run([str(module / "app")], cwd=module, timeout=60)
    assert output.split() == ["tms.v1.Image", "true", "/tms.v1.ModelService/RunImage"]


GO_BOTH_MAIN = """\
package main

import (
	"fmt"

	theirs "example.com/stranger/gen/tms/v1"
	ours "github.com/tinymodelserver/tms/clients/go/gen/tms/v1"
)

func main() {
	fmt.Println(theirs.File_tms_v1_image_proto.Path(), ours.File_tms_v1_image_proto.Path())
}
"""


@pytest.mark.slow
def test_go_program_cannot_link_two_copies_of_the_stubs(stranger_output, tmp_path):
    """The rule the README states: import our package, do not generate tms/v1 beside it."""
    module = tmp_path / "both"
    shutil.copytree(stranger_output / "go", module / "gen")
    (module / "go.mod").write_text(
        "module example.com/stranger\n\ngo 1.26.0\n\n"
        f"require {GO_IMPORT_PATH} v0.0.0\n\nreplace {GO_IMPORT_PATH} => {GO_MODULE}\n"
    )
    (module / "main.go").write_text(GO_BOTH_MAIN)
    env = {**os.environ, "GOFLAGS": "-mod=mod"}
    result = subprocess.run(
        [find_go(), "run", "."],
        cwd=module,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode != 0
    # protobuf-go puts a no-break space after "proto:" on purpose; \s matches it.
    assert re.search(r'proto:\sfile "tms/v1/\w+\.proto" is already registered', result.stderr), (
        result.stderr
    )


@pytest.mark.slow
def test_stranger_builds_java_stubs(stranger_output, java_toolchain, tmp_path):
    package = stranger_output / "java" / "io" / "tinymodelserver" / "tms" / "v1"
    names = {path.name for path in package.glob("*.java")}
    # One top-level class per message, enum and service; the outer classes hold descriptors.
    assert {"Image.java", "DType.java", "ModelServiceGrpc.java", "AdminServiceGrpc.java"} <= names
    assert {"ImageProto.java", "ModelServiceProto.java", "AdminServiceProto.java"} <= names
    assert not [name for name in names if "OuterClass" in name]

    main = tmp_path / "src" / "example" / "Main.java"
    main.parent.mkdir(parents=True)
    main.write_text(JAVA_MAIN)
    sources = [str(path) for path in (stranger_output / "java").rglob("*.java")] + [str(main)]
    classes = tmp_path / "classes"
    javac = ["javac", "-nowarn", "-d", str(classes), "-cp", java_toolchain.classpath]
    run([*javac, *sources], cwd=tmp_path, timeout=300)
    classpath = os.pathsep.join([str(classes), java_toolchain.classpath])
    output = run(["java", "-cp", classpath, "example.Main"], cwd=tmp_path, timeout=120)
    assert output.split() == ["tms.v1.Image", "tms.v1.ModelService"]


@pytest.mark.slow
def test_stranger_imports_python_stubs(stranger_output):
    # -S: no site-packages, so this environment's tms-client (a regular package `tms`) cannot
    # shadow the generated one; protobuf's folder is put back by hand.
    site_packages = Path(google.protobuf.__file__).parents[2]
    python_path = os.pathsep.join([str(stranger_output / "python"), str(site_packages)])
    code = (
        "import tms.v1.model_service_pb2 as m; "
        "print(m.__file__); print(m.RunImageRequest(model='face').SerializeToString().hex())"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env={**os.environ, "PYTHONPATH": python_path},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    module_file, wire = result.stdout.split()
    assert Path(module_file).is_relative_to(stranger_output / "python")
    assert bytes.fromhex(wire) == b"\n\x04face"
