"v2v-bench in --quick mode: the report has every section, sane numbers, and the targets table. No timed assertions."
import json, math
import pytest
from v2v_diffusion.bench import bench_main, SECTIONS

@pytest.fixture(scope='module')
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp('bench')
    bench_main(['--quick', '--threads', '1', '--out', str(d / 'BENCHMARKS.md'), '--json', str(d / 'bench.json')])
    return (d / 'BENCHMARKS.md').read_text(), json.loads((d / 'bench.json').read_text())

def rows(js, key): return js['sections'][key]['rows']

def test_header_and_sections(report):
    md, js = report
    assert md.startswith('# Benchmarks')
    for k in ('date (UTC)', 'torch', 'torch threads', 'load average (1/5/15 min)', 'commit'): assert k in js['machine'] and f'| {k} |' in md
    assert js['machine']['torch threads'] == 1
    assert set(js['sections']) == set(SECTIONS) | {'targets'}
    for s in js['sections'].values(): assert f"## {s['title']}" in md
    assert md.index('## Parameters') < md.index('## Targets')

def test_params_match_the_seed(report):
    _, js = report
    r = {x['model']: x for x in rows(js, 'params')}
    assert set(r) == {'VAE', 'U-Net', 'total'}
    for k in ('VAE', 'U-Net', 'total'): assert 0.85 < r[k]['ours_M'] / r[k]['seed_M'] < 1.15
    assert r['total']['ours_M'] == pytest.approx(r['VAE']['ours_M'] + r['U-Net']['ours_M'])

def positive(*xs): return all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in xs)

def test_timed_sections_are_positive(report):
    _, js = report
    f = rows(js, 'flops'); assert len(f) == 2 and all(positive(r['fwd'], r['step']) and r['step'] > r['fwd'] for r in f)
    for r in rows(js, 'train'): assert positive(r['ours_s'], r['params_ours']) and r['repeat'] >= 1
    assert {r['variant'] for r in rows(js, 'speed')} >= {'baseline', 'fused AdamW', 'grad checkpointing'}
    d = rows(js, 'ddim'); assert len(d) >= 3 and all(positive(r['total_s'], r['step_ms']) for r in d)
    ing = rows(js, 'ingest'); assert len(ing) == 4 and ing[0]['slices'] == ing[1]['slices'] > 0 and all(positive(r['rate']) for r in ing)
    assert all(positive(r['rate']) for r in rows(js, 'cache'))

def test_monai_rows_or_note(report):
    _, js = report
    tr = rows(js, 'train')
    if all(r['monai_s'] is not None for r in tr): assert all(positive(r['ratio'], r['monai_s']) for r in tr)
    else: assert any('MONAI' in n for n in js['sections']['train']['notes'])

def test_gpu_and_targets(report):
    md, js = report
    import torch
    if not torch.cuda.is_available(): assert 'not measured: no GPU in this session' in md
    t = rows(js, 'targets'); assert len(t) == 6
    assert all(r['verdict'] in ('met', 'NOT met', 'not measured') for r in t)

def test_bad_section_name(tmp_path):
    with pytest.raises(SystemExit, match='unknown section'): bench_main(['--only', 'nope', '--out', str(tmp_path / 'x.md')])
