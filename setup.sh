#!/usr/bin/env bash
# Idempotent setup on a fresh machine: a virtualenv in .venv with the pinned dependencies (CPU torch 2.13.0),
# plus tcmalloc where apt can install it (optional: training runs 1.2-3x faster with it, see shared/PERF-NOTES.md).
# `./setup.sh --test` adds the test dependencies and Debian's Chromium with its driver (required by the chat
# page's browser test, tests/test_chat_page.py).
set -euo pipefail
cd "$(dirname "$0")"
TEST=0
[ "${1:-}" = "--test" ] && TEST=1
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".$([ $TEST = 1 ] && echo '[test]')" 2>&1 \
  | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import nanogpt4, torch" || { echo "setup failed: nanogpt4 does not import" >&2; exit 1; }
TCMALLOC=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
if [ ! -e "$TCMALLOC" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4) >/dev/null 2>&1 || echo "note: tcmalloc not installed (optional)"
fi
if [ $TEST = 1 ] && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; }; then
  command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] \
    || { echo "setup failed: chromium and chromium-driver are missing and apt-get (as root) is not available" >&2; exit 1; }
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
    >/tmp/nanogpt4-setup-chromium.log 2>&1 \
    || { echo "setup failed: apt-get install chromium chromium-driver (log: /tmp/nanogpt4-setup-chromium.log)" >&2; exit 1; }
fi
