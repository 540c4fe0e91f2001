"""Module shape, per exported module: lines, nested internal imports, patched attributes, unchecked exported cells,
lines over 120 characters and `;`-chained statements. `python .ci/module_shape.py [module ...]` prints a table: the
package's modules, then those of its subpackages as `bench/equal` (also accepted as `bench.equal`); the total row
sums every module listed, each once."""
import ast, io, json, re, sys, tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB, NBS = ROOT / 'v2v_diffusion', ROOT / 'nbs'


def nested_internal_imports(tree) -> int:
    "Imports of the project's own modules inside function bodies, plus `importlib.import_module` calls."
    n = 0
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)): continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or '').startswith('v2v_diffusion')): n += 1
            elif isinstance(node, ast.Import) and any(a.name.startswith('v2v_diffusion') for a in node.names): n += 1
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == 'import_module'): n += 1
    return n


def patched_attributes(tree) -> int:
    "Module-level `Class.attr = name` assignments (methods attached after the class body)."
    def attrs(t): return [t] if isinstance(t, ast.Attribute) else sum((attrs(e) for e in t.elts), []) \
        if isinstance(t, (ast.Tuple, ast.List)) else []
    return sum(1 for s in tree.body if isinstance(s, ast.Assign)
               for t in s.targets for a in attrs(t) if isinstance(a.value, ast.Name))


def chained_statements(text: str) -> int:
    "`;` separating statements (tokens, so strings and comments do not count)."
    return sum(1 for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type == tokenize.OP and t.string == ';')


def modules() -> list[str]:
    "The exported modules: `name` in the package, `sub/name` in a subpackage (files starting with `_` left out)."
    files = sorted(LIB.glob('*.py')) + sorted(LIB.glob('*/*.py'))
    return [p.relative_to(LIB).with_suffix('').as_posix() for p in files if not p.stem.startswith('_')]


def notebook_of(module: str) -> Path | None:
    "The notebook whose `default_exp` is `module` (`bench/equal` is `bench.equal` there)."
    module = module.replace('/', '.')
    for nb in sorted(NBS.glob('*.ipynb')):
        cells = json.loads(nb.read_text())['cells']
        if any(re.search(rf'#\|\s*default_exp\s+{re.escape(module)}\s*$', ''.join(c['source']), re.M) for c in cells):
            return nb
    return None


def _code_lines(c) -> list[str]:
    "The lines of a cell that are neither blank, comments nor nbdev directives."
    return [l for l in ''.join(c['source']).splitlines() if l.strip() and not l.lstrip().startswith('#')]


def _only_imports(c) -> bool:
    return all(re.match(r'\s*(from \S+ )?import ', l) or l.startswith((' ', ')')) for l in _code_lines(c))


def unchecked_exports(nb: Path) -> tuple[int, int]:
    """(exported cells, those not followed by a check): exported cells of imports alone need none; a check is the next
    code cell when it is not exported and holds more than imports."""
    cells = json.loads(nb.read_text())['cells']
    is_export = lambda c: c['cell_type'] == 'code' and re.match(r'\s*#\|\s*export', ''.join(c['source']))
    total = bad = 0
    for i, c in enumerate(cells):
        if not is_export(c) or _only_imports(c): continue
        total += 1
        nxt = next((d for d in cells[i + 1:] if d['cell_type'] == 'code'), None)
        if nxt is None or is_export(nxt) or _only_imports(nxt): bad += 1
    return total, bad


def shape(module: str) -> dict:
    py = LIB / f'{module}.py'
    text = py.read_text()
    tree = ast.parse(text)
    nb = notebook_of(module)
    exported, unchecked = unchecked_exports(nb) if nb else (0, 0)
    return dict(module=module, lines=len(text.splitlines()), nested_imports=nested_internal_imports(tree),
                patched=patched_attributes(tree), exported_cells=exported, unchecked=unchecked,
                over_120=sum(len(l) > 120 for l in text.splitlines()), semicolons=chained_statements(text))


if __name__ == '__main__':
    mods = [m.replace('.', '/') for m in sys.argv[1:]] or modules()
    rows = [shape(m) for m in mods]
    keys = list(rows[0])
    print(' | '.join(keys))
    for r in rows: print(' | '.join(str(r[k]) for k in keys))
    print('total | ' + ' | '.join(str(sum(r[k] for r in rows)) for k in keys[1:]))
