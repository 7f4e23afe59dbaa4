"""``tms bench``: a bounded load generator with a live view, ending in a summary.

``--concurrency`` threads each send one call at a time for ``--duration`` seconds (a closed
loop: the load never exceeds that many calls in flight). Every call sends the same payload
(random pixels of ``--size``, an image file, or a text). The summary gives requests/s, MB/s,
latency percentiles of the calls that succeeded, failures by status code, and how many calls
each worker process got (the balancer's work).

This module is the command: it picks the payload and the call, then hands over to
``bench_payload`` (what is sent), ``bench_load`` (the threads and what they measure, shown by
``bench_live``) and ``bench_report`` (the summary).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from tms_cli import values
from tms_cli.bench_live import Rate, live_view
from tms_cli.bench_load import Run, generate_load
from tms_cli.bench_payload import Payload, image_file, random_pixels, text_payload
from tms_cli.bench_report import print_summary, summary_json
from tms_cli.connection import Options, check_model, connect, describe_error
from tms_cli.errors import CliError, UsageError
from tms_cli.outputs import print_json, to_json
from tms_cli.values import image_size
from tms_client import (
    Balancer,
    LeastLoaded,
    ModelClient,
    ModelInfo,
    RandomBalancer,
    RoundRobin,
    TMSError,
)

# Rate is re-exported: it was defined here, and tests import it from here.
__all__ = ["BALANCERS", "DEFAULT_TEXT", "Rate", "bench", "image_size"]

BALANCERS: dict[str, Callable[[], Balancer]] = dict(
    zip(values.BALANCERS, (RoundRobin, LeastLoaded, RandomBalancer), strict=True)
)
DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog. " * 4


def bench(options: Options, args: SimpleNamespace) -> int:
    """``tms bench MODEL``: exit code 0 if every call succeeded, 1 if any failed, 130 if
    interrupted (after the summary of what was done)."""
    if sum(given is not None for given in (args.image, args.size, args.text)) > 1:
        raise UsageError("give at most one of --image, --size and --text")
    if args.image is not None:
        payload = image_file(args.image)
    elif args.text is not None:
        payload = text_payload(args.text)
    else:
        payload = random_pixels(args.size or image_size(values.DEFAULT_SIZE))
    with connect(options, args.model, balancer=BALANCERS[args.balancer]()) as client:
        info = check_model(client)
        if args.text is None and args.image is None and args.size is None and _takes_text(info):
            payload = text_payload(DEFAULT_TEXT)
        name, call = _call_for(client, info, payload, args.args)
        try:
            call()  # fails fast on what every call would fail on; warms the workers up
        except (TMSError, ValueError) as exc:
            raise CliError(
                f"the first call failed, nothing was measured: {describe_error(exc)}"
            ) from exc
        run = Run(
            args.model,
            options.target,
            name,
            payload,
            args.concurrency,
            args.duration,
            args.balancer,
        )
        generate_load(client, call, run, live_view(sys.stderr))
    if run.stats.crash is not None:
        raise run.stats.crash
    if options.json:
        print_json(to_json(summary_json(run), pretty=True), sys.stdout)
    else:
        print_summary(run, sys.stdout)
    if run.interrupted:
        return 130
    return 1 if run.stats.errors else 0


def _takes_text(info: ModelInfo) -> bool:
    return "run_text" in info.calls and "run_image" not in info.calls


def _call_for(
    client: ModelClient, info: ModelInfo, payload: Payload, args: dict[str, Any] | None
) -> tuple[str, Callable[[], int]]:
    """The client method a run calls, and a function making one call that returns the bytes
    of output images received."""
    if payload.is_text:
        check_model(client, "run_text", hint="leave out --text to send it images")
        text: str = payload.value
        return "run_text", lambda: _no_output(client.run_text(text, args))
    if "run_image" in info.calls or "run_image_to_image" not in info.calls:
        check_model(client, "run_image")  # says what the model supports when it is neither
        return "run_image", lambda: _no_output(
            client.run_image(payload.value, args, color=payload.color)
        )

    def image_to_image() -> int:
        output = client.run_image_to_image(payload.value, args, color=payload.color)
        return sum(image.nbytes for image in output.images)

    return "run_image_to_image", image_to_image


def _no_output(result: Any) -> int:
    return 0
