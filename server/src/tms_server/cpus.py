"""How many CPUs the server may use, and how many threads each worker's numerical libraries get.

A container limited to two CPUs by its cgroup quota still shows every core of the host to
``os.sched_getaffinity``, so counting cores would start a worker per host core, each with a
thread pool of its own per library, all fighting over two CPUs. ``available_cpus`` reads the
quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, the tightest of
the process's cgroup and its parents) and caps the affinity count with it.

Each worker then tells its numerical libraries (OpenMP, MKL, OpenBLAS, numexpr, Accelerate,
BLIS, OpenCV) to use ``max(1, CPUs // workers)`` threads, through the environment variables
they read when they load, which the worker sets before it imports any model. numpy is the
exception: the server has loaded it before it forks, so ``limit_loaded_blas`` tells numpy's
OpenBLAS directly. ONNX Runtime and PyTorch's inter-op pool read no variable: a model passes
its ``threads`` attribute to them (see tms_server.model).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path, PurePosixPath

__all__ = [
    "CGROUP_ROOT",
    "THREAD_VARIABLES",
    "available_cpus",
    "cgroup_cpu_limit",
    "limit_loaded_blas",
    "model_threads",
    "thread_environment",
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
#: The variables numerical libraries read for the size of their thread pools.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS",
    "OPENCV_FOR_THREADS_NUM",
)
#: OpenBLAS's setter, by the names its builds export it under (numpy 2 bundles
#: scipy-openblas, whose symbols carry a prefix and a suffix).
_BLAS_SETTERS = (
    "openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "scipy_openblas_set_num_threads64_",
)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> Fraction | None:
    """The CPUs the cgroup CPU quota allows this process (quota / period), or None when no
    quota applies. ``root`` is where the cgroup file systems are mounted, ``self_cgroup`` the
    process's cgroup list (``/proc/self/cgroup``); tests point both at fake files."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        lines = ["0::/", "0:cpu:/"]  # unknown: look at the roots of both versions
    limits: list[Fraction] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:  # cgroup v2: one hierarchy
            limits += _limits(root, path, _v2_quota)
        elif "cpu" in controllers.split(","):
            # cgroup v1 mounts the cpu controller as cpu,cpuacct (often linked as cpu).
            for mount in (root / controllers, root / "cpu"):
                if mount.is_dir():
                    limits += _limits(mount, path, _v1_quota)
                    break
    return min(limits, default=None)


def _limits(mount: Path, path: str, read: Callable[[Path], Fraction | None]) -> list[Fraction]:
    """The quotas of the cgroup at ``path`` under ``mount`` and of each of its parents up to
    the mount's root (in a container the process's own path may not be there: then the
    mount's root is its cgroup)."""
    parts = [part for part in PurePosixPath(path).parts[1:] if part not in (".", "..")]
    folders = [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]
    return [limit for folder in folders if (limit := read(folder)) is not None]


def _v2_quota(folder: Path) -> Fraction | None:
    """``cpu.max``: "QUOTA PERIOD", or "max PERIOD" for no limit."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        if quota != "max" and int(quota) > 0 and int(period) > 0:
            return Fraction(int(quota), int(period))
    return None


def _v1_quota(folder: Path) -> Fraction | None:
    """``cpu.cfs_quota_us`` (-1 for no limit) over ``cpu.cfs_period_us``."""
    with contextlib.suppress(OSError, ValueError):
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return Fraction(quota, period)
    return None


def available_cpus(
    *,
    root: Path = CGROUP_ROOT,
    self_cgroup: Path = SELF_CGROUP,
    affinity: int | None = None,
) -> int:
    """The CPUs this process may use: the CPUs it may run on (``affinity``, default
    ``os.sched_getaffinity``), at most the cgroup quota rounded up, at least 1."""
    if affinity is None:
        affinity = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
    limit = cgroup_cpu_limit(root, self_cgroup)
    cpus = affinity if limit is None else min(affinity, math.ceil(limit))
    return max(1, cpus)


def model_threads(given: int | None, workers: int, environ: Mapping[str, str]) -> int:
    """The threads each worker's numerical libraries get: ``given`` (``--model-threads``), else
    ``OMP_NUM_THREADS`` as the server's environment sets it, else ``max(1, CPUs // workers)``."""
    if given is not None:
        return given
    inherited = environ.get("OMP_NUM_THREADS", "").strip()
    if inherited.isdigit() and int(inherited) > 0:
        return int(inherited)
    return max(1, available_cpus() // workers)


def thread_environment(
    threads: int, given: int | None, environ: Mapping[str, str]
) -> dict[str, str]:
    """The thread variables a worker sets: every one of THREAD_VARIABLES to ``threads``, but
    those the server's environment sets already keep their value unless ``--model-threads``
    was ``given``."""
    return {
        name: str(threads)
        for name in THREAD_VARIABLES
        if given is not None or not environ.get(name, "").strip()
    }


def limit_loaded_blas(threads: int, maps: Path = Path("/proc/self/maps")) -> int:
    """Set the thread count of every OpenBLAS this process has loaded already; how many were
    set. numpy's is one: the server imports numpy before it forks its workers, so
    OPENBLAS_NUM_THREADS set in a worker comes too late for it."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return 0
    paths = set()
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and "openblas" in fields[5].lower():
            paths.add(fields[5].strip())
    done = 0
    for path in sorted(paths):
        try:
            library = ctypes.CDLL(path)  # the copy already loaded, not a second one
        except OSError:
            continue
        for name in _BLAS_SETTERS:
            setter = getattr(library, name, None)
            if setter is not None:
                setter(ctypes.c_int(threads))
                done += 1
                break
    return done
