"""The CPUs the server may use (affinity and cgroup quota) and its models' thread counts,
read from fake cgroup files in a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from tms_server.cpus import (
    THREAD_VARIABLES,
    available_cpus,
    cgroup_cpu_limit,
    model_threads,
    thread_environment,
)


def write(root: Path, files: dict[str, str]) -> Path:
    """Fake files under ``root``: {relative path: contents}."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def cpus(tmp_path: Path, files: dict[str, str], cgroup: str, affinity: int = 64) -> int:
    root = write(tmp_path / "sys", files)
    self_cgroup = write(tmp_path, {"self_cgroup": cgroup}) / "self_cgroup"
    return available_cpus(root=root, self_cgroup=self_cgroup, affinity=affinity)


def limit(tmp_path: Path, files: dict[str, str], cgroup: str) -> Fraction | None:
    root = write(tmp_path / "sys", files)
    self_cgroup = write(tmp_path, {"self_cgroup": cgroup}) / "self_cgroup"
    return cgroup_cpu_limit(root, self_cgroup)


V2_CONTAINER = "0::/\n"  # a container with its own cgroup namespace


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("200000 100000\n", 2),
        ("150000 100000\n", 2),  # 1.5 CPUs: rounded up
        ("50000 100000\n", 1),  # half a CPU: still one worker
        ("100000 100000\n", 1),
        ("400000 50000\n", 8),
        ("max 100000\n", 64),  # no quota: the affinity count
    ],
)
def test_cgroup_v2_quota(tmp_path, cpu_max, expected):
    files = {"cgroup.controllers": "cpu io memory\n", "cpu.max": cpu_max}
    assert cpus(tmp_path, files, V2_CONTAINER) == expected


def test_cgroup_v2_quota_as_a_fraction(tmp_path):
    files = {"cpu.max": "150000 100000\n"}
    assert limit(tmp_path, files, V2_CONTAINER) == Fraction(3, 2)
    assert limit(tmp_path / "none", {"cpu.max": "max 100000\n"}, V2_CONTAINER) is None


def test_the_quota_never_raises_the_affinity_count(tmp_path):
    files = {"cpu.max": "1600000 100000\n"}  # 16 CPUs allowed, 4 to run on
    assert cpus(tmp_path, files, V2_CONTAINER, affinity=4) == 4


def test_cgroup_v2_takes_the_tightest_of_the_cgroup_and_its_parents(tmp_path):
    files = {
        "cpu.max": "max 100000\n",  # the host's root has none
        "kubepods/cpu.max": "300000 100000\n",
        "kubepods/pod1/cpu.max": "max 100000\n",
        "kubepods/pod1/tms/cpu.max": "600000 100000\n",
    }
    cgroup = "0::/kubepods/pod1/tms\n"
    assert limit(tmp_path, files, cgroup) == 3
    assert cpus(tmp_path, files, cgroup) == 3


def test_cgroup_v2_own_cgroup_not_mounted_counts_the_mount_root(tmp_path):
    # Without a cgroup namespace the path names a cgroup of the host, absent in the mount.
    files = {"cpu.max": "250000 100000\n"}
    assert cpus(tmp_path, files, "0::/system.slice/docker-abc.scope\n") == 3


@pytest.mark.parametrize(
    ("quota", "period", "expected"),
    [
        ("200000", "100000", 2),
        ("50000", "100000", 1),
        ("-1", "100000", 64),
        ("250000", "100000", 3),
    ],
)
def test_cgroup_v1_quota(tmp_path, quota, period, expected):
    files = {
        "cpu,cpuacct/cpu.cfs_quota_us": f"{quota}\n",
        "cpu,cpuacct/cpu.cfs_period_us": f"{period}\n",
    }
    cgroup = "12:memory:/\n4:cpu,cpuacct:/\n0::/\n"
    assert cpus(tmp_path, files, cgroup) == expected


def test_cgroup_v1_in_the_process_cgroup_and_the_plain_cpu_mount(tmp_path):
    files = {
        "cpu/cpu.cfs_quota_us": "-1\n",
        "cpu/cpu.cfs_period_us": "100000\n",
        "cpu/docker/abc/cpu.cfs_quota_us": "300000\n",
        "cpu/docker/abc/cpu.cfs_period_us": "100000\n",
    }
    assert cpus(tmp_path, files, "3:cpu:/docker/abc\n") == 3


@pytest.mark.parametrize(
    "files",
    [
        {},  # no cgroup file system at all
        {"cpu.max": "garbage\n"},
        {"cpu.max": "0 100000\n"},
        {"cpu.max": "100000 0\n"},
        {"cpu,cpuacct/cpu.cfs_quota_us": "100000\n"},  # no period
    ],
)
def test_missing_or_malformed_files_mean_no_quota(tmp_path, files):
    cgroup = "4:cpu,cpuacct:/\n0::/\n"
    assert limit(tmp_path, files, cgroup) is None
    assert cpus(tmp_path, files, cgroup, affinity=6) == 6


def test_an_unreadable_cgroup_list_looks_at_the_mount_roots(tmp_path):
    root = write(tmp_path / "sys", {"cpu.max": "200000 100000\n"})
    assert available_cpus(root=root, self_cgroup=tmp_path / "missing", affinity=8) == 2


def test_at_least_one_cpu(tmp_path):
    assert cpus(tmp_path, {}, V2_CONTAINER, affinity=0) == 1


def test_this_machine(tmp_path):
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


# -- the models' threads --------------------------------------------------------------------


def test_model_threads_share_the_cpus_among_the_workers():
    every = available_cpus()
    assert model_threads(None, 1, {}) == every
    assert model_threads(None, every + 5, {}) == 1  # never 0
    assert model_threads(3, 4, {"OMP_NUM_THREADS": "7"}) == 3  # --model-threads first
    assert model_threads(None, 4, {"OMP_NUM_THREADS": "7"}) == 7  # then the environment
    assert model_threads(None, 1, {"OMP_NUM_THREADS": "lots"}) == every  # unusable: ignored
    assert model_threads(None, 1, {"OMP_NUM_THREADS": "0"}) == every


def test_thread_environment_keeps_variables_already_set():
    assert thread_environment(2, None, {}) == dict.fromkeys(THREAD_VARIABLES, "2")
    environ = {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "", "OPENBLAS_NUM_THREADS": "1"}
    kept = thread_environment(4, None, environ)
    assert "OMP_NUM_THREADS" not in kept
    assert "OPENBLAS_NUM_THREADS" not in kept
    assert kept["MKL_NUM_THREADS"] == "4"  # set but empty: unset
    assert set(THREAD_VARIABLES) - set(kept) == {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"}
    # --model-threads sets them all.
    assert thread_environment(3, 3, environ) == dict.fromkeys(THREAD_VARIABLES, "3")


def test_numpys_openblas_is_told_its_threads_after_it_loaded():
    """In a fresh process (this one's pool is its own business): numpy loads OpenBLAS with
    every CPU, then limit_loaded_blas brings it down to one thread."""
    program = """
import ctypes, numpy
from tms_server.cpus import limit_loaded_blas
paths = {line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line.lower()}
lib = ctypes.CDLL(sorted(paths)[0])
get = getattr(lib, "scipy_openblas_get_num_threads64_", None) or lib.openblas_get_num_threads
print(limit_loaded_blas(1), get())
"""
    environ = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=environ, check=True
    )
    assert done.stdout.split() == ["1", "1"]
