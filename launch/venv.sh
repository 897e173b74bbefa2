# Sourced by the launch scripts: creates .venv with mcm_jax and its test extra. It installs only
# when .venv is missing or setup.py changed since the last install (a copy of it in .venv is the
# stamp), so reruns need no network; the package itself is an editable install.
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ] || ! cmp -s setup.py .venv/installed-setup.py; then
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  cp setup.py .venv/installed-setup.py
fi
