"""Which model answered (version, max_batch_size, model_version) and declared args (JSON
Schemas checked by the server), over a real in-process server."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from tests.support import EXAMPLE_MODELS, write_models
from tms.v1 import image_pb2, model_service_pb2, model_service_pb2_grpc
from tms_cli.__main__ import main
from tms_client import AdminClient, InvalidInputError, ModelClient
from tms_server.registry import content_version, describe, import_model_class

pb = model_service_pb2
ADMIN_TOKEN = "admin-token-for-the-model-contract-tests"

ARGS_SCHEMA = {
    "type": "object",
    "properties": {
        "min_neighbors": {"type": "integer", "minimum": 0},
        "label": {"type": "string", "maxLength": 4},
        "sizes": {"type": "array", "items": {"type": "integer"}},
    },
    "required": ["label"],
    "additionalProperties": False,
}
RESULT_SCHEMA = {"type": "object", "properties": {"mean": {"type": "number"}}}

MODELS = {
    "declared": f'''
        import tms_server

        class Model(tms_server.Model):
            """Declares everything."""
            version = "1.2"
            max_batch_size = 2
            thread_safe = True
            args_schema = {ARGS_SCHEMA!r}
            result_schema = {RESULT_SCHEMA!r}

            def run(self, image, args):
                return {{"mean": float(image.mean()), "args": args}}
    ''',
    "hashed": """
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True

            def run(self, image, args):
                return {"edition": 1}
    """,
    "pair": """
        import tms_server

        class Model(tms_server.Model):
            version = "p1"

            def run_image_to_image(self, images, args):
                return images[0], {"count": len(images)}
    """,
    "words": """
        import tms_server

        class Model(tms_server.Model):
            inputs = "text"
            version = "w1"
            max_batch_size = 1000  # larger than the server's: the server's wins

            def run(self, text, args):
                return len(text.split())
    """,
    "batch_only": """
        import tms_server

        class Model(tms_server.Model):
            thread_safe = True
            max_batch_size = 16
            max_batch_delay = 0.002

            def run_batch(self, images, args):  # as in the README's Dynamic batching
                return [{"mean": float(image.mean()), "batch": len(images)} for image in images]
    """,
    "bad_schema": """
        import tms_server

        class Model(tms_server.Model):
            args_schema = {"type": "nothing-at-all"}

            def run(self, image, args):
                return {}
    """,
}


@pytest.fixture
def models(tmp_path: Path) -> Path:
    folder = write_models(tmp_path / "models", MODELS)
    (folder / "hashed" / "weights.bin").write_bytes(b"\1\2\3")  # part of the hash too
    return folder


@pytest.fixture
def server(in_process_server, models, tmp_path):
    admin = tmp_path / "admin_tokens"
    admin.write_text(f"{ADMIN_TOKEN}\n")
    return in_process_server(models, max_batch_size=8, admin_tokens_file=admin)


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield model_service_pb2_grpc.ModelServiceStub(channel)


def image(value: int = 7) -> image_pb2.Image:
    return image_pb2.Image(dtype=image_pb2.D_TYPE_UINT8, shape=(2, 2), data=bytes([value]) * 4)


def info(stub, name: str) -> pb.ModelInfo:
    return stub.GetModelInfo(pb.GetModelInfoRequest(model=name)).info


def folder_hash(folder: Path) -> str:
    """The documented hash, computed apart from the server's code."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        data = path.read_bytes()
        digest.update(f"{path.relative_to(folder).as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:12]


def test_version_declared_or_hashed_and_max_batch_size(stub, models):
    declared, hashed, words = (info(stub, n) for n in ("declared", "hashed", "words"))
    assert declared.version == "1.2"
    assert re.fullmatch(r"[0-9a-f]{12}", hashed.version)
    assert hashed.version == folder_hash(models / "hashed")
    assert (declared.max_batch_size, hashed.max_batch_size, words.max_batch_size) == (2, 8, 8)


def test_schemas_are_reported_as_json(stub, server):
    declared = info(stub, "declared")
    assert json.loads(declared.args_schema_json) == ARGS_SCHEMA
    assert json.loads(declared.result_schema_json) == RESULT_SCHEMA
    assert info(stub, "hashed").args_schema_json == ""
    with ModelClient("declared", server.target, connect_timeout=5) as client:
        described = client.info()
    assert (described.version, described.max_batch_size) == ("1.2", 2)
    assert (described.args_schema, described.result_schema) == (ARGS_SCHEMA, RESULT_SCHEMA)
    with ModelClient("hashed", server.target, connect_timeout=5) as client:
        described = client.info()
    assert described.args_schema is None
    assert described.result_schema is None
    assert described.max_batch_size == 8


def test_every_run_response_names_the_version_that_answered(stub):
    args = json.dumps({"label": "a"})
    one = stub.RunImage(pb.RunImageRequest(model="declared", image=image(), args_json=args))
    assert one.model_version == "1.2"
    assert json.loads(one.result_json)["mean"] == 7
    batch = stub.RunImageBatch(
        pb.RunImageBatchRequest(model="declared", images=[image(), image()], args_json=args)
    )
    assert batch.model_version == "1.2"
    assert len(batch.results_json) == 2
    pair = stub.RunImageToImage(pb.RunImageToImageRequest(model="pair", images=[image()]))
    assert (pair.model_version, len(pair.images)) == ("p1", 1)
    text = stub.RunText(pb.RunTextRequest(model="words", text="a b c"))
    assert (text.model_version, text.result_json) == ("w1", "3")
    texts = stub.RunTextBatch(pb.RunTextBatchRequest(model="words", texts=["a", "b c"]))
    assert (texts.model_version, list(texts.results_json)) == ("w1", ["1", "2"])
    hashed = stub.RunImage(pb.RunImageRequest(model="hashed", image=image()))
    assert hashed.model_version == info(stub, "hashed").version


def test_a_model_smaller_max_batch_size_is_enforced(stub):
    request = pb.RunImageBatchRequest(
        model="declared", images=[image()] * 3, args_json='{"label": "a"}'
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.RunImageBatch(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 2 images (the max_batch_size of model 'declared')" in caught.value.details()
    status = rpc_status.from_call(caught.value)
    reason = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(reason)
    assert reason.reason == "BATCH_TOO_LARGE"


def test_the_hash_changes_on_reload_when_the_files_changed(stub, server, models):
    before = info(stub, "hashed").version
    declared = info(stub, "declared").version
    source = (models / "hashed" / "__init__.py").read_text().replace('"edition": 1', '"edition": 2')
    (models / "hashed" / "__init__.py").write_text(source)
    (models / "declared" / "__init__.py").write_text(
        (models / "declared" / "__init__.py").read_text() + "\n# edited\n"
    )
    with AdminClient(server.target, token=ADMIN_TOKEN, timeout=10) as admin:
        for name in ("hashed", "declared"):
            (outcome,) = admin.reload_model(name)
            assert outcome.reloaded, outcome.error
    after = info(stub, "hashed").version
    assert after != before
    assert after == folder_hash(models / "hashed")
    assert info(stub, "declared").version == declared == "1.2"  # declared: kept as declared
    reply = stub.RunImage(pb.RunImageRequest(model="hashed", image=image()))
    assert (reply.model_version, json.loads(reply.result_json)) == (after, {"edition": 2})
    with AdminClient(server.target, token=ADMIN_TOKEN, timeout=10) as admin:
        (outcome,) = admin.reload_model("hashed")  # nothing changed: the same version
    assert outcome.reloaded
    assert info(stub, "hashed").version == after


def test_args_that_break_the_schema_get_one_violation_per_problem(stub):
    args = {"min_neighbors": -1, "label": "too long", "sizes": [1, "x"], "colour": "red"}
    request = pb.RunImageRequest(model="declared", image=image(), args_json=json.dumps(args))
    with pytest.raises(grpc.RpcError) as caught:
        stub.RunImage(request)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not match the model's args_schema" in error.details()
    status = rpc_status.from_call(error)
    reason, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    for detail in status.details:
        detail.Unpack(reason) or detail.Unpack(bad)
    assert (reason.reason, reason.domain, reason.metadata["model"]) == (
        "INVALID_ARGS",
        "tms",
        "declared",
    )
    violations = {v.field: v.description for v in bad.field_violations}
    assert set(violations) == {
        "args_json",  # additionalProperties: the object itself
        "args_json.label",
        "args_json.min_neighbors",
        "args_json.sizes[1]",
    }
    assert "less than the minimum of 0" in violations["args_json.min_neighbors"]
    assert "'colour'" in violations["args_json"]
    assert "is not of type 'integer'" in violations["args_json.sizes[1]"]


def test_a_missing_required_arg_names_its_field(stub):
    request = pb.RunImageRequest(model="declared", image=image(), args_json="{}")
    with pytest.raises(grpc.RpcError) as caught:
        stub.RunImage(request)
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in rpc_status.from_call(caught.value).details)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("args_json.label", "'label' is a required property")
    ]


def test_the_python_client_sees_the_violations(server):
    with (
        ModelClient("declared", server.target, connect_timeout=5) as client,
        pytest.raises(InvalidInputError) as caught,
    ):
        client.run_image(np.zeros((2, 2), np.uint8), {"min_neighbors": -1, "label": "a"})
    assert caught.value.reason == "INVALID_ARGS"
    assert [field for field, _ in caught.value.field_violations] == ["args_json.min_neighbors"]
    with ModelClient("declared", server.target, connect_timeout=5) as client:
        result = client.run_image(np.zeros((2, 2), np.uint8), {"min_neighbors": 3, "label": "a"})
    assert result["args"] == {"min_neighbors": 3, "label": "a"}


def test_an_invalid_schema_fails_the_models_load(stub):
    names = [m.name for m in stub.ListModels(pb.ListModelsRequest()).models]
    assert "bad_schema" not in names
    with pytest.raises(grpc.RpcError) as caught:
        stub.RunImage(pb.RunImageRequest(model="bad_schema", image=image()))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = caught.value.details()
    assert "args_schema is not a valid JSON Schema (Draft 2020-12)" in details
    assert "nothing-at-all" in details


def test_tms_info_shows_version_batch_and_schemas(server, capsys):
    assert main(["--target", server.target, "info", "declared"]) == 0
    out = capsys.readouterr().out
    assert "version:      1.2\n" in out
    assert "max batch:    2\n" in out
    assert "batching:     off (each call runs alone)\n" in out
    shown = out.split("args schema:\n", 1)[1].split("result schema:\n", 1)[0]
    assert json.loads(shown) == ARGS_SCHEMA  # indented JSON, whatever the layout
    assert shown.startswith("  {\n")
    assert '"required": ["label"]' in shown  # a list of plain values stays on one line
    assert main(["--target", server.target, "info", "hashed"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^version:      [0-9a-f]{12}$", out, re.MULTILINE)
    assert "args schema: -\nresult schema: -\n" in out
    assert main(["--target", server.target, "--json", "info", "declared"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert (described["version"], described["max_batch_size"]) == ("1.2", 2)
    assert described["max_batch_delay"] is None
    assert described["args_schema"] == ARGS_SCHEMA


def test_an_entry_point_model_is_hashed_by_its_module_file(tmp_path):
    module_file = tmp_path / "tms_contract_entry.py"
    module_file.write_text("class Reverse:\n    pass\n")

    def load() -> type:
        spec = importlib.util.spec_from_file_location("tms_contract_entry", module_file)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["tms_contract_entry"] = module
        spec.loader.exec_module(module)
        return module.Reverse

    try:
        first = content_version(load())
        module_file.write_text("class Reverse:\n    version_note = 2\n")
        second = content_version(load())
    finally:
        sys.modules.pop("tms_contract_entry", None)
    assert re.fullmatch(r"[0-9a-f]{12}", first)
    assert first != second


@pytest.mark.parametrize(
    "name", sorted(p.parent.name for p in EXAMPLE_MODELS.glob("*/__init__.py"))
)
def test_every_example_declares_a_valid_args_schema(name):
    model = describe(name, import_model_class(EXAMPLE_MODELS / name))
    assert model.args_validator is not None
    assert json.loads(model.info.args_schema_json)["type"] == "object"
    assert model.info.version


def test_a_model_that_overrides_only_run_batch_takes_every_image_call(stub, server):
    # RunImage alone (a batch of one), gathered (run_batch), and RunImageBatch.
    calls = info(stub, "batch_only").calls
    assert set(calls) == {pb.MODEL_CALL_RUN_IMAGE, pb.MODEL_CALL_RUN_IMAGE_BATCH}
    reply = stub.RunImage(pb.RunImageRequest(model="batch_only", image=image(7)))
    assert json.loads(reply.result_json) == {"mean": 7.0, "batch": 1}
    batch = stub.RunImageBatch(
        pb.RunImageBatchRequest(model="batch_only", images=[image(1), image(3)])
    )
    assert [json.loads(r)["mean"] for r in batch.results_json] == [1.0, 3.0]
    with ModelClient("batch_only", server.target) as client:
        assert client.run_image(np.full((2, 2), 5, np.uint8))["mean"] == 5.0


TYPED_MODEL = """
    from typing import Any

    import numpy as np
    import tms_server


    class Model(tms_server.Model):
        \"\"\"Declares each attribute in a form the README's contract table shows.\"\"\"

        inputs = "image"
        color = "bgr"
        dtype = "uint8"
        input_shape = (-1, -1, 3)
        thread_safe = True
        workers = 1
        devices = "cpu"  # one name, as "cuda" (any GPU) is written
        version = "1.2"
        max_batch_size = 16
        max_batch_delay = 0.002
        args_schema = {"type": "object"}

        def run(self, image: np.ndarray[Any, Any], args: dict[str, Any]) -> dict[str, Any]:
            return {"mean": float(image.mean()), "device": self.device}


    class OnGpus(tms_server.Model):
        devices = ("cuda:0", "cuda:1")
"""


def test_a_model_declared_as_the_readme_shows_type_checks_and_serves(in_process_server, tmp_path):
    """``devices = "cuda"`` (a name alone, as the README's table writes it) is what the
    server takes; mypy --strict took only a tuple."""
    models = write_models(tmp_path / "models", {"typed": TYPED_MODEL})
    command = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache")]
    checked = subprocess.run(
        [*command, str(models / "typed" / "__init__.py")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    server = in_process_server(models)
    with ModelClient("typed", server.target) as client:
        assert client.run_image(np.full((2, 2, 3), 4, np.uint8)) == {"mean": 4.0, "device": "cpu"}
