"""The package's layers (docs/architecture.md): imports point down, the method stays pure, nothing
of the library imports the experiments, and no modules import one another in a circle.

Imports are read from the source (every `import` and `from ... import`, function-level ones
included), so a lazy import counts as much as a top-level one.
"""

from __future__ import annotations

import ast
import graphlib
import pathlib
import sys

import pytest

PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1] / "mcm_jax"

# Bottom to top: a module may import its own layer and the layers below it.
LAYERS = (
    ("helpers", ("mcm_jax.files", "mcm_jax.paths", "mcm_jax.images", "mcm_jax.progress",
                 "mcm_jax.log_filter")),
    ("method", ("mcm_jax.method",)),
    ("models", ("mcm_jax.models",)),
    ("config", ("mcm_jax.config",)),
    ("text", ("mcm_jax.text",)),
    ("run", ("mcm_jax.run",)),
    ("data", ("mcm_jax.data",)),
    ("eval", ("mcm_jax.eval",)),
    ("train", ("mcm_jax.train",)),
    ("entry points", ("mcm_jax.main", "mcm_jax.api", "mcm_jax.runlocal")),
    ("benchmarks", ("mcm_jax.benchmarks",)),
    ("experiments", ("mcm_jax.experiments",)),
)
# What the method (schedules, diffusion, samplers, losses, conditioning) may import at all.
METHOD_IMPORTS = {"jax", "flax", "optax", "numpy"}


def module_name(path: pathlib.Path, package_dir: pathlib.Path) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(package_dir: pathlib.Path) -> dict[str, set[str]]:
    """Every module of the package -> the modules it imports (dotted names; for `from a import b`
    a.b where that is a module of the package, else a)."""
    paths = sorted(package_dir.rglob("*.py"))
    modules = {module_name(p, package_dir) for p in paths}
    result = {}
    for path in paths:
        name, found = module_name(path, package_dir), set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    found.add(child if child in modules else node.module)
        result[name] = found
    return result


def layer_of(module: str) -> int | None:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def violations(package_dir: pathlib.Path) -> list[str]:
    """Every broken rule, one line each."""
    graph = imports(package_dir)
    package = package_dir.name
    found = []
    for module, imported in sorted(graph.items()):
        own = layer_of(module)
        if own is None and module != package:
            found.append(f"{module} is in no layer")
            continue
        for target in sorted(imported):
            top = target.split(".")[0]
            if own == 1 and top not in METHOD_IMPORTS | {package, "__future__"} | set(
                    sys.stdlib_module_names):
                found.append(f"{module} (method) imports {target}")
            if top != package or target == package:
                continue
            target_layer = layer_of(target)
            if own == 1 and target_layer != 1:
                found.append(f"{module} (method) imports {target}")
            elif own is not None and target_layer is not None and target_layer > own:
                found.append(
                    f"{module} ({LAYERS[own][0]}) imports {target} ({LAYERS[target_layer][0]})"
                )
    found += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """A cycle of imports among the package's modules, if there is one (graphlib finds one),
    as "a -> b -> a" (a imports b, b imports a) from its first module in sorted order, so the
    message does not depend on dict order."""
    try:
        graphlib.TopologicalSorter(
            {module: imported & graph.keys() for module, imported in graph.items()}
        ).prepare()
    except graphlib.CycleError as error:
        # graphlib lists each module before the one that imports it and repeats the first.
        ring = error.args[1][-1:0:-1]
        start = ring.index(min(ring))
        return [ring[start:] + ring[:start + 1]]
    return []


def test_the_package_keeps_its_layers():
    assert violations(PACKAGE_DIR) == []


def test_every_folder_of_the_package_is_a_layer():
    folders = {p.name for p in PACKAGE_DIR.iterdir() if (p / "__init__.py").is_file()}
    layered = {prefix.split(".")[1] for _, prefixes in LAYERS for prefix in prefixes}
    assert folders <= layered


def _package(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    root = tmp_path / "mcm_jax"
    for relative, source in {"__init__.py": "", **files}.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(root).parents:
            (root / parent / "__init__.py").touch()
        path.write_text(source)
    return root


@pytest.mark.parametrize("files, expected", [
    ({"method/losses.py": "import tensorflow as tf\n"},
     "mcm_jax.method.losses (method) imports tensorflow"),
    ({"method/losses.py": "def f():\n    import orbax.checkpoint\n"},
     "mcm_jax.method.losses (method) imports orbax.checkpoint"),
    ({"method/losses.py": "from clu import metric_writers\n"},
     "mcm_jax.method.losses (method) imports clu"),
    ({"method/losses.py": "from mcm_jax.data import records\n", "data/records.py": ""},
     "mcm_jax.method.losses (method) imports mcm_jax.data.records"),
    ({"method/losses.py": "from mcm_jax.models import uvit\n", "models/uvit.py": ""},
     "mcm_jax.method.losses (method) imports mcm_jax.models.uvit"),
    ({"train/train.py": "from mcm_jax.experiments import main_job\n",
      "experiments/main_job.py": ""},
     "mcm_jax.train.train (train) imports mcm_jax.experiments.main_job (experiments)"),
    ({"eval/evaluate.py": "from mcm_jax.train import train_step\n",
      "train/train_step.py": ""},
     "mcm_jax.eval.evaluate (eval) imports mcm_jax.train.train_step (train)"),
    ({"run/cli.py": "from mcm_jax.run import flags\n",
      "run/flags.py": "from mcm_jax.run import cli\n"},
     "import cycle: mcm_jax.run.cli -> mcm_jax.run.flags -> mcm_jax.run.cli"),
    ({"scratch.py": ""}, "mcm_jax.scratch is in no layer"),
])
def test_each_broken_rule_is_found(tmp_path, files, expected):
    assert expected in violations(_package(tmp_path, files))
