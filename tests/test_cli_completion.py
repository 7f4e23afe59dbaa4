"""``tms completion bash|zsh|fish``: the scripts are valid and complete what they should.

Bash and fish complete for real here (fish's ``complete -C`` and bash's ``_tms`` given a
command line), with model names asked of a real server; zsh, which needs a terminal to
complete, is checked for syntax and that it registers itself. The shells must be installed
(scripts/check.sh installs them from Debian's packages).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tms_cli.__main__ import main
from tms_cli.completion import read_parser
from tms_cli.parser import build_parser

COMMANDS = ["models", "info", "health", "workers", "run", "run-i2i", "text", "bench", "completion"]
EXAMPLE_MODELS = ["edges", "face", "mean", "ocr", "optical_flow", "text_stats", "upright"]


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


def test_every_command_and_option_is_in_every_script(capsys):
    line = read_parser(build_parser()[0])
    assert [command.name for command in line.commands] == COMMANDS
    for shell in ("bash", "zsh", "fish"):
        text = script(shell, capsys)
        for command in line.commands:
            assert command.name in text
            for option in command.options:
                assert option.long in text or option.long[2:] in text, (shell, option.long)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_script_is_valid(shell, capsys, tmp_path):
    program = needs(shell)
    path = tmp_path / f"tms.{shell}"
    path.write_text(script(shell, capsys))
    done = subprocess.run([program, "-n", str(path)], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr) == (0, "")


def test_zsh_script_registers_tms(capsys, tmp_path):
    zsh = needs("zsh")
    path = tmp_path / "_tms"
    path.write_text(script("zsh", capsys))
    program = f"autoload -Uz compinit && compinit -u -d {tmp_path}/zcompdump; "
    program += f"source {path} && print -r -- ${{_comps[tms]}}"
    done = subprocess.run([zsh, "-f", "-c", program], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, "_tms\n", "")


BASH_COMPLETE = """
source "$1"
COMP_LINE=$2
COMP_POINT=${#COMP_LINE}
read -ra COMP_WORDS <<< "$COMP_LINE"
[[ $COMP_LINE == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
_tms
printf '%s\\n' "${COMPREPLY[@]}"
"""


def test_bash_completes(capsys, tmp_path, env, example_server):
    bash = needs("bash")
    path = tmp_path / "tms.bash"
    path.write_text(script("bash", capsys))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"")
    (tmp_path / "photos" / "b.png").write_bytes(b"")

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
    assert "--connect-timeout" in complete("tms --")
    assert complete("tms bench mean --bal") == ["--balancer"]
    assert complete("tms bench mean --balancer ") == ["round-robin", "least-loaded", "random"]
    assert complete("tms run-i2i edges x --out-d") == ["--out-dir"]
    assert complete("tms completion ") == ["bash", "zsh", "fish"]
    # Model names come from the server: $TMS_TARGET, or the --target on the line.
    assert complete("tms run ") == EXAMPLE_MODELS
    assert complete("tms text t") == ["text_stats"]
    line = f"tms --target {example_server.target} info o"
    assert complete(line) == ["ocr", "optical_flow"]
    assert complete("tms info face ") == []  # info takes one model
    assert sorted(complete(f"tms run face {tmp_path}/photos/")) == [
        f"{tmp_path}/photos/a.jpg",
        f"{tmp_path}/photos/b.png",
    ]
    assert complete("tms text text_stats ") == []  # a free text


def test_fish_completes(capsys, tmp_path, env):
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
    assert complete("tms run ") == EXAMPLE_MODELS
    assert complete("tms info face ") == []
    assert complete("tms completion ") == ["bash", "fish", "zsh"]
