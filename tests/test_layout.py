"""The package layout's import rules (README, "Architecture"), checked over the import graph.

Every `import` and `from ... import` in every ldjax module counts, also those
inside functions, so a lazy import cannot hide a cycle.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "ldjax"
FACES = {"ldjax.run", "ldjax.summary", "ldjax.report", "ldjax.prepare", "ldjax.predict"}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(name: str) -> set[str]:
  """The ldjax modules `name` imports (a `from pkg import mod` counts as pkg.mod)."""
  path, out = MODULES[name], set()
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name in MODULES}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + [base])
      for a in node.names:
        full = f"{base}.{a.name}"
        out.add(full if full in MODULES else base)
  return {m for m in out if m in MODULES} - {name}


GRAPH = {m: imports_of(m) for m in MODULES}


def reachable(start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for m in GRAPH[todo.pop()]:
      if m not in seen:
        seen.add(m)
        todo.append(m)
  return seen


def under(module: str, package: str) -> bool:
  return module == package or module.startswith(package + ".")


def test_graph_is_read():
  # A parser that found nothing would pass every rule below.
  assert "ldjax.train.fit" in GRAPH["ldjax.train.compare"]
  assert "ldjax.models.staged" in GRAPH["ldjax.models.zoo"]
  assert len(MODULES) > 25


def test_no_import_cycle():
  cycles = [m for m in GRAPH if m in reachable(m) and not m.count(".") == 0]
  assert cycles == []


def test_scoring_is_pure():
  assert GRAPH["ldjax.train.scoring"] == set()


@pytest.mark.parametrize("package, forbidden", [
    ("ldjax.models", ("ldjax.data", "ldjax.train", "ldjax.store", "ldjax.runs")),
    ("ldjax.store", ("ldjax.models", "ldjax.train")),
    ("ldjax.weights", ("ldjax.data", "ldjax.train", "ldjax.store", "ldjax.runs",
                       "ldjax.reporting")),
    ("ldjax.reporting", ("ldjax.train",)),
    ("ldjax.data", ("ldjax.models", "ldjax.train", "ldjax.store", "ldjax.runs",
                    "ldjax.reporting")),
])
def test_layer_rules(package, forbidden):
  bad = {(m, dep) for m in GRAPH if under(m, package)
         for dep in reachable(m) if any(under(dep, f) for f in forbidden)}
  assert bad == set()


def test_no_library_module_imports_a_face():
  bad = {(m, dep) for m in GRAPH if m not in FACES and m != "ldjax"
         for dep in GRAPH[m] if dep in FACES}
  assert bad == set()


def test_no_catch_all_module():
  assert not [m for m in MODULES if m.rpartition(".")[2] in ("utils", "util", "helpers", "misc")]
