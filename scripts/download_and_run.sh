#!/usr/bin/env bash
# From a fresh clone to a streamed answer in one command: set up a virtual environment,
# download gpt-oss-20b (the Hugging Face layout only, 13.8 GB; resumable) and ask it.
#
#   scripts/download_and_run.sh "Why is the sky blue?"
#   MODEL=openai/gpt-oss-120b scripts/download_and_run.sh "Why is the sky blue?"
#   MODEL=/path/to/checkpoint scripts/download_and_run.sh "..."     # a local folder: no download
#
# Environment:
#   MODEL             hub id or checkpoint folder (default openai/gpt-oss-20b)
#   VENV              the virtual environment to create or reuse (default .venv in the repo)
#   PYTHON            the interpreter that creates it (default python3, 3.10 or newer)
#   SKIP_INSTALL=1    use the environment as it is (no pip install)
#   OPENHARMONY_ARGS  extra flags for `openharmony generate`, e.g. "--reasoning-effort low"
#   HF_HOME, HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT, OPENHARMONY_VOCAB: as for the CLI
set -euo pipefail
cd "$(dirname "$0")/.."

PROMPT=${1:-"Why is the sky blue?"}
MODEL=${MODEL:-openai/gpt-oss-20b}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating the virtual environment $VENV" >&2
    "${PYTHON:-python3}" -m venv "$VENV"
fi
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    echo "installing openharmony into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    EXTRAS=""
    if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
        EXTRAS="[mkl]"  # MKL as MLX's CPU BLAS: faster dense matmuls (openharmony/blas.py)
    fi
    "$VENV/bin/python" -m pip install -qq -e ".$EXTRAS"
fi
# The native CPU kernels, built against the installed MLX (skipped, with a message, where
# there is no compiler or cmake; openharmony then runs on MLX's kernels).
"$VENV/bin/python" -m openharmony.native.build --quiet || \
    echo "the native kernels did not build; running on MLX's kernels" >&2

if [ -d "$MODEL" ]; then
    MODEL_DIR=$MODEL
else
    echo "downloading $MODEL (an interrupted download resumes when run again)" >&2
    MODEL_DIR=$("$VENV/bin/python" -m openharmony download "$MODEL")
fi

# OPENHARMONY_ARGS is split into words on purpose: it holds several flags.
# shellcheck disable=SC2086
exec "$VENV/bin/python" -m openharmony generate --chat --model "$MODEL_DIR" \
    ${OPENHARMONY_ARGS:-} "$PROMPT"
