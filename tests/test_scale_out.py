"""Scale-out through DNS, as behind a Kubernetes headless Service, on real network hosts.

Each host is a network namespace with its own address on one bridge, running a real
``tms-server`` with two workers. A real DNS server (dnsmasq) answers one name with the address
of every host, as the cluster DNS does for a headless Service, and is told again (SIGHUP)
whenever hosts come and go. The client runs on a host of its own (tests/scale_out_driver.py)
whose system resolver asks that server, with the target ``dns:///tms.scale.test:50051``.

The bridge and dnsmasq live in a namespace of their own too, not in the machine's: the test
touches none of the machine's interfaces, routes, firewall rules or DNS, its addresses cannot
clash with the machine's, and no namespace has a route anywhere but the bridge. Needs root
(else it is skipped) and dnsmasq (scripts/check.sh installs it; without it the test fails).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import EXAMPLE_MODELS, ServerProcess, write_models

pytestmark = pytest.mark.slow

NAME = "tms.scale.test"
PORT = 50051  # every host has a network stack of its own, so the same port is free on each
SUBNET = "10.233.0"  # a /24 that exists only inside the test's namespaces
DNS_ADDRESS = f"{SUBNET}.1"  # the bridge's, in the network namespace
CLIENT_ADDRESS = f"{SUBNET}.100"
DRIVER = Path(__file__).with_name("scale_out_driver.py")
NETNS_ETC = Path("/etc/netns")  # `ip netns exec NS` mounts NETNS_ETC/NS/* over /etc/*
JOIN_TIMEOUT = 90.0  # a bound for the client to use a new host, not a speed target: a host
# started on a busy machine can take 15 s to load its models


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def namespaces_unavailable(probe: str) -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) to create network namespaces"
    try:
        ip("netns", "add", probe)
    except RuntimeError as exc:
        return f"cannot create a network namespace: {exc}"
    ip("netns", "del", probe)
    return None


def end(process: subprocess.Popen[str], sig: int | None, timeout: float) -> int:
    """Signal ``process`` (the leader of a session of its own), give it ``timeout`` seconds
    to exit, then kill what is left of its process group. The group is killed before the
    leader is reaped, while its id cannot belong to anyone else."""
    if process.returncode is None:
        if sig is not None:
            os.kill(process.pid, sig)
        deadline = time.monotonic() + timeout
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        with contextlib.suppress(ChildProcessError):  # reaped already: nothing left to kill
            while os.waitid(os.P_PID, process.pid, flags) is None:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    return process.wait()


class Network:
    """Namespaces on one bridge, which sits in a namespace of its own (the "switch")."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.namespaces: list[str] = []
        try:
            self.switch = self.namespace("net")
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "addr", "add", f"{DNS_ADDRESS}/24", "dev", "br0")
            ip("-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def namespace(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def attach(self, role: str, address: str) -> str:
        """A new namespace with ``address`` on the bridge (a veth pair); its name."""
        name = self.namespace(role)
        ip(
            "link", "add", "name", role, "netns", self.switch,
            "type", "veth", "peer", "name", "eth0", "netns", name,
        )  # fmt: skip
        ip("-n", self.switch, "link", "set", role, "master", "br0", "up")
        ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", name, "link", "set", "eth0", "up")
        return name

    def close(self) -> None:
        """Delete every namespace, and with them the bridge and the veth pairs."""
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


class Dns:
    """dnsmasq on the bridge address, answering NAME with the addresses last published."""

    def __init__(self, network: Network, dnsmasq: str, folder: Path) -> None:
        self.hosts = folder / "hosts"
        self.hosts.write_text("")
        self.log: list[str] = []
        self._changed = threading.Condition()
        command = [
            "ip", "netns", "exec", network.switch, dnsmasq,
            "--keep-in-foreground", "--log-facility=-", "--pid-file=",
            "--conf-file=/dev/null",  # no configuration of the machine's
            "--no-resolv", "--no-hosts", f"--addn-hosts={self.hosts}", "--local-ttl=0",
            "--bind-interfaces", "--interface=br0", "--except-interface=lo", "--port=53",
            "--user=root",  # to read the hosts file again, in a folder only root may read
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name="dnsmasq-output", daemon=True)
        self._reader.start()
        try:
            self._wait_read(0)
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                with self._changed:
                    self.log.append(line)
                    self._changed.notify_all()
        with self._changed:
            self.log.append("(dnsmasq closed its output)\n")
            self._changed.notify_all()

    def _reads(self) -> int:
        return sum(f"read {self.hosts} - " in line for line in self.log)

    def _wait_read(self, seen: int) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self._reads() > seen, timeout=10):
                raise RuntimeError("dnsmasq did not read its hosts file:\n" + "".join(self.log))

    def publish(self, addresses: list[str]) -> None:
        """Answer NAME with ``addresses`` from now on (as a Service's endpoints change)."""
        with self._changed:
            seen = self._reads()
        new = self.hosts.with_suffix(".new")
        new.write_text("".join(f"{address} {NAME}\n" for address in addresses))
        new.replace(self.hosts)
        os.kill(self.process.pid, signal.SIGHUP)
        self._wait_read(seen)

    def stop(self) -> None:
        end(self.process, signal.SIGTERM, 10)
        self._reader.join(10)


