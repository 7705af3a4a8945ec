#!/usr/bin/env bash
# Set up a virtual environment from scratch (or reuse it) and run the test suite.
#   scripts/test.sh [pytest args...]
# The o200k vocabulary: set OPENHARMONY_VOCAB to a local o200k_base.tiktoken where the
# machine has no network (CI points it at ../shared/vocab).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install -qq -e ".[test]"
# Codex CLI, the client of tests/test_server.py's Codex test, in a project-local folder
# (.codex-cli/, ignored by git). Without npm or the registry that test is skipped.
if command -v npm >/dev/null && [ ! -x .codex-cli/node_modules/.bin/codex ]; then
    npm install --silent --no-audit --no-fund --prefix .codex-cli @openai/codex \
        || echo "warning: could not install Codex CLI; its test will be skipped" >&2
fi
# The native CPU kernels against the installed MLX (rebuilt when MLX or csrc/ changes; skipped
# with a message where there is no compiler or cmake). Where they do not build the suite runs
# on MLX's kernels and skips their tests; CI sets OPENHARMONY_REQUIRE_NATIVE=1 to fail instead.
.venv/bin/python -m openharmony.native.build || \
    echo "test.sh: the native kernels did not build; their tests will be skipped" >&2
exec .venv/bin/python -m pytest "$@"
