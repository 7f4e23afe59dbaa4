#!/usr/bin/env bash
# Everything CI checks, in order: formatting, lint, types, the proto, generated code, tests.
# Extra arguments go to pytest, e.g. `bash scripts/check.sh -k codec`.
source "$(dirname "$0")/_bootstrap.sh"

step() { echo "==> $*" >&2; "$@"; }

# The CLI's completion tests run the shells they complete for; Go and Node.js come with the
# machine. Install the shells from Debian's packages when they are missing and we may.
if ! command -v zsh >/dev/null || ! command -v fish >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing zsh and fish (completion tests)" >&2
    apt-get install -y -qq zsh fish >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq zsh fish >/dev/null; }
  fi
fi
# The scale-out test serves its DNS name with dnsmasq. dnsmasq-base is the program alone: the
# dnsmasq package would also start a DNS service on the machine's port 53.
if ! command -v dnsmasq >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing dnsmasq (scale-out test)" >&2
    apt-get install -y -qq dnsmasq-base >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq dnsmasq-base >/dev/null; }
  fi
fi
# The HTTP page's test drives Debian's chromium (headless, through Playwright): no browser
# download of Playwright's own.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing chromium (the HTTP page's browser test)" >&2
    apt-get install -y -qq chromium >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
  fi
fi
run() { step "$PYTHON" -m uv run --frozen --no-sync "$@"; }

run ruff format --check .
run ruff check .
run mypy
run lint-imports --no-cache  # the layer contracts in pyproject.toml
run buf lint
# FILE rules (buf.yaml), each module against the image of its last release, kept in git
run buf breaking proto --against proto/releases/v0.1.0.binpb
run buf breaking proto-oip --against proto-oip/releases/v0.1.0.binpb
run buf format --exit-code --diff
run python codegen/generate.py --check
# The tests in parallel, one process per core (pytest-xdist; a file's tests stay in one
# process, so a module's server starts once), then those marked alone by themselves. Exit
# code 5: nothing was selected in that part (say, `-k` named tests of the other part only).
tests() { run pytest "$@" || [ $? -eq 5 ]; }
tests --numprocesses auto --maxprocesses 4 --dist loadfile -m "not alone" "$@"
tests -m alone "$@"
