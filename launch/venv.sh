# Sourced by the launch scripts: creates .venv with mcm_jax and its test extra, then the packages
# of launch/no-deps-requirements.txt without their declared dependencies. It installs only when
# .venv is missing or setup.py or that file changed since the last install (their copy in .venv
# is the stamp), so reruns need no network; the package itself is an editable install. pip's
# output goes to .venv/install.log, shown only if the install fails.
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ] ||
   ! cat setup.py launch/no-deps-requirements.txt | cmp -s - .venv/installed-stamp; then
  echo "installing mcm_jax and its dependencies into .venv (log: .venv/install.log)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  if ! { .venv/bin/python -m pip install -q --upgrade pip &&
         .venv/bin/python -m pip install -q -e ".[test]" &&
         .venv/bin/python -m pip install -q --no-deps -r launch/no-deps-requirements.txt
       } > .venv/install.log 2>&1; then
    tail -n 30 .venv/install.log >&2
    echo "error: installing into .venv failed; the whole log is .venv/install.log" >&2
    return 1
  fi
  cat setup.py launch/no-deps-requirements.txt > .venv/installed-stamp
fi
