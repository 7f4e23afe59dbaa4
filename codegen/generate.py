"""Regenerate every stub from proto/ with ``buf generate``; ``--check`` fails on drift.

Run from anywhere: ``uv run python codegen/generate.py [--check]``. The generator versions
are pinned in the ``codegen`` dependency group of the root pyproject.toml (uv.lock).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = "codegen/buf.gen.yaml"
# Folders whose files come from the generator, relative to the root; hand-written files there
# (package __init__.py, py.typed) are kept.
GENERATED = [Path("python_client/src/tms/v1")]
HANDWRITTEN = {"__init__.py", "py.typed"}


def _buf_generate(out: Path) -> None:
    env = dict(os.environ)
    # The template calls `python`: make it this interpreter, whose environment has the pins.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    subprocess.run(
        ["buf", "generate", "--template", TEMPLATE, "--output", str(out)],
        cwd=ROOT,
        env=env,
        check=True,
    )


def _generated_files(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name not in HANDWRITTEN and "__pycache__" not in p.parts
    }


def _drift(fresh_root: Path) -> list[str]:
    problems = []
    for rel in GENERATED:
        fresh, committed = fresh_root / rel, ROOT / rel
        fresh_files, committed_files = _generated_files(fresh), _generated_files(committed)
        for name in sorted(fresh_files - committed_files):
            problems.append(f"missing: {rel / name}")
        for name in sorted(committed_files - fresh_files):
            problems.append(f"stale: {rel / name}")
        for name in sorted(fresh_files & committed_files):
            if not filecmp.cmp(fresh / name, committed / name, shallow=False):
                problems.append(f"differs: {rel / name}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs drift")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        _buf_generate(fresh_root)
        if args.check:
            problems = _drift(fresh_root)
            if problems:
                print("generated code drifted from proto/; run: uv run python codegen/generate.py")
                print("\n".join(f"  {p}" for p in problems))
                return 1
            print("generated code is up to date")
            return 0
        for rel in GENERATED:
            target = ROOT / rel
            for name in _generated_files(target):
                (target / name).unlink()
            shutil.copytree(fresh_root / rel, target, dirs_exist_ok=True)
            print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
