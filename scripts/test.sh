#!/usr/bin/env bash
# Set up (see setup.sh) and run the whole test suite: unit tests on tiny in-memory models,
# then integration tests that really train the built-in SmolLM2-135M-Instruct for a few steps.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
