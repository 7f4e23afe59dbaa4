"""TLS, mutual TLS, certificate reload, tokens and the admin service, on loopback.

Every certificate is made at test time (tests/certificates.py); no key is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.certificates import CertificateAuthority
from tests.support import ServerProcess, closed_by_peer, wait_for, write_models
from tms.v1 import model_service_pb2, model_service_pb2_grpc
from tms_client import (
    TLS,
    AdminClient,
    AsyncModelClient,
    ConnectError,
    ModelClient,
    ModelNotFoundError,
    PermissionDeniedError,
    RetryPolicy,
    RoundRobin,
    UnauthenticatedError,
    UnavailableError,
)
from tms_server.security import SecurityError, TokenFile, bearer_token, check_files
from tms_server.settings import Settings, parse_settings
from tms_server.worker import grpc_options

ECHO = """
    import os
    import tms_server

    class Model(tms_server.Model):
        inputs = "text"
        thread_safe = True

        def run(self, text, args):
            return {"text": text, "pid": os.getpid(), "version": VERSION}
"""
CALL_TOKEN = "call-token-0123456789"
OTHER_CALL_TOKEN = "second-call-token-abc"
ADMIN_TOKEN = "admin-token-9876543210"


def echo_source(version: int) -> str:
    return ECHO.replace("VERSION", str(version))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder / "ca")
    other = CertificateAuthority(folder / "other", name="Other CA")
    return {
        "ca": ca,
        "other": other,
        "server": ca.issue("server"),
        "named": ca.issue("named", common_name="tms.test", dns=("tms.test",), ips=()),
        "client": ca.issue("client", common_name="a client", dns=(), ips=(), client=True),
        "stranger": other.issue("stranger", common_name="x", dns=(), ips=(), client=True),
        "other_server": other.issue("other_server"),
    }


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return write_models(tmp_path / "models", {"echo": echo_source(1)})


@pytest.fixture
def tokens(tmp_path: Path) -> dict[str, Path]:
    calls = tmp_path / "tokens"
    calls.write_text(f"# call tokens\n{CALL_TOKEN}\n\n{OTHER_CALL_TOKEN}\n")
    admin = tmp_path / "admin_tokens"
    admin.write_text(f"{ADMIN_TOKEN}\n")
    return {"calls": calls, "admin": admin}


def tls_server(in_process_server, models, pki, pair="server", **overrides):
    return in_process_server(models, tls_cert=pki[pair].cert, tls_key=pki[pair].key, **overrides)


def echo(target: str, **kwargs) -> dict[str, Any]:
    with ModelClient(
        "echo", target, connect_timeout=kwargs.pop("connect_timeout", 5), **kwargs
    ) as c:
        return c.run_text("hi")


# -- TLS ----------------------------------------------------------------------------------------


def test_tls_works_with_paths_and_with_bytes(in_process_server, models, pki):
    server = tls_server(in_process_server, models, pki)
    assert echo(server.target, tls=TLS(ca=pki["ca"].cert))["text"] == "hi"
    assert echo(server.target, tls=TLS(ca=pki["ca"].cert_pem))["text"] == "hi"
    assert echo(f"localhost:{server.running.port}", tls=TLS(ca=str(pki["ca"].cert)))


def test_plaintext_to_a_tls_server_fails_cleanly(in_process_server, models, pki):
    server = tls_server(in_process_server, models, pki)
    started = time.monotonic()
    with pytest.raises(ConnectError, match=r"TLS"):
        echo(server.target, connect_timeout=1)
    assert time.monotonic() - started < 5
    with grpc.insecure_channel(server.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListModels(model_service_pb2.ListModelsRequest(), timeout=2)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert echo(server.target, tls=TLS(ca=pki["ca"].cert))  # the server is unharmed


def test_a_server_certificate_from_another_ca_is_refused(in_process_server, models, pki):
    server = tls_server(in_process_server, models, pki)
    with pytest.raises(ConnectError, match="CA"):
        echo(server.target, tls=TLS(ca=pki["other"].cert), connect_timeout=1)


def test_server_name_override(in_process_server, models, pki):
    server = tls_server(in_process_server, models, pki, pair="named")
    with pytest.raises(ConnectError):
        echo(server.target, tls=TLS(ca=pki["ca"].cert), connect_timeout=1)
    assert echo(server.target, tls=TLS(ca=pki["ca"].cert, server_name="tms.test"))


def test_mutual_tls_needs_a_client_certificate_from_the_ca(in_process_server, models, pki):
    server = tls_server(in_process_server, models, pki, tls_client_ca=pki["ca"].cert)
    client, stranger = pki["client"], pki["stranger"]
    mutual = TLS(ca=pki["ca"].cert, cert=client.cert, key=client.key)
    assert echo(server.target, tls=mutual)["text"] == "hi"
    assert echo(server.target, tls=TLS(ca=pki["ca"].cert, cert=client.cert_pem, key=client.key_pem))
    with pytest.raises(ConnectError):
        echo(server.target, tls=TLS(ca=pki["ca"].cert), connect_timeout=1)
    with pytest.raises(ConnectError):
        echo(
            server.target,
            tls=TLS(ca=pki["ca"].cert, cert=stranger.cert, key=stranger.key),
            connect_timeout=1,
        )
    assert echo(server.target, tls=mutual)  # still serving


def test_certificates_reload_without_restart(in_process_server, models, pki, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tms_server")
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(pki["server"].cert, cert)
    shutil.copy(pki["server"].key, key)
    server = in_process_server(models, tls_cert=cert, tls_key=key)
    old_ca, new_ca = TLS(ca=pki["ca"].cert), TLS(ca=pki["other"].cert)
    with ModelClient("echo", server.target, tls=old_ca, connect_timeout=5) as kept:
        assert kept.run_text("before")["text"] == "before"
        # Renew: a pair from another CA. A half-written pair (new cert, old key) is ignored.
        shutil.copy(pki["other_server"].cert, cert)
        os.utime(cert, (time.time() + 5, time.time() + 5))
        assert echo(server.target, tls=old_ca)  # mismatched pair: the old one stays
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert [r.getMessage().split(":")[0] for r in warnings] == ["keeping the TLS files in use"]
        assert f"cannot use tls_cert {cert} with tls_key" in warnings[0].getMessage()
        shutil.copy(pki["other_server"].key, key)
        os.utime(key, (time.time() + 10, time.time() + 10))
        assert echo(server.target, tls=new_ca)["text"] == "hi"  # new connections: new pair
        assert f"TLS certificate reloaded from {cert}" in caplog.messages
        with pytest.raises(ConnectError):
            echo(server.target, tls=old_ca, connect_timeout=1)
        assert kept.run_text("after")["text"] == "after"  # open connections keep theirs


def test_a_client_ca_file_that_turns_bad_is_named_and_the_old_one_kept(
    in_process_server, models, pki, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="tms_server")
    client_ca = tmp_path / "client-ca.pem"
    shutil.copy(pki["ca"].cert, client_ca)
    server = tls_server(in_process_server, models, pki, tls_client_ca=client_ca)
    client = pki["client"]
    mutual = TLS(ca=pki["ca"].cert, cert=client.cert, key=client.key)
    assert echo(server.target, tls=mutual)["text"] == "hi"
    shutil.copy(pki["client"].key, client_ca)  # a key, not a certificate
    os.utime(client_ca, (time.time() + 5, time.time() + 5))
    assert echo(server.target, tls=mutual)["text"] == "hi"  # a new connection: the old CA
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("keeping the TLS files in use: ")  # not "certificate"
    assert f"cannot use tls_client_ca {client_ca}: it must hold the CA certificates" in warnings[0]
    assert "tls_key" not in warnings[0]


def https_status(url: str, ca: Path, client: Any = None) -> int:
    """GET ``url`` trusting ``ca``, showing ``client``'s certificate if given."""
    context = ssl.create_default_context(cafile=ca)
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        return int(response.status)


