#!/usr/bin/env bash
# Idempotent set-up from the project's own files:
#   - Debian packages (when apt-get exists and we are root): Fashion-MNIST data, libseccomp2 (the sandbox), Chromium for browser tests
#     and an emoji font (the dashboard's icons; without it the browser test's screenshots show boxes)
#   - .venv with the pinned requirements and kdcore installed in editable mode (the `kdcore` command)
#   - with --with-ray (./test.sh passes it): the optional Ray executor, requirements-ray.txt
# Re-running is cheap: pip runs again only when requirements.txt or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  need=()
  [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
  [ -x /usr/bin/chromium ] || need+=(chromium)
  [ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
  [ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need+=(fonts-noto-color-emoji)
  ldconfig -p 2>/dev/null | grep 'libseccomp\.so\.2 ' >/dev/null || need+=(libseccomp2)  # the sandbox's socket filter
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
elif [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "setup: note: Fashion-MNIST not found; install Debian's dataset-fashion-mnist or set KDCORE_FASHION_MNIST" >&2
fi

PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.kdaudit-installed
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python requirements into .venv (first run takes a few minutes)"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
if [ "${1:-}" = "--with-ray" ]; then
  ray_stamp=.venv/.kdaudit-ray-installed
  want=$(sha256sum requirements-ray.txt | cut -d' ' -f1)
  if [ "$(cat "$ray_stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing the optional Ray executor (requirements-ray.txt)"
    .venv/bin/pip install -q --disable-pip-version-check -r requirements-ray.txt
    echo "$want" > "$ray_stamp"
  fi
fi
