"""Notebooks in a folder must hold no outputs: JupyterLab saves them, nbdev_clean keeps them (`make sync-check`).

    python .ci/nb_outputs.py nbs            # list notebooks with outputs; exit 1 if there are any
    python .ci/nb_outputs.py --clear nbs    # remove outputs and execution counts (tags, ids, sources stay)
"""
import argparse, json, sys
from pathlib import Path


def cells_with_outputs(nb: dict) -> list:
    "Indices of the code cells of `nb` that hold outputs."
    return [i for i, c in enumerate(nb['cells']) if c['cell_type'] == 'code' and c.get('outputs')]


def clear(path: Path) -> bool:
    "Remove the outputs and execution counts of notebook `path`; whether it changed."
    nb = json.loads(path.read_text(encoding='utf-8'))
    if not cells_with_outputs(nb): return False
    for c in nb['cells']:
        if c['cell_type'] == 'code': c['outputs'], c['execution_count'] = [], None
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('folder', type=Path)
    p.add_argument('--clear', action='store_true', help='remove the outputs instead of reporting them')
    a = p.parse_args(argv)
    paths = sorted(a.folder.rglob('*.ipynb'))
    if a.clear:
        for path in paths:
            if clear(path): print(f'cleared {path}')
        return 0
    bad = {path: cells_with_outputs(json.loads(path.read_text(encoding='utf-8'))) for path in paths}
    bad = {k: v for k, v in bad.items() if v and '.ipynb_checkpoints' not in k.parts}
    for path, cells in bad.items():
        print(f'ERROR: {path} holds outputs in cells {", ".join(map(str, cells))}: run `make clear-outputs` '
              '(or clear them in JupyterLab and save) and commit', file=sys.stderr)
    return 1 if bad else 0


if __name__ == '__main__': sys.exit(main())
