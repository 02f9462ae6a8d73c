"""The package's layout holds (docs/design.md, "Where things are"): no import cycles between modules, counting
imports inside functions; mpi4py imported by comm/world.py alone; the compute core (distnet/nn) imports no
MPI, no files layer and nothing of training, data or the commands."""

import ast

from .helpers import ROOT

PACKAGE = ROOT / "distnet"


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name):
    """The distnet modules (and outside top-level packages) that module NAME imports, anywhere in it."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            submodules = {f"{target}.{alias.name}" for alias in node.names} & set(MODULES)
            found |= submodules  # from . import losses: the module distnet.nn.losses
            if len(submodules) < len(node.names):  # names defined in the module (or package) itself
                found.add(target)
    return found


def ancestor(a, b):
    return b.startswith(a + ".")


# a submodule's import of its own package (run first anyway) is no edge; nor is the package's of its parts
GRAPH = {name: {m for m in imports(name) if m in MODULES and m != name and not ancestor(m, name)}
         for name in MODULES}


def test_no_import_cycles():
    # Tarjan's strongly connected components: a component of more than one module is a cycle
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    # a package's __init__ importing its own modules and they it back is fine only through the package name;
    # everything else is a cycle
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_only_comm_world_imports_mpi4py():
    users = sorted(n for n in MODULES if any(m == "mpi4py" or m.startswith("mpi4py.") for m in imports(n)))
    assert users == ["distnet.comm.world"], users


def test_the_compute_core_imports_no_mpi_files_or_training():
    allowed = ("distnet.nn", "distnet.errors")
    for name in (n for n in MODULES if n.startswith("distnet.nn")):
        mine = imports(name)
        outside = sorted(m for m in mine if m.startswith("distnet") and not m.startswith(allowed))
        assert not outside, f"{name} imports {outside}"
        assert not {"h5py", "mpi4py"} & {m.split(".")[0] for m in mine}, f"{name} imports {mine}"
        text = MODULES[name].read_text()
        assert "open(" not in text.replace("np.open", ""), f"{name} opens a file"
