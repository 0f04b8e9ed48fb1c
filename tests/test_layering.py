"""Import layering (docs/ARCHITECTURE.md §3, docs/CONTRACTS.md), checked by an AST scan of every module.

Every top-level part of the package has a layer; a module imports only from its own layer or a
lower one, lazily or not (an arrow up is a design error, not a style question):

    0  errors, files, registry, precision, config      what everything uses
    1  kernels, models, metrics, parallel, reports     leaves with one job each
    2  data, augment                                   images at rest and their transforms
    3  engine                                          the one training loop, the one PGD
    4  paradigms, countermeasures, protections,        the methods
       detection
    5  recipes                                         experiments as configs
    6  train, protect, calibrate, prior, grid, launch, sweep, cli,  the CLIs and the wiring
       listing, report, detect

and further:

- no import cycles between modules, lazy imports included;
- kernels/ import only torch (triton lazily, inside functions) and the standard library
  (plus ueperf.errors for user-facing messages);
- only parallel/ imports torch.distributed or deepspeed;
- nothing heavy at package import: ueperf/__init__ imports no third-party module.
"""
import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ueperf"
STDLIB = set(sys.stdlib_module_names)


def _imports(path: Path):
    """(module name, top_level) pairs; top_level = not inside a function body."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg_parts = path.relative_to(PKG.parent).with_suffix("").parts[:-1]
    out = []

    def visit(node, in_func):
        for child in ast.iter_child_nodes(node):
            f = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, not in_func) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = list(pkg_parts[: len(pkg_parts) - child.level + 1])
                    mod = ".".join(base + ([child.module] if child.module else []))
                    if not child.module:  # from . import x
                        out.extend((f"{mod}.{a.name}", not in_func) for a in child.names)
                        continue
                else:
                    mod = child.module
                out.append((mod, not in_func))
            visit(child, f)

    visit(tree, False)
    return out


def _files(sub=""):
    return sorted((PKG / sub).rglob("*.py"))


def test_scan_sees_files():
    assert len(_files()) > 10  # the scan must actually cover the package


def test_only_parallel_imports_distributed():
    bad = []
    for f in _files():
        if "parallel" in f.relative_to(PKG).parts:
            continue
        for mod, _ in _imports(f):
            if mod.startswith(("torch.distributed", "deepspeed")) or mod.startswith("torch.nn.parallel"):
                bad.append(f"{f.relative_to(PKG)} imports {mod}")
    assert not bad, "\n".join(bad)


def test_kernels_import_only_torch():
    bad = []
    for f in _files("kernels"):
        for mod, top in _imports(f):
            root = mod.split(".")[0]
            if root == "torch" or root in STDLIB or mod in ("ueperf.errors",) or mod.startswith("ueperf.kernels"):
                continue
            if root == "triton" and not top:
                continue
            bad.append(f"{f.relative_to(PKG)} imports {mod} ({'module level' if top else 'lazily'})")
    assert not bad, "\n".join(bad)


LAYERS = {
    "errors": 0, "files": 0, "registry": 0, "precision": 0, "config": 0, "__version__": 0,
    "kernels": 1, "models": 1, "metrics": 1, "parallel": 1, "reports": 1,
    "data": 2, "augment": 2,
    "engine": 3,
    "paradigms": 4, "countermeasures": 4, "protections": 4, "detection": 4,
    "recipes": 5,
    "train": 6, "protect": 6, "calibrate": 6, "prior": 6, "grid": 6, "sweep": 6, "cli": 6, "clean": 6, "launch": 6,
    "listing": 6, "report": 6, "detect": 6,
}


def _part(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("").parts
    return rel[0] if rel != ("__init__",) else "__init__"


def test_every_part_has_a_layer():
    parts = {_part(f) for f in _files()} - {"__init__"}
    assert not parts - set(LAYERS), f"place these in tests/test_layering.py LAYERS: {sorted(parts - set(LAYERS))}"


def test_imports_only_go_down_the_layers():
    bad = []
    for f in _files():
        me = _part(f)
        if me == "__init__":
            continue
        for mod, top in _imports(f):
            parts = mod.split(".")
            if parts[0] != "ueperf" or len(parts) < 2:
                continue
            if LAYERS[parts[1]] > LAYERS[me]:
                bad.append(f"{f.relative_to(PKG)} (layer {LAYERS[me]}) imports {mod} (layer {LAYERS[parts[1]]})"
                           f"{'' if top else ', lazily'}")
    assert not bad, "\n".join(bad)


def _module_graph():
    mods = {}
    for f in _files():
        rel = f.relative_to(PKG.parent).with_suffix("").parts
        mods[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = f

    def resolve(m):  # "a.b.c" is a module, or a name in module a.b
        while m and m not in mods:
            m = m.rpartition(".")[0]
        return m

    return {n: {resolve(m) for m, _ in _imports(f) if m.startswith("ueperf")} - {n, ""} for n, f in mods.items()}


def test_no_import_cycles():
    graph = _module_graph()
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_package_init_is_light():
    mods = [m for m, _ in _imports(PKG / "__init__.py")]
    assert all(m.split(".")[0] in STDLIB or m.startswith("ueperf") for m in mods), mods


def test_import_ueperf_does_not_import_torch():
    import subprocess
    code = "import sys, ueperf, ueperf.registry, ueperf.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PKG.parent, check=True).stdout.strip()
    assert out == "False"
