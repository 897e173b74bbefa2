# Sourced by the launch scripts: creates .venv with mcm_jax and its test extra. It installs only
# when .venv is missing or setup.py changed since the last install (a copy of it in .venv is the
# stamp), so reruns need no network; the package itself is an editable install. pip's output
# goes to .venv/install.log, shown only if the install fails.
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ] || ! cmp -s setup.py .venv/installed-setup.py; then
  echo "installing mcm_jax and its dependencies into .venv (log: .venv/install.log)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  if ! { .venv/bin/python -m pip install -q --upgrade pip &&
         .venv/bin/python -m pip install -q -e ".[test]"; } > .venv/install.log 2>&1; then
    tail -n 30 .venv/install.log >&2
    echo "error: installing into .venv failed; the whole log is .venv/install.log" >&2
    return 1
  fi
  cp setup.py .venv/installed-setup.py
fi
