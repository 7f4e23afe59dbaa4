"""The client host of tests/test_scale_out.py: one ModelClient on a ``dns:///`` target.

Runs inside the client's network namespace, so its system resolver asks the test's DNS
server. Reads commands on stdin, one a line, and answers each with one JSON line on stdout:

- ``status``: the workers the client knows, and the calls so far (ok, failed, first errors);
- ``load``: start ``--callers`` threads calling ``run_image`` on the model without pause;
- ``stop``: stop the callers and answer as ``status`` once they have ended; then exit.

Every call sends an image of one value and checks the mean the model returns, so a wrong
answer counts as a failure too.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

import numpy as np

from tms_client import ModelClient


class Load:
    """Callers sharing one client, and what their calls came to."""

    def __init__(self, client: ModelClient, callers: int) -> None:
        self.client = client
        self.ok = 0
        self.failed = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._call, args=(n,), name=f"caller-{n}", daemon=True)
            for n in range(callers)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def _call(self, n: int) -> None:
        image = np.full((16, 16, 3), n, np.uint8)
        while not self._stop.is_set():
            try:
                result = self.client.run_image(image)
                error = None if result == {"mean": float(n)} else f"wrong answer {result}"
            except Exception as exc:  # every failure counts; none may happen
                error = repr(exc)
            with self._lock:
                if error is None:
                    self.ok += 1
                else:
                    self.failed += 1
                    if len(self.errors) < 10:
                        self.errors.append(error)

    def status(self) -> dict[str, Any]:
        workers = [
            {"address": w.address, "instance_id": w.instance_id, "pid": w.pid, "calls": w.calls}
            for w in self.client.workers()
        ]
        with self._lock:
            return {
                "workers": workers,
                "ok": self.ok,
                "failed": self.failed,
                "errors": list(self.errors),
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="e.g. dns:///tms.scale.test:50051")
    parser.add_argument("--model", default="mean")
    parser.add_argument("--callers", type=int, default=8)
    args = parser.parse_args()
    with ModelClient(args.model, args.target) as client:
        load = Load(client, args.callers)
        for line in sys.stdin:
            command = line.strip()
            if command == "load":
                load.start()
            elif command == "stop":
                load.stop()
            elif command != "status":
                raise SystemExit(f"unknown command {command!r}")
            print(json.dumps(load.status()), flush=True)
            if command == "stop":
                return


if __name__ == "__main__":
    main()
