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
