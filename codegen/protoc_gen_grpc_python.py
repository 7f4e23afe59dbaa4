"""A protoc plugin that runs grpcio-tools' gRPC Python generator.

grpcio-tools builds its ``grpc_python`` generator into its bundled protoc and ships no
standalone ``protoc-gen-grpc_python``. This plugin reads the CodeGeneratorRequest that buf
sends, hands the already-parsed files to that protoc as a descriptor set, and returns the
files it writes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def main() -> int:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = plugin_pb2.CodeGeneratorResponse()
    response.supported_features = plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    with tempfile.TemporaryDirectory() as tmp:
        descriptors = Path(tmp, "descriptors.binpb")
        descriptors.write_bytes(
            descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString()
        )
        out = Path(tmp, "out")
        out.mkdir()
        option = f"{request.parameter}:" if request.parameter else ""
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"--descriptor_set_in={descriptors}",
                f"--grpc_python_out={option}{out}",
                *request.file_to_generate,
            ]
        )
        if code != 0:
            response.error = f"grpc_tools.protoc exited with {code}"
        else:
            for path in sorted(out.rglob("*.py")):
                generated = response.file.add()
                generated.name = path.relative_to(out).as_posix()
                generated.content = path.read_text()
    sys.stdout.buffer.write(response.SerializeToString())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
