"""``tms completion bash|zsh|fish``: real shells complete real partial words with the scripts.

Bash calls the script's function as it does on Tab (given COMP_LINE and COMP_POINT); zsh
completes for real in a pseudo-terminal (zpty), pressing Tab; fish runs ``complete -C``. Model
names are asked of a real server. The expected words are written out here, not read from the
command line's definition. The shells must be installed (scripts/check.sh installs them from
Debian's packages).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import EXAMPLE_NAMES
from tms_cli.__main__ import main

COMMANDS = ["models", "info", "health", "workers", "run", "run-i2i", "text", "bench", "completion"]
GLOBAL_OPTIONS = [
    "--target",
    "--timeout",
    "--connect-timeout",
    "--max-message-mb",
    "--shared-memory",
    "--no-shared-memory",
    "--call-streams",
    "--no-call-streams",
    "--json",
    "--debug",
    "--tls",
    "--tls-ca",
    "--tls-cert",
    "--tls-key",
    "--tls-server-name",
    "--token",
]
BENCH_OPTIONS = [
    "--image",
    "--size",
    "--text",
    "--concurrency",
    "--duration",
    "--balancer",
    "--args",
]


def script(shell: str, capsys) -> str:
    assert main(["completion", shell]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def needs(shell: str) -> str:
    path = shutil.which(shell)
    if path is None:
        pytest.fail(f"{shell} is needed for this test: apt-get install {shell}")
    return path


@pytest.fixture
def env(example_server):
    """The environment of a shell completing: ``tms`` on PATH, the example server as the
    default target."""
    bin_dir = str(Path(sys.executable).parent)
    assert (Path(bin_dir) / "tms").exists()
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "TMS_TARGET": example_server.target,
    }


@pytest.fixture
def photos(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"")
    (tmp_path / "photos" / "b.png").write_bytes(b"")
    return tmp_path / "photos"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_script_is_valid(shell, capsys, tmp_path):
    program = needs(shell)
    path = tmp_path / f"tms.{shell}"
    path.write_text(script(shell, capsys))
    done = subprocess.run([program, "-n", str(path)], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr) == (0, "")


# What bash does on Tab: set COMP_LINE and COMP_POINT, and call the function the script
# registered (with COMP_WORDS too, split at ':' and '=' as well, which the script does not read).
BASH_COMPLETE = """
source "$1"
COMP_LINE=$2
COMP_POINT=${#COMP_LINE}
"$(complete -p tms | awk '{print $(NF-1)}')" tms
printf '%s\\n' "${COMPREPLY[@]}"
"""


def test_bash_completes(capsys, tmp_path, env, example_server, photos):
    bash = needs("bash")
    path = tmp_path / "tms.bash"
    path.write_text(script("bash", capsys))

    def complete(line: str) -> list[str]:
        done = subprocess.run(
            [bash, "-c", BASH_COMPLETE, "-", str(path), line],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        return [word for word in done.stdout.splitlines() if word]

    assert complete("tms ") == COMMANDS
    assert complete("tms r") == ["run", "run-i2i"]
    assert complete("tms --json --timeout 5 wor") == ["workers"]
    assert complete("tms --") == [*GLOBAL_OPTIONS, "--version", "--help"]
    assert complete("tms bench mean --") == [*BENCH_OPTIONS, *GLOBAL_OPTIONS, "--help"]
    assert complete("tms models --j") == ["--json"]  # global options after the command too
    assert complete("tms bench mean --bal") == ["--balancer"]
    assert complete("tms bench mean --balancer ") == ["round-robin", "least-loaded", "random"]
    assert complete("tms run-i2i edges x --out-d") == ["--out-dir"]
    assert complete("tms completion ") == ["bash", "zsh", "fish"]
    # Model names come from the server: $TMS_TARGET, or the --target on the line.
    assert complete("tms run ") == EXAMPLE_NAMES
    assert complete("tms text t") == ["text_stats"]
    line = f"tms --target {example_server.target} info o"
    assert complete(line) == ["ocr", "optical_flow"]
    assert complete(f"tms health --target={example_server.target} e") == ["edges"]
    assert complete("tms --target 127.0.0.1:9 run ") == []  # nothing listens there
    assert complete("tms info face ") == []  # info takes one model
    assert complete(f"tms run face {photos}/") == [f"{photos}/a.jpg", f"{photos}/b.png"]
    assert complete(f"tms run-i2i edges a.png --out-dir {photos.parent}/ph") == [str(photos)]
    assert complete("tms text text_stats ") == []  # a free text


ZSH_COMPLETE = r"""
zmodload zsh/zpty
zpty shell zsh -f -i
zpty -w shell "autoload -Uz compinit; compinit -u -d $1/zcompdump; source $1/_tms"
zpty -w shell 'show() { print -r -- "BUFFER[${BUFFER}]" }; zle -N show; bindkey "^X" show'
zpty -w -n shell "$2"$'\t\x18'
zpty -r -m shell out '*BUFFER\[tms*\]*'
print -r -- "$out"
zpty -d shell
"""


def test_zsh_completes(capsys, tmp_path, env, example_server, photos):
    """Tab pressed in an interactive zsh, then a key that prints the line as it now is."""
    zsh = needs("zsh")
    (tmp_path / "_tms").write_text(script("zsh", capsys))

    def complete(line: str) -> str:
        done = subprocess.run(
            [zsh, "-f", "-c", ZSH_COMPLETE, "-", str(tmp_path), line],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=60,
        )
        return re.findall(r"BUFFER\[(tms[^\]]*)\]", done.stdout)[-1]

    assert complete("tms wor") == "tms workers "
    assert complete("tms r") == "tms run"  # run or run-i2i: as far as they agree
    assert complete("tms --json --timeout 5 hea") == "tms --json --timeout 5 health "
    assert complete("tms bench mean --bal") == "tms bench mean --balancer "
    assert complete("tms bench mean --balancer le") == "tms bench mean --balancer least-loaded "
    assert complete("tms completion f") == "tms completion fish "
    assert complete("tms info tex") == "tms info text_stats "
    line = f"tms --target {example_server.target} run up"
    assert complete(line) == f"{line}right "
    assert complete(f"tms run face {photos}/a") == f"tms run face {photos}/a.jpg "


def test_fish_completes(capsys, tmp_path, env, photos):
    fish = needs("fish")
    path = tmp_path / "tms.fish"
    path.write_text(script("fish", capsys))

    def complete(line: str) -> list[str]:
        program = f"source {path}; complete -C '{line}'"
        done = subprocess.run(
            [fish, "--no-config", "-c", program],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        return [row.split("\t")[0] for row in done.stdout.splitlines()]

    assert sorted(complete("tms ")) == sorted(COMMANDS)
    assert complete("tms bench mean --balancer ") == ["least-loaded", "random", "round-robin"]
    assert complete("tms models --j") == ["--json"]
    assert complete("tms run ") == EXAMPLE_NAMES
    assert complete("tms info face ") == []
    assert complete("tms completion ") == ["bash", "fish", "zsh"]
    assert complete(f"tms run face {photos}/") == [f"{photos}/a.jpg", f"{photos}/b.png"]