@dataclass
class Host:
    """A namespace with one address, running a tms-server with two workers on it."""

    namespace: str
    address: str
    server: ServerProcess

    @property
    def target(self) -> str:
        return f"{self.address}:{PORT}"

    def stop(self, sig: int | None, timeout: float = 30.0) -> int:
        """Signal the server (None: it was signalled already) and wait; its exit code."""
        end(self.server.process, sig, timeout)
        return self.server.stop()  # only reaps it and ends the output reader


class Driver:
    """tests/scale_out_driver.py on the client host: commands in, one JSON answer each."""

    def __init__(self, namespace: str, log: Path) -> None:
        self.log = log
        command = [
            "ip", "netns", "exec", namespace, sys.executable, str(DRIVER),
            "--target", f"dns:///{NAME}:{PORT}", "--model", "mean", "--callers", "8",
        ]  # fmt: skip
        with log.open("w") as stderr:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                start_new_session=True,
            )
        self._answers: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name="driver-output", daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self._answers.put(line)
        self._answers.put(None)

    def ask(self, command: str, timeout: float = 60.0) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no answer to {command!r} in {timeout:g}s\n{self.logs()}"
            ) from None
        if answer is None:
            raise AssertionError(f"the driver exited ({self.process.poll()}):\n{self.logs()}")
        result: dict[str, Any] = json.loads(answer)
        return result

    def until(self, condition: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The first status that meets ``condition`` within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        status = self.ask("status")
        while not condition(status):
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout:g}s; last status: {status}")
            time.sleep(0.2)
            status = self.ask("status")
        return status

    def logs(self) -> str:
        return self.log.read_text()[-5000:]

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()  # it stops its callers, closes the client and exits
        end(self.process, None, 10)


class ScaleOut:
    """Hosts on one network, the DNS server naming them, and a client host asking it."""

    def __init__(self, network: Network, dns: Dns, models: Path, folder: Path) -> None:
        self.network = network
        self.dns = dns
        self.models = models
        self.folder = folder
        self.hosts: list[Host] = []
        self.drivers: list[Driver] = []

    def start_host(self, role: str, address: str) -> Host:
        """A new host serving the models, once its server says it serves."""
        namespace = self.network.attach(role, address)
        command = [
            "ip", "netns", "exec", namespace, sys.executable, "-m", "tms_server",
            "--host", address, "--port", str(PORT), "--workers", "2",
            "--models", str(self.models), "--entry-points", "false",
        ]  # fmt: skip
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        host = Host(namespace, address, ServerProcess(process))
        self.hosts.append(host)
        if not host.server.wait_started(60):
            raise RuntimeError(f"tms-server on {address} did not start:\n{host.server.logs()}")
        return host

    def start_client(self) -> Driver:
        """The driver on a host of its own whose resolver asks our DNS server only."""
        namespace = self.network.attach("client", CLIENT_ADDRESS)
        etc = NETNS_ETC / namespace
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(f"nameserver {DNS_ADDRESS}\n")
        (etc / "nsswitch.conf").write_text(nsswitch())
        driver = Driver(namespace, self.folder / "driver.log")
        self.drivers.append(driver)
        return driver

    def close(self) -> None:
        for driver in self.drivers:
            driver.stop()
        running = [h for h in self.hosts if h.server.process.returncode is None]
        for host in running:  # all at once: each drains for up to its grace period
            with contextlib.suppress(ProcessLookupError):
                os.kill(host.server.process.pid, signal.SIGTERM)
        for host in self.hosts:
            host.stop(None, timeout=15)


