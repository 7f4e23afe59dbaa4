"""``tms completion bash|zsh|fish``: the scripts are valid and complete what they should.

Bash and fish complete for real here (fish's ``complete -C`` and bash's ``_tms`` given a
command line), with model names asked of a real server; zsh, which needs a terminal to
complete, is checked for syntax and that it registers itself. The shells must be installed
(scripts/check.sh installs them from Debian's packages).
"""

from __future__ import annotations

import os
import re
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


# Written out by hand from the CLI's documented usage (cli_client/README.md), not read from
# the parser the scripts are generated from: a new option is added here on purpose.
COMMON_OPTIONS = [
    "--help",
    "--target",
    "--timeout",
    "--connect-timeout",
    "--max-message-mb",
    "--shared-memory",
    "--json",
    "--debug",
    "--tls",
    "--tls-ca",
    "--tls-cert",
    "--tls-key",
    "--tls-server-name",
    "--token",
]
OWN_OPTIONS = {
    "models": ["--names"],
    "info": [],
    "health": [],
    "workers": [],
    "run": ["--out", "--args", "--concurrency"],
    "run-i2i": ["--out-dir", "--together", "--preview", "--args", "--concurrency"],
    "text": ["--args"],
    "bench": [
        "--image",
        "--size",
        "--text",
        "--concurrency",
        "--duration",
        "--balancer",
        "--args",
    ],
    "completion": [],
}
# What a command line needs before the options of each command, for the shells to complete.
BEFORE_OPTIONS = {"run-i2i": "edges x ", "text": "text_stats hi ", "completion": ""}


def test_the_parser_has_the_commands_and_options_written_here():
    line = read_parser(build_parser()[0])
    assert [command.name for command in line.commands] == COMMANDS == list(OWN_OPTIONS)
    for command in line.commands:
        options = sorted(option.long for option in command.options)
        assert options == sorted(COMMON_OPTIONS + OWN_OPTIONS[command.name]), command.name


@pytest.mark.parametrize("command", COMMANDS)
def test_zsh_script_names_every_option_whole(command, capsys):
    text = script("zsh", capsys)
    for option in COMMON_OPTIONS + OWN_OPTIONS[command]:
        # the option as a word of its own, not a piece of a longer one (--out in --out-dir)
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), option


def partial_lines(command: str) -> list[tuple[str, str]]:
    """(a command line ending in a partial option, the option it must complete to)."""
    before = BEFORE_OPTIONS.get(command, "mean ")
    if command in ("models", "workers", "completion"):
        before = ""
    return [
        (f"tms {command} {before}{option[:-1]}", option)
        for option in OWN_OPTIONS[command] + ["--connect-timeout", "--tls-server-name"]
    ]


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
    for command in COMMANDS:
        for line, option in partial_lines(command):
            assert option in complete(line), line


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
    for command in COMMANDS:
        for line, option in partial_lines(command):
            assert option in complete(line), line
