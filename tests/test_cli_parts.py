"""Parts of ``tms`` that need no server: latency percentiles, previews, the live view."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tms_cli.bench import Rate, image_size
from tms_cli.bench_live import live_view, show
from tms_cli.latency import LatencyHistogram
from tms_cli.preview import colormap, flow_to_rgb, preview


def test_latency_percentiles_within_one_percent():
    latencies = np.random.default_rng(1).lognormal(np.log(0.004), 0.6, 20_000)
    histogram = LatencyHistogram()
    for seconds in latencies:
        histogram.add(float(seconds))
    for percent in (50, 90, 99):
        exact = np.percentile(latencies, percent, method="inverted_cdf")
        assert histogram.percentile(percent) == pytest.approx(exact, rel=0.01)
    assert histogram.percentile(100) == histogram.max == latencies.max()
    assert histogram.mean == pytest.approx(latencies.mean())
    assert len(histogram._buckets) < 1000  # bounded, however many calls


def test_latency_of_nothing_and_of_tiny_calls():
    histogram = LatencyHistogram()
    assert histogram.percentile(50) == histogram.mean == 0.0
    histogram.add(1e-9)
    assert histogram.percentile(50) == 1e-9  # never above the largest seen


def test_colormap_runs_from_dark_blue_to_yellow():
    values = np.array([[0.0, 0.5, 1.0, np.nan]])
    rgb = colormap(values)
    assert rgb.dtype == np.uint8
    assert rgb[0].tolist() == [[68, 1, 84], [33, 144, 141], [253, 231, 37], [0, 0, 0]]
    # Values outside [0, 1] are stretched from their minimum to their maximum.
    np.testing.assert_array_equal(colormap(values * 40 - 7), rgb)


def test_flow_hue_is_direction_and_brightness_length():
    directions = np.array([[[1, 0], [0, 1], [-1, 0], [0, -1], [0.5, 0], [0, 0]]], np.float32)
    rgb = flow_to_rgb(directions, max_magnitude=1.0)[0].tolist()
    assert rgb[0] == [255, 0, 0]  # right: red
    assert rgb[1] == [128, 255, 0]  # down (image y grows downward): yellow-green
    assert rgb[2] == [0, 255, 255]  # left: cyan
    assert rgb[3] == [128, 0, 255]  # up: violet
    assert rgb[4] == [128, 0, 0]  # half as long: half as bright
    assert rgb[5] == [0, 0, 0]  # still


def test_preview_only_for_what_is_no_picture():
    assert preview(np.zeros((4, 4), np.uint8)) is None
    assert preview(np.zeros((4, 4, 3), np.uint8)) is None
    assert preview(np.zeros((4, 4, 2, 2), np.float32)) is None
    assert preview(np.zeros((4, 4, 5), np.float32)) is None
    assert preview(np.zeros((4, 4, 1), np.float32)).shape == (4, 4, 3)
    assert preview(np.zeros((4, 4), np.uint16)).shape == (4, 4, 3)
    assert preview(np.zeros((4, 4, 2), np.float32)).shape == (4, 4, 3)
    rgba = preview(np.full((4, 4, 4), 0.5, np.float32))
    assert (rgba.shape, int(rgba[0, 0, 0])) == ((4, 4, 4), 128)


def test_image_size():
    assert image_size("1080x1920x3") == (1080, 1920, 3)
    assert image_size("480X640") == (480, 640)
    for bad in ("1080", "0x5", "axb", "4x4x2", "100000x100000x3"):
        with pytest.raises(ValueError, match=r"HxW|channels|GiB"):
            image_size(bad)


def test_rate_over_the_last_second():
    rate = Rate(started=0.0)
    assert rate.update(0.5, 50) == 100.0
    assert rate.update(1.0, 100) == 100.0
    assert rate.update(2.0, 400) == pytest.approx(300.0)  # only the last second counts


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_view_redraws_in_place_and_goes_at_the_end(monkeypatch):
    monkeypatch.setenv("COLUMNS", "20")
    monkeypatch.setenv("LINES", "4")
    assert live_view(io.StringIO()) is None  # not a terminal: no view
    stream = Terminal()
    live = live_view(stream)
    with live:
        show(live, ["one", "two"])
        show(live, ["three", "a line longer than the terminal", *(f"w{i}" for i in range(9))])
    out = stream.getvalue()
    assert "one\ntwo" in out
    # Redrawn over it: cut at the width, not wrapped, and only as many lines as fit.
    assert "\x1b[1A\x1b[2Kthree\na line longer than …\n  ... and 9 more" in out
    assert "w0" not in out
    assert out.endswith("\x1b[1A\x1b[2K" * 3)  # and erased at the end