def test_the_server_prints_its_https_address(server_process, models, pki):
    cert, key = str(pki["server"].cert), str(pki["server"].key)
    args = ("--tls-cert", cert, "--tls-key", key, "--http-port", "0")
    server = server_process(models, workers=1, args=args)
    (line,) = [line for line in server.output if line.startswith("tms-server: HTTP on ")]
    url = line.split()[3]
    assert url.startswith("https://"), line
    port = url.rstrip("/").rsplit(":", 1)[1]
    assert https_status(f"https://localhost:{port}/v2/health/ready", pki["ca"].cert) == 200


def test_failed_handshakes_leave_json_logs_json(models, pki):
    # gRPC's C core wrote an INFO line of its own (not JSON, whatever --log-level) to stderr
    # for every connection that fails its TLS handshake: a port scanner could fill the logs.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    command = [sys.executable, "-m", "tms_server", "--host", "127.0.0.1", "--port", "0"]
    command += ["--models", str(models), "--workers", "2", "--log-format", "json"]
    command += ["--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["server"].key)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment
    )
    server = ServerProcess(process)
    try:
        assert server.wait_started(60), server.logs()
        host, port = server.target.rsplit(":", 1)
        for _ in range(8):  # the kernel spreads them over both workers
            with socket.create_connection((host, int(port)), timeout=10) as scanner:
                scanner.sendall(b"GET / HTTP/1.0\r\n\r\n")
                assert closed_by_peer(scanner)
        assert echo(server.target, tls=TLS(ca=pki["ca"].cert))["text"] == "hi"
        assert server.stop() == 0
    finally:
        server.stop(signal.SIGKILL)
    lines = server.logs().splitlines()
    assert [line for line in lines if not line.startswith(("{", "tms-server: "))] == []
    assert all(json.loads(line)["message"] for line in lines if line.startswith("{"))


