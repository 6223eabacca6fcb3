#!/usr/bin/env bash
# Idempotent set-up from the project's own files:
#   - Debian packages (when apt-get exists and we are root): Fashion-MNIST data, libseccomp2 (the sandbox), Chromium for browser tests
#     and an emoji font (the dashboard's icons; without it the browser test's screenshots show boxes)
#   - .venv with the pinned requirements and kdcore installed in editable mode (the `kdcore` command)
#   - with --with-ray (./test.sh passes it): the optional Ray executor, requirements-ray.txt
#   - with --with-test-provider (./test.sh passes it): the OpenID Connect provider the log-in browser test
#     signs in through (npm's oidc-provider, pinned in tests/oidc/package-lock.json, `npm ci` into
#     tests/oidc/node_modules), and Node.js from Debian when it is missing
# Re-running is cheap: pip and npm run again only when their pinned files changed.
set -euo pipefail
cd "$(dirname "$0")/.."
with_ray=0 with_provider=0
for arg in "$@"; do
  case "$arg" in
    --with-ray) with_ray=1 ;;
    --with-test-provider) with_provider=1 ;;
    *) echo "setup: unknown option $arg (expected --with-ray, --with-test-provider)" >&2; exit 2 ;;
  esac
done

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  need=()
  [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
  [ -x /usr/bin/chromium ] || need+=(chromium)
  [ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
  [ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need+=(fonts-noto-color-emoji)
  if [ $with_provider = 1 ]; then
    command -v node >/dev/null 2>&1 || need+=(nodejs)
    command -v npm >/dev/null 2>&1 || need+=(npm)
  fi
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
if [ $with_ray = 1 ]; then
  ray_stamp=.venv/.kdaudit-ray-installed
  want=$(sha256sum requirements-ray.txt | cut -d' ' -f1)
  if [ "$(cat "$ray_stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing the optional Ray executor (requirements-ray.txt)"
    .venv/bin/pip install -q --disable-pip-version-check -r requirements-ray.txt
    echo "$want" > "$ray_stamp"
  fi
fi
if [ $with_provider = 1 ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "setup: npm (Node.js) is missing, so the log-in browser test cannot start its OpenID Connect provider;" \
      "install Debian's nodejs and npm (or Node.js 20+ from nodejs.org) and run ./scripts/setup.sh --with-test-provider again" >&2
  else
    provider_stamp=tests/oidc/node_modules/.kdaudit-installed
    want=$(cat tests/oidc/package.json tests/oidc/package-lock.json | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$provider_stamp" 2>/dev/null)" != "$want" ]; then
      echo "setup: installing the test OpenID Connect provider (npm ci in tests/oidc)"
      (cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error)
      echo "$want" > "$provider_stamp"
    fi
  fi
fi