def nsswitch() -> str:
    """The machine's nsswitch.conf with host names looked up in /etc/hosts and DNS alone: a
    systemd-resolved or mDNS module would ask others than the namespace's resolv.conf."""
    machine = Path("/etc/nsswitch.conf")
    lines = machine.read_text().splitlines() if machine.exists() else []
    return "\n".join([*(x for x in lines if not x.startswith("hosts:")), "hosts: files dns", ""])


@pytest.fixture
def scale_out(tmp_path: Path) -> Iterator[ScaleOut]:
    """A network, a DNS server on it and the models; everything is removed afterwards."""
    prefix = f"tms-scale-{os.getpid()}"
    reason = namespaces_unavailable(f"{prefix}-probe")
    if reason is not None:
        pytest.skip(reason)
    dnsmasq = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if dnsmasq is None:
        pytest.fail(
            "dnsmasq is not installed, and this test serves its DNS name with it: install it "
            "(apt-get install dnsmasq-base; scripts/check.sh does so when run as root)"
        )
    mean = (EXAMPLE_MODELS / "mean" / "__init__.py").read_text()
    models = write_models(tmp_path / "models", {"mean": mean})
    with contextlib.ExitStack() as cleanup:  # every step undone, even if one fails
        if not NETNS_ETC.exists():
            cleanup.callback(remove_if_empty, NETNS_ETC)
        cleanup.callback(shutil.rmtree, NETNS_ETC / f"{prefix}-client", ignore_errors=True)
        network = Network(prefix)
        cleanup.callback(network.close)
        dns = Dns(network, dnsmasq, tmp_path)
        cleanup.callback(dns.stop)
        scale = ScaleOut(network, dns, models, tmp_path)
        cleanup.callback(scale.close)
        yield scale


def remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # another may have put files there since
        folder.rmdir()


def addresses(status: dict[str, Any]) -> set[str]:
    return {w["address"] for w in status["workers"]}


def workers_at(status: dict[str, Any], host: Host) -> int:
    return sum(w["address"] == host.target for w in status["workers"])


def calls_to(status: dict[str, Any], host: Host) -> int:
    return sum(w["calls"] for w in status["workers"] if w["address"] == host.target)


def test_one_name_reaches_every_worker_and_follows_hosts_that_come_and_go(scale_out):
    hosts = [scale_out.start_host(f"h{n}", f"{SUBNET}.1{n}") for n in (1, 2, 3)]
    scale_out.dns.publish([h.address for h in hosts])
    client = scale_out.start_client()

    # One name, three addresses, and every worker process behind each (the kernel hands a
    # connection to either worker of a host, so the last one may take the client a moment).
    status = client.until(lambda s: len(s["workers"]) == 6, timeout=JOIN_TIMEOUT)
    assert addresses(status) == {h.target for h in hosts}, status
    assert len({(w["instance_id"], w["pid"]) for w in status["workers"]}) == 6, status

    client.ask("load")  # 8 callers from now on
    client.until(lambda s: s["ok"] >= 200, timeout=60)

    # A rolling change under load: one host leaves the name and drains, a fourth one joins.
    gone, *kept = hosts
    scale_out.dns.publish([h.address for h in kept])
    os.kill(gone.server.process.pid, signal.SIGTERM)
    joined = scale_out.start_host("h4", f"{SUBNET}.14")
    scale_out.dns.publish([h.address for h in (*kept, joined)])
    assert gone.stop(None) == 0, gone.server.logs()  # drained and exited cleanly

    status = client.until(
        lambda s: (
            workers_at(s, joined) == 2 and calls_to(s, joined) > 0 and not workers_at(s, gone)
        ),
        timeout=JOIN_TIMEOUT,
    )
    assert addresses(status) == {h.target for h in (*kept, joined)}, status
    calls_before = calls_to(status, joined)
    client.until(lambda s: calls_to(s, joined) > calls_before + 50, timeout=JOIN_TIMEOUT)

    final = client.ask("stop")
    assert final["failed"] == 0, final["errors"]
    assert final["ok"] > 0, final
    assert len(final["workers"]) == 6, final