def test_connections_in_their_tls_handshake_count_against_max_connections(
    in_process_server, models, pki
):
    # Connections that never start their handshake are held at most --slow-client-seconds,
    # and count against --max-connections meanwhile: one more is closed as it arrives, so a
    # caller with no certificate or token cannot run the worker out of file descriptors.
    server = tls_server(
        in_process_server,
        models,
        pki,
        http_port=0,
        host="127.0.0.1",
        max_connections=3,
        slow_client_seconds=3,
    )
    assert server.running.http is not None
    where = ("127.0.0.1", server.running.http.port)
    url = f"https://localhost:{server.running.http.port}/v2/health/ready"
    assert https_status(url, pki["ca"].cert) == 200
    with contextlib.ExitStack() as stack:
        silent = [stack.enter_context(socket.create_connection(where, timeout=30)) for _ in "abc"]
        time.sleep(0.2)  # accepted
        with socket.create_connection(where, timeout=30) as extra:
            assert closed_by_peer(extra, 2)
        started = time.monotonic()
        assert all(closed_by_peer(connection, 10) for connection in silent)
        assert time.monotonic() - started < 6  # the handshake's time ran out

    def answers() -> bool:  # once the worker has counted them out (soon after they closed)
        try:
            return https_status(url, pki["ca"].cert) == 200
        except OSError:
            return False

    assert wait_for(answers, 5)


def test_https_checks_client_certificates_and_follows_a_renewed_certificate(
    in_process_server, models, pki, tmp_path
):
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(pki["server"].cert, cert)
    shutil.copy(pki["server"].key, key)
    server = in_process_server(
        models,
        tls_cert=cert,
        tls_key=key,
        tls_client_ca=pki["ca"].cert,
        http_port=0,
        host="127.0.0.1",
    )
    assert server.running.http is not None
    url = f"https://127.0.0.1:{server.running.http.port}/v2/health/ready"
    assert https_status(url, pki["ca"].cert, pki["client"]) == 200
    # Refused in the handshake: no client certificate, or one from another CA.
    refused = r"closed connection|CERTIFICATE_REQUIRED|UNKNOWN_CA"
    with pytest.raises(OSError, match=refused):
        https_status(url, pki["ca"].cert)
    with pytest.raises(OSError, match=refused):
        https_status(url, pki["ca"].cert, pki["stranger"])
    # Renewed: a pair from another CA, used by new connections without a restart.
    shutil.copy(pki["other_server"].cert, cert)
    shutil.copy(pki["other_server"].key, key)
    for path in (cert, key):
        os.utime(path, (time.time() + 10, time.time() + 10))
    assert https_status(url, pki["other"].cert, pki["client"]) == 200
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        https_status(url, pki["ca"].cert, pki["client"])
    assert https_status(url, pki["other"].cert, pki["client"]) == 200
    assert (
        echo(
            server.target,
            tls=TLS(ca=pki["other"].cert, cert=pki["client"].cert, key=pki["client"].key),
        )["text"]
        == "hi"
    )


def test_tls_value_object():
    tls = TLS(ca=b"-----BEGIN CERTIFICATE-----", cert="c.pem", key=b"secret key bytes")
    assert "secret" not in repr(tls)
    assert repr(tls) == "TLS(ca=<27 bytes>, cert='c.pem', key=<hidden>, server_name=None)"
    with pytest.raises(ValueError, match="cert and key"):
        TLS(cert="c.pem")
    with pytest.raises(ValueError, match="cannot read"):
        TLS(ca="/no/such/ca.pem").credentials()


# -- tokens -------------------------------------------------------------------------------------


def test_tokens_right_wrong_and_missing(in_process_server, models, tokens, caplog):
    caplog.set_level(logging.DEBUG)
    server = in_process_server(models, tokens_file=tokens["calls"])
    assert echo(server.target, token=CALL_TOKEN)["text"] == "hi"
    assert echo(server.target, token=OTHER_CALL_TOKEN)["text"] == "hi"
    with pytest.raises(UnauthenticatedError, match="not valid") as wrong:
        echo(server.target, token="wrong-secret-token")
    with pytest.raises(UnauthenticatedError, match="needs a token"):
        echo(server.target)
    with pytest.raises(UnauthenticatedError):
        echo(server.target, token=ADMIN_TOKEN)  # admin tokens are not call tokens
    # Nothing says the tokens: not the errors, not the logs.
    for secret in ("wrong-secret-token", CALL_TOKEN, ADMIN_TOKEN):
        assert secret not in caplog.text
        assert secret not in str(wrong.value)


