"""Import layering (ARCHITECTURE §1), checked by an AST scan of every module.

- kernels/ import only torch (triton lazily, inside functions) and the standard library
  (plus ueperf.errors for user-facing messages);
- only parallel/ imports torch.distributed or deepspeed;
- models/, data/, engine/, kernels/ never import a method package (protections,
  countermeasures, paradigms);
- nothing heavy at package import: ueperf/__init__ imports no third-party module.
"""
import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ueperf"
METHOD_PACKAGES = ("protections", "countermeasures", "paradigms")
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


def test_core_never_imports_methods():
    bad = []
    for sub in ("models", "data", "engine", "kernels", "parallel", "metrics"):
        for f in _files(sub):
            for mod, _ in _imports(f):
                parts = mod.split(".")
                if parts[0] == "ueperf" and len(parts) > 1 and parts[1] in METHOD_PACKAGES:
                    bad.append(f"{f.relative_to(PKG)} imports {mod}")
    assert not bad, "\n".join(bad)


def test_package_init_is_light():
    mods = [m for m, _ in _imports(PKG / "__init__.py")]
    assert all(m.split(".")[0] in STDLIB or m.startswith("ueperf") for m in mods), mods


def test_import_ueperf_does_not_import_torch():
    import subprocess
    code = "import sys, ueperf, ueperf.registry, ueperf.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PKG.parent, check=True).stdout.strip()
    assert out == "False"
