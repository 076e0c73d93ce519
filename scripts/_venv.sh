# Shared by scripts/demo and scripts/test: make .venv with Python >= 3.11 and
# install the project (editable) with the given extras, again whenever
# pyproject.toml changed since the last install.
ensure_venv() {
  local extras="$1"
  local py="${PYTHON:-}"
  if [ -z "$py" ]; then
    for cand in python3.13 python3.12 python3.11 python3; do
      if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        py="$cand"; break
      fi
    done
  fi
  if [ -z "$py" ]; then
    echo "broadcaster needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
    exit 1
  fi
  if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
  fi
  local stamp=".venv/.installed${extras}"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".${extras}"
    touch "$stamp"
  fi
}

# The browser tests drive Debian's Chromium with Playwright (no browser download).
# Install it with apt when it is missing and we may (root, or sudo without a
# password); otherwise say how, and the browser tests fail naming it.
ensure_chromium() {
  if command -v chromium >/dev/null 2>&1 || [ -n "${BROADCASTER_CHROMIUM:-}" ]; then
    return 0
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo -n"
    else
      echo "chromium is missing: install it with 'sudo apt-get install chromium' (the browser tests need it)" >&2
      return 0
    fi
  fi
  if command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests (apt-get)…" >&2
    $sudo apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null 2>&1 \
      || echo "could not install chromium with apt-get; the browser tests will fail" >&2
  else
    echo "chromium is missing and apt-get is not here: install Chromium and set BROADCASTER_CHROMIUM=/path/to/chromium" >&2
  fi
}
