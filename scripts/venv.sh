# Sourced by the run scripts: make ./.venv, install the given requirements file when it changed,
# and install this project into it (editable), so that .venv/bin/gv50ctl and .venv/bin/gv50-gateway
# exist and follow the checkout.
req="$1"
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if ! "$python" -m venv .venv; then
    echo "could not create a virtual environment; on Debian/Ubuntu: sudo apt-get install python3-venv" >&2
    exit 1
  fi
fi
stamp=".venv/.installed-$(basename "$req")"
if [ ! -f "$stamp" ] || [ "$req" -nt "$stamp" ] || [ requirements.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r "$req"
  touch "$stamp"
fi
if [ ! -f .venv/.installed-package ] || [ pyproject.toml -nt .venv/.installed-package ]; then
  PYTHONWARNINGS=ignore .venv/bin/python -m pip install --quiet --no-deps --editable .
  touch .venv/.installed-package
fi