def test_health_needs_no_token_but_everything_else_does(in_process_server, models, tokens):
    server = in_process_server(models, tokens_file=tokens["calls"])
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == 1
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        for call, request in [
            (stub.GetWorkerInfo, model_service_pb2.GetWorkerInfoRequest()),
            (stub.ListModels, model_service_pb2.ListModelsRequest()),
            (stub.RunText, model_service_pb2.RunTextRequest(model="echo", text="x")),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                call(request, timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.ListModels(
            model_service_pb2.ListModelsRequest(),
            metadata=(("authorization", f"Bearer {CALL_TOKEN}"),),
        )
        assert [m.name for m in reply.models] == ["echo"]


def test_token_file_changes_are_picked_up(in_process_server, models, tokens):
    server = in_process_server(models, tokens_file=tokens["calls"])
    assert echo(server.target, token=CALL_TOKEN)
    tokens["calls"].write_text("rotated-token-000000\n")
    os.utime(tokens["calls"], (time.time() + 5, time.time() + 5))
    time.sleep(1.1)  # files are looked at once a second at most
    assert echo(server.target, token="rotated-token-000000")
    with pytest.raises(UnauthenticatedError):
        echo(server.target, token=CALL_TOKEN)


PIXELS = """
    import tms_server

    class Model(tms_server.Model):
        thread_safe = True

        def run(self, image, args):
            return int(image.sum())
"""


def test_a_token_taken_out_of_the_file_ends_the_streams_opened_with_it(
    in_process_server, models, tokens
):
    write_models(models, {"pixels": PIXELS})
    server = in_process_server(models, tokens_file=tokens["calls"])
    frames: queue.Queue[np.ndarray | None] = queue.Queue()

    def produce() -> Iterator[np.ndarray]:
        while (frame := frames.get(timeout=30)) is not None:
            yield frame

    with ModelClient("pixels", server.target, token=OTHER_CALL_TOKEN) as client:
        results = client.run_image_stream(produce(), window=1)
        frames.put(np.full((2, 2), 1, np.uint8))
        assert next(results).result == 4
        tokens["calls"].write_text(f"{CALL_TOKEN}\n")  # the stream's token is revoked
        os.utime(tokens["calls"], (time.time() + 5, time.time() + 5))
        time.sleep(1.1)  # files are looked at once a second at most
        frames.put(np.full((2, 2), 2, np.uint8))
        try:
            with pytest.raises(UnauthenticatedError, match="no longer valid"):
                next(results)
        finally:
            frames.put(None)


def test_a_stream_outlives_a_tokens_file_mid_rewrite(in_process_server, models, tokens):
    """A tokens file edited in place (truncated, then written) can be read empty: new calls
    are refused meanwhile, but a stream whose token the file still holds, once written, goes
    on; only a file read well without its token ends it."""
    write_models(models, {"pixels": PIXELS})
    path = tokens["calls"]
    path.write_text(f"{CALL_TOKEN}\n{OTHER_CALL_TOKEN}\n")
    server = in_process_server(models, tokens_file=path)
    frames: queue.Queue[np.ndarray | None] = queue.Queue()

    def produce() -> Iterator[np.ndarray]:
        while (frame := frames.get(timeout=30)) is not None:
            yield frame

    def rewrite(text: str) -> None:
        path.write_text(text)
        os.utime(path, (time.time() + 5, time.time() + 5))
        time.sleep(1.1)  # files are looked at once a second at most

    with ModelClient("pixels", server.target, token=OTHER_CALL_TOKEN) as client:
        results = client.run_image_stream(produce(), window=1)
        try:
            frames.put(np.full((2, 2), 1, np.uint8))
            assert next(results).result == 4
            rewrite("")  # truncated: every new call is refused
            assert outcomes(server.target, OTHER_CALL_TOKEN) == {OTHER_CALL_TOKEN: "refused"}
            frames.put(np.full((2, 2), 2, np.uint8))
            assert next(results).result == 8
            rewrite(f"{CALL_TOKEN}\n{OTHER_CALL_TOKEN}\n")  # written again
            frames.put(np.full((2, 2), 3, np.uint8))
            assert next(results).result == 12
            rewrite(f"{CALL_TOKEN}\n")  # now revoked
            frames.put(np.full((2, 2), 4, np.uint8))
            with pytest.raises(UnauthenticatedError, match="no longer valid"):
                next(results)
        finally:
            frames.put(None)


def outcomes(target: str, *tokens: str) -> dict[str, str]:
    """Whether a call with each token is answered ("ok") or "refused" (UNAUTHENTICATED)."""
    seen = {}
    for token in tokens:
        try:
            echo(target, token=token)
            seen[token] = "ok"
        except UnauthenticatedError:
            seen[token] = "refused"
    return seen


def test_a_tokens_file_that_turns_bad_refuses_every_token(
    in_process_server, models, tokens, caplog
):
    # An edit meant to revoke a token must revoke it, even one that leaves the file unusable:
    # then every token is refused until the file is fixed, with one ERROR per change.
    caplog.set_level(logging.INFO, logger="tms_server")
    path, a, b = tokens["calls"], CALL_TOKEN, OTHER_CALL_TOKEN
    server = in_process_server(models, tokens_file=path)
    assert outcomes(server.target, a, b) == {a: "ok", b: "ok"}
    steps = [  # the new content (None: deleted), the outcomes, and what is logged once
        (f"{b}\nbad token\n", {a: "refused", b: "refused"}, "ERROR", f"{path} line 2: a token"),
        (f"{b}\n", {a: "refused", b: "ok"}, "INFO", f"{path} can be used again"),
        (None, {b: "refused"}, "ERROR", f"cannot read tokens_file {path}: No such file"),
        ("", {b: "refused"}, "ERROR", f"tokens_file {path} holds no token"),
        (f"# restored\n{b}\n", {a: "refused", b: "ok"}, "INFO", f"{path} can be used again"),
    ]
    for content, expected, level, message in steps:
        caplog.clear()
        if content is None:
            path.unlink()
        else:
            path.write_text(content)
        deadline = time.monotonic() + 5  # the file is read again within a second
        while outcomes(server.target, *expected) != expected or message not in caplog.text:
            assert time.monotonic() < deadline, (content, caplog.text)
            time.sleep(0.1)
        if level == "ERROR":  # calls a second later read the same bad file: no second ERROR
            time.sleep(1.1)
            assert outcomes(server.target, *expected) == expected
        assert [r.levelname for r in caplog.records if str(path) in r.getMessage()] == [level]
    assert a not in caplog.text
    assert b not in caplog.text


def test_an_admin_tokens_file_that_turns_bad_refuses_admin_calls(in_process_server, models, tokens):
    server = in_process_server(models, admin_tokens_file=tokens["admin"])

    def admin_outcome() -> str:
        with AdminClient(server.target, token=ADMIN_TOKEN, timeout=5) as admin:
            try:
                admin.list_workers()
            except PermissionDeniedError:
                return "refused"
            return "ok"

    assert admin_outcome() == "ok"
    for content, expected in [(f"{ADMIN_TOKEN}\nbad token\n", "refused"), (ADMIN_TOKEN, "ok")]:
        tokens["admin"].write_text(content)
        deadline = time.monotonic() + 5
        while admin_outcome() != expected:
            assert time.monotonic() < deadline, content
            time.sleep(0.1)


def test_async_client_over_tls_with_a_token(in_process_server, models, pki, tokens):
    server = tls_server(in_process_server, models, pki, tokens_file=tokens["calls"])

    async def main():
        tls = TLS(ca=pki["ca"].cert)
        async with AsyncModelClient("echo", server.target, tls=tls, token=CALL_TOKEN) as client:
            result = await client.run_text("async")
            health = await client.health()
        with pytest.raises(UnauthenticatedError):
            async with AsyncModelClient("echo", server.target, tls=tls, token="nope-nope"):
                pass
        return result, health

    result, health = asyncio.run(main())
    assert result["text"] == "async"
    assert health == "SERVING"


def test_token_helpers(tmp_path):
    assert bearer_token([("authorization", "Bearer abc")]) == b"abc"
    assert bearer_token([("authorization", "bearer  abc ")]) == b"abc"
    assert bearer_token([("authorization", "Basic abc")]) is None
    assert bearer_token(None) is None
    path = tmp_path / "t"
    path.write_text("# only a comment\n\n")
    with pytest.raises(SecurityError, match="holds no token"):
        TokenFile(path, "tokens_file")
    path.write_text("good-token\n")
    assert "good-token" not in repr(TokenFile(path, "tokens_file"))
    with pytest.raises(ValueError, match="printable ASCII"):
        ModelClient("echo", "localhost:1", token="has space")


# -- admin --------------------------------------------------------------------------------------


def test_admin_is_off_by_default(in_process_server, models):
    server = in_process_server(models)
    with AdminClient(server.target, token=ADMIN_TOKEN, timeout=5) as admin:
        with pytest.raises(PermissionDeniedError, match="off"):
            admin.list_workers()
        with pytest.raises(PermissionDeniedError, match="off"):
            admin.reload_model("echo")


def test_admin_needs_an_admin_token(in_process_server, models, tokens):
    server = in_process_server(
        models, tokens_file=tokens["calls"], admin_tokens_file=tokens["admin"]
    )
    for token in (CALL_TOKEN, "wrong-admin-token"):
        with (
            AdminClient(server.target, token=token, timeout=5) as admin,
            pytest.raises(PermissionDeniedError, match="admin token"),
        ):
            admin.list_workers()
    with grpc.insecure_channel(server.target) as channel:  # no token at all
        call = channel.unary_unary("/tms.v1.AdminService/ListWorkers")
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with AdminClient(server.target, token=ADMIN_TOKEN, timeout=5) as admin:
        (worker,) = admin.list_workers()
    assert worker.pid == os.getpid()
    assert worker.serving
    assert worker.index == 0


GATED = """
    import pathlib
    import time
    import tms_server

    class Model(tms_server.Model):
        inputs = "text"
        thread_safe = True

        def run(self, text, args):
            gate = pathlib.Path(text)
            for _ in range(3000):  # until the test opens the gate (60 s at most)
                if gate.exists():
                    return "opened"
                time.sleep(0.02)
            return "never opened"
"""


def test_admin_lists_each_workers_load_calls_and_uptime(in_process_server, tmp_path, tokens):
    models = write_models(tmp_path / "load", {"echo": echo_source(1), "gated": GATED})
    server = in_process_server(models, admin_tokens_file=tokens["admin"], threads=1)
    gate = tmp_path / "gate"
    with AdminClient(server.target, token=ADMIN_TOKEN, timeout=10) as admin:
        (idle,) = admin.list_workers()
        assert (idle.pid, idle.index, idle.serving) == (os.getpid(), 0, True)
        assert (idle.in_flight, idle.queued) == (0, 0)
        assert idle.uptime > 0
        for _ in range(3):
            echo(server.target)
        (after,) = admin.list_workers()
        assert after.calls == idle.calls + 3  # the three echo calls, answered
        assert after.uptime >= idle.uptime
        # One call holds the worker's only thread, a second waits for it.
        with ModelClient("gated", server.target, timeout=60) as client:
            held = [threading.Thread(target=client.run_text, args=(str(gate),)) for _ in range(2)]
            try:
                for thread in held:
                    thread.start()
                assert wait_for(
                    lambda: (
                        (admin.list_workers()[0].in_flight, admin.list_workers()[0].queued)
                        == (1, 1)
                    ),
                    30,
                ), admin.list_workers()
            finally:
                gate.touch()
                for thread in held:
                    thread.join(30)
        (done,) = admin.list_workers()
    assert (done.in_flight, done.queued) == (0, 0)
    assert done.calls == after.calls + 2


def test_admin_reloads_a_model_from_disk(in_process_server, models, tokens):
    server = in_process_server(models, admin_tokens_file=tokens["admin"])
    assert echo(server.target)["version"] == 1
    (models / "echo" / "__init__.py").write_text(textwrap.dedent(echo_source(22)))
    with AdminClient(server.target, token=ADMIN_TOKEN, timeout=10) as admin:
        (outcome,) = admin.reload_model("echo")
        assert outcome.reloaded, outcome.error
        assert echo(server.target)["version"] == 22
        # A broken model on disk: the worker keeps the one it has.
        (models / "echo" / "__init__.py").write_text("raise RuntimeError('half-written')\n")
        (outcome,) = admin.reload_model("echo")
        assert not outcome.reloaded
        assert "half-written" in outcome.error
        assert echo(server.target)["version"] == 22
        with pytest.raises(ModelNotFoundError):
            admin.reload_model("nope")


@pytest.mark.slow
def test_a_client_whose_token_was_revoked_says_so_once_and_recovers(
    server_process, models, tokens, caplog
):
    # The server is redeployed with a tokens file that no longer holds the client's token.
    caplog.set_level(logging.INFO, logger="tms_client")
    args = ("--tokens-file", str(tokens["calls"]))
    first = server_process(models, workers=2, args=args)
    port = first.target.rsplit(":", 1)[1]
    original = tokens["calls"].read_text()
    with ModelClient(
        "echo",
        first.target,
        token=CALL_TOKEN,
        retry=RetryPolicy.never(),
        balancer=RoundRobin(),  # so that the calls at the end reach both workers
    ) as client:
        assert len(client.workers()) == 2
        first.stop()
        deadline = time.monotonic() + 10
        while client.workers():  # calls that fail drop the workers that went away
            assert time.monotonic() < deadline
            with contextlib.suppress(UnavailableError):
                client.run_text("x")
        tokens["calls"].write_text(f"{OTHER_CALL_TOKEN}\n")
        server_process(models, workers=2, args=(*args, "--port", port))
        time.sleep(2)  # several rounds of healing, each refused
        assert not client.workers()
        failures = [r for r in caplog.records if "worker discovery failed" in r.getMessage()]
        assert len(failures) == 1, [r.getMessage() for r in failures]
        assert "UNAUTHENTICATED" in failures[0].getMessage()
        assert failures[0].exc_info is None
        tokens["calls"].write_text(original)  # valid again: the pool heals by itself
        os.utime(tokens["calls"], (time.time() + 5, time.time() + 5))
        deadline = time.monotonic() + 15
        while len(client.workers()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert "worker discovery works again" in caplog.text
        answers = {client.run_text("x")["pid"] for _ in range(4)}
        assert answers == {w.pid for w in client.workers()}
    assert CALL_TOKEN not in caplog.text


@pytest.mark.slow
def test_admin_across_worker_processes(server_process, models, tokens):
    server = server_process(models, workers=2, args=("--admin-tokens-file", str(tokens["admin"])))
    with ModelClient("echo", server.target, connect_timeout=10, balancer=RoundRobin()) as client:
        pids = {w.pid for w in client.workers()}
        with AdminClient(server.target, token=ADMIN_TOKEN, timeout=30) as admin:
            workers = admin.list_workers()
            assert {w.pid for w in workers} == pids
            assert [w.index for w in workers] == [0, 1]
            (models / "echo" / "__init__.py").write_text(textwrap.dedent(echo_source(333)))
            outcomes = admin.reload_model("echo")
        assert sorted(o.pid for o in outcomes) == sorted(pids)
        assert all(o.reloaded for o in outcomes), outcomes
        answers = [client.run_text("x") for _ in range(6)]  # round-robin: both workers
    assert {a["pid"] for a in answers} == pids
    assert {a["version"] for a in answers} == {333}


# -- settings -----------------------------------------------------------------------------------


def test_security_settings_are_checked(tmp_path, pki, tokens):
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        Settings(tls_cert=pki["server"].cert)
    with pytest.raises(ValueError, match="tls_client_ca needs tls_cert"):
        Settings(tls_client_ca=pki["ca"].cert)
    mismatched = Settings(tls_cert=pki["server"].cert, tls_key=pki["client"].key)
    with pytest.raises(SecurityError, match="tls_cert"):
        check_files(mismatched)
    with pytest.raises(SecurityError, match="tokens_file and admin_tokens_file"):
        check_files(Settings(tokens_file=tokens["calls"], admin_tokens_file=tokens["calls"]))
    check_files(Settings(tls_cert=pki["server"].cert, tls_key=pki["server"].key))


def test_a_missing_certificate_stops_the_server_with_a_message(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tms_server",
            "--tls-cert",
            str(tmp_path / "no.crt"),
            "--tls-key",
            str(tmp_path / "no.key"),
            "--models",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "cannot read tls_cert" in result.stderr


@pytest.mark.parametrize("bad", ["text", "key"])
def test_a_client_ca_that_is_no_certificate_stops_the_server_naming_it(tmp_path, models, pki, bad):
    # It was reported as "cannot use tls_cert ... with tls_key", blaming a pair that was fine.
    client_ca = pki["server"].key if bad == "key" else tmp_path / "notes.md"
    if bad == "text":
        client_ca.write_text("# Notes\n\nNot a certificate.\n")
    command = [sys.executable, "-m", "tms_server", "--models", str(models), "--port", "0"]
    command += ["--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["server"].key)]
    command += ["--tls-client-ca", str(client_ca)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"tms-server: error: cannot use tls_client_ca {client_ca}: " in result.stderr
    assert "NO_CERTIFICATE" in result.stderr
    assert "tls_key" not in result.stderr


# -- the tms command ----------------------------------------------------------------------------


def test_cli_over_mutual_tls_with_a_token(
    in_process_server, models, pki, tokens, capsys, monkeypatch
):
    from tms_cli.__main__ import main  # noqa: PLC0415

    server = tls_server(
        in_process_server, models, pki, tls_client_ca=pki["ca"].cert, tokens_file=tokens["calls"]
    )
    client = pki["client"]
    tls = ["--tls-ca", str(pki["ca"].cert), "--tls-cert", str(client.cert)]
    tls += ["--tls-key", str(client.key), "--connect-timeout", "2"]
    base = ["--target", f"localhost:{server.running.port}", *tls]
    assert main([*base, "--token", CALL_TOKEN, "text", "echo", "over TLS"]) == 0
    assert '"text": "over TLS"' in capsys.readouterr().out
    monkeypatch.setenv("TMS_TOKEN", OTHER_CALL_TOKEN)
    assert main([*base, "models"]) == 0
    assert "echo" in capsys.readouterr().out
    assert main([*base, "--token", "wrong-token-xyz", "models"]) == 1
    err = capsys.readouterr().err
    assert "UNAUTHENTICATED" in err
    assert "wrong-token-xyz" not in err
    named = ["--target", server.target, *tls, "--tls-server-name", "localhost", "models"]
    assert main(named) == 0
    capsys.readouterr()
    assert main(["--target", server.target, "--connect-timeout", "1", "models"]) == 1
    assert "cannot reach a TMS server" in capsys.readouterr().err  # plaintext to TLS
    assert main(["--target", server.target, "--tls-cert", str(client.cert), "models"]) == 2
    assert "cert and key go together" in capsys.readouterr().err


def test_security_and_limit_settings_from_flags_and_environment():
    environ = {
        "TMS_TLS_CERT": "/certs/server.pem",
        "TMS_TLS_KEY": "/certs/server.key",
        "TMS_TLS_CLIENT_CA": "/certs/clients.pem",
        "TMS_TOKENS_FILE": "/secrets/tokens",
        "TMS_CALL_TIME_LIMIT": "30",
        "TMS_MAX_QUEUED_CALLS": "5",
    }
    settings = parse_settings(["--admin-tokens-file", "/secrets/admin"], environ)
    assert settings.tls_cert == Path("/certs/server.pem")
    assert settings.tls_client_ca == Path("/certs/clients.pem")
    assert settings.tokens_file == Path("/secrets/tokens")
    assert settings.admin_tokens_file == Path("/secrets/admin")
    assert settings.call_time_limit == 30.0
    assert settings.max_concurrent_calls == settings.threads + 5
    defaults = Settings()
    assert (defaults.tls, defaults.tokens_file, defaults.admin_tokens_file) == (False, None, None)
    assert defaults.worker_memory_mb == 0
    options = dict(grpc_options(defaults))
    assert options["grpc.server_handshake_timeout_ms"] == 20_000
    assert options["grpc.keepalive_time_ms"] == 60_000
    assert options["grpc.max_connection_idle_ms"] == 1_800_000
    assert "grpc.max_connection_age_ms" not in options
    assert options["grpc.max_allowed_incoming_connections"] == 1000
    assert options["grpc.max_concurrent_streams"] == 100
    assert (defaults.slow_client_seconds, defaults.max_untaken_mb) == (60.0, 256)
    capped = parse_settings(
        ["--max-connections", "50", "--slow-client-seconds", "5"],
        {"TMS_MAX_STREAMS_PER_CONNECTION": "8", "TMS_MAX_UNTAKEN_MB": "32"},
    )
    capped_options = dict(grpc_options(capped))
    assert capped_options["grpc.max_allowed_incoming_connections"] == 50
    assert capped_options["grpc.max_concurrent_streams"] == 8
    assert (capped.slow_client_seconds, capped.max_untaken_mb) == (5.0, 32)
    aged = dict(
        grpc_options(Settings(max_connection_age_seconds=60, max_connection_idle_seconds=0))
    )
    assert aged["grpc.max_connection_age_ms"] == 60_000
    assert "grpc.max_connection_idle_ms" not in aged


def test_the_https_port_accepts_again_once_descriptors_are_free(models, pki):
    # A worker out of file descriptors cannot accept; the HTTPS port's accept loop died of
    # the first such error, and the port never answered again. It now waits a moment and
    # accepts again once descriptors are free.
    cert, key = str(pki["server"].cert), str(pki["server"].key)
    command = ["prlimit", "--nofile=160:160", sys.executable, "-m", "tms_server"]
    command += ["--models", str(models), "--host", "127.0.0.1", "--port", "0", "--workers", "1"]
    command += ["--http-port", "0", "--max-connections", "5000", "--tls-cert", cert]
    command += ["--tls-key", key]
    server = ServerProcess(
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    )
    try:
        assert server.wait_started(60), server.logs()
        (line,) = [line for line in server.output if line.startswith("tms-server: HTTP on ")]
        port = int(line.split()[3].rstrip("/").rsplit(":", 1)[1])
        with contextlib.ExitStack() as stack:
            for _ in range(300):  # past the 160 descriptors the worker may hold
                stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            assert wait_for(lambda: "cannot accept connections for now" in server.logs(), 10)
        url = f"https://localhost:{port}/v2/health/live"

        def answers() -> bool:
            try:
                return https_status(url, pki["ca"].cert) == 200
            except OSError:
                return False

        assert wait_for(answers, 15), server.logs()
    finally:
        server.stop()


FAILS_TO_LOAD = """
    import tms_server

    class Model(tms_server.Model):
        def __init__(self):
            raise RuntimeError("weights.bin not found")

        def run(self, image, args):
            return {}
"""


def readme_tls_probes(target: str, ca: Path) -> list[list[str]]:
    """The exec probes README.md gives for a server with TLS, readiness then liveness, made
    to run here: this server, this CA, this environment's python and tms."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### TLS and mutual TLS", 1)[1].split("\n### ", 1)[0]
    probes = []
    for found in re.findall(r'`(\["[^`]*\])`', section):
        text = found.replace("localhost:50051", target).replace("/tls/ca.pem", str(ca))
        program, *arguments = json.loads(text)
        here = {"python": sys.executable, "tms": str(Path(sys.executable).with_name("tms"))}
        probes.append([here[program], *arguments])
    return probes


@pytest.mark.parametrize("allow", [False, True], ids=["failed-model", "allow-failed-models"])
def test_the_readme_exec_probes_for_tls_agree_with_the_servers_health(
    server_process, models, pki, allow
):
    """Readiness passes exactly when the server as a whole ("") is SERVING (so it passes under
    --allow-failed-models with a model that failed to load); liveness passes while the worker
    answers, broken models or not."""
    write_models(models, {"broken": FAILS_TO_LOAD})
    args = ["--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["server"].key)]
    server = server_process(models, workers=1, args=(*args, *["--allow-failed-models"] * allow))
    port = server.target.rsplit(":", 1)[1]
    readiness, liveness = readme_tls_probes(f"localhost:{port}", pki["ca"].cert)
    ready = subprocess.run(readiness, capture_output=True, text=True, timeout=60, check=False)
    assert ready.returncode == (0 if allow else 1), ready.stdout + ready.stderr
    live = subprocess.run(liveness, capture_output=True, text=True, timeout=60, check=False)
    assert live.returncode == 0, live.stdout + live.stderr
