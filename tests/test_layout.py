"""The layout of the code, read with `ast`: the library's modules import one another as a tree of ideas, no private
name crosses a module boundary, the scripts import only the library, and every module is short and says its idea."""
import ast
import os

from conftest import ROOT

LIB = os.path.join(ROOT, "st_r1")
SCRIPTS = ("train_sft", "train_grpo", "evaluate")  # the top-level recipes
MAX_LINES = 500


def modules():
    return sorted(n[:-3] for n in os.listdir(LIB) if n.endswith(".py") and n != "__init__.py")


def sources():
    """Every .py of the project (library, scripts, bench, tests), by path relative to ROOT."""
    out = []
    for top in ("st_r1", "bench", "tests", "."):
        for dirpath, dirnames, files in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
            if top == ".":
                dirnames[:] = []
            out += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in files if f.endswith(".py")]
    return sorted(set(out))


def imports(path):
    """(module, names) of every import statement in the file, those inside functions included: `import a.b` gives
    ("a.b", []), `from a import b, c` gives ("a", ["b", "c"])."""
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
    return out


def library_deps(path):
    """The st_r1 modules a file imports (at the top or inside a function)."""
    mods, deps = set(modules()), set()
    for mod, names in imports(path):
        if mod == "st_r1":
            deps |= {n for n in names if n in mods}
        elif mod.startswith("st_r1."):
            deps.add(mod.split(".")[1])
    return deps


def test_no_import_cycle_among_library_modules():
    graph = {m: library_deps(os.path.join("st_r1", m + ".py")) - {m} for m in modules()}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d):] + [m, d]) if d in stack else f"{m} -> {d}")
            elif d not in state:
                visit(d, stack + [m])
        state[m] = "done"

    for m in modules():
        if m not in state:
            visit(m, [])
    assert not cycles, f"import cycles among st_r1 modules: {cycles}"


def test_no_private_name_crosses_a_module_boundary():
    bad = [f"{path}: from {mod} import {n}" for path in sources() for mod, names in imports(path)
           if mod == "st_r1" or mod.startswith("st_r1.") for n in names if n.startswith("_")]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_scripts_import_only_the_library():
    """No recipe imports another, and neither the library nor bench/ imports a recipe: what two of them share is
    in st_r1."""
    bad = [f"{path}: {mod} {names}" for path in sources() if not path.startswith("tests" + os.sep)
           for mod, names in imports(path) if mod.split(".")[0] in SCRIPTS]
    bad += [f"{path}: imports bench" for path in sources() if path.startswith("st_r1" + os.sep)
            for mod, _ in imports(path) if mod.split(".")[0] == "bench"]
    assert not bad, "scripts imported:\n" + "\n".join(bad)


def test_no_script_imports_a_bench_script():
    """No bench tool and no top-level script imports a file of bench/ (as `bench.x.y`, or as `x` once bench/ is on
    sys.path): what two scripts share is in st_r1, or one runs the other (bench/gpu_check.py runs bench/memory.py)."""
    bench = [p for p in sources() if p.startswith("bench" + os.sep)]
    names = {os.path.splitext(os.path.basename(p))[0] for p in bench}
    found = {f"{path} imports {mod}" for path in bench + [p for p in sources() if os.sep not in p]
             for mod, _ in imports(path) if mod.split(".")[0] in names | {"bench"}}
    bad = sorted(found)
    assert not bad, "scripts importing a bench script:\n" + "\n".join(bad)


def test_library_modules_are_short_and_say_their_idea():
    bad = []
    for m in ["__init__"] + modules():
        path = os.path.join(LIB, m + ".py")
        with open(path) as f:
            text = f.read()
        n = text.count("\n")
        if n > MAX_LINES:
            bad.append(f"st_r1/{m}.py: {n} lines (at most {MAX_LINES})")
        doc = ast.get_docstring(ast.parse(text), clean=False)
        if not text.startswith('"""') or not doc or not doc.split("\n")[0].strip():
            bad.append(f"st_r1/{m}.py: does not start with a docstring whose first line says its idea")
    assert not bad, "\n".join(bad)
