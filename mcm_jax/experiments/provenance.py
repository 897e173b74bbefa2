"""Which code made a run: the source files it imports, hashed, and the commit it ran at.

A job that reuses finished runs (mcm_jax.experiments.miniature) records `record(roots)` in each run and reuses
a run only while the hash of the files its code imports is unchanged: a commit that changes only
the report, the docs or unrelated modules keeps the runs, any change to what trains, samples or
scores them redoes them. The files are found statically: every `import mcm_jax...` and
`from mcm_jax... import ...` anywhere in a file (function-level imports included), followed from
the root modules.
"""

from __future__ import annotations

import ast
import hashlib
import subprocess

from etils import epath

PACKAGE = "mcm_jax"
ROOT = epath.Path(__file__).parents[2]


def _module_file(name: str) -> epath.Path | None:
    """The source file of module `name` in this checkout (found on disk, nothing imported), None
    if it is not a module (a name imported from a module, e.g. a function)."""
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_name(base.name + ".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_modules(path: epath.Path) -> set[str]:
    """Names of the mcm_jax modules (or candidate names) that the file at `path` imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
            node.module.split(".")[0] == PACKAGE
        ):
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def source_files(roots: tuple[str, ...]) -> list[epath.Path]:
    """The source files of the mcm_jax modules `roots` (dotted names) import, directly or not,
    with their packages' __init__ files; sorted."""
    seen: dict[str, epath.Path] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py too.
        for k in range(1, len(parts) + 1):
            prefix = ".".join(parts[:k])
            if prefix in seen:
                continue
            path = _module_file(prefix)
            if path is None:
                continue
            seen[prefix] = path
            todo.extend(_imported_modules(path))
    return sorted(set(seen.values()))


def code_hash(roots: tuple[str, ...]) -> str:
    """SHA-256 over the relative paths and contents of `source_files(roots)`."""
    digest = hashlib.sha256()
    for path in source_files(roots):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def commit() -> str:
    """The checkout's short commit, with "(with uncommitted changes)" when tracked files differ."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" (with uncommitted changes)" if dirty else "")


def record(roots: tuple[str, ...]) -> dict[str, str]:
    """What a run records about its code: the commit and the hash of what it imports."""
    return {"commit": commit(), "code_hash": code_hash(roots)}
