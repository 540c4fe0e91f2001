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
    assert {r['variant'] for r in rows(js, 'speed')} >= {'baseline', 'per-tensor AdamW', 'grad checkpointing'}
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
    t = rows(js, 'targets'); assert len(t) == 14
    assert all(r['verdict'] in ('met', 'NOT met', 'not measured') for r in t)

def test_bad_section_name(tmp_path):
    with pytest.raises(SystemExit, match='unknown section'): bench_main(['--only', 'nope', '--out', str(tmp_path / 'x.md')])

def test_memory_section_and_eval(report):
    md, js = report
    m = rows(js, 'memory')
    assert {r['stage'] for r in m} >= {'vae', 'diffusion'} and all(positive(r['est_gib']) for r in m)
    assert all(0.8 <= r['ratio'] <= 1.2 for r in m if 'check' in r['stage'])
    e = rows(js, 'eval'); assert len(e) == 2 and e[0]['diff'] < 1e-4 and positive(e[0]['s'])

def test_memory_estimate_matches_measured_cpu_peak():
    "Fake-tensor estimate of the real training step vs the same step run on the CPU: live tensors, and PyTorch's MemTracker."
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker
    from v2v_diffusion.config import get_config
    from v2v_diffusion.bench import step_peak_bytes, stage_step
    cfg = get_config('tiny', ['data.height=64', 'data.width=64'])
    for stage in ('vae', 'diffusion'):
        for prec in ('fp32', 'bf16'):
            est, meas = (step_peak_bytes(cfg, stage, precision=prec, fake=f) for f in (True, False))
            assert est == pytest.approx(meas, rel=0.2), (stage, prec)
    run, live = stage_step(cfg, 'vae', precision='fp32', accum=1, steps=1)    # MemTracker: one call of the loss module only
    mt = MemTracker(); mt.track_external(live[0], live[-1])
    with mt: run()
    measured = mt.get_tracker_snapshot('peak')[torch.device('cpu')]['Total']
    assert step_peak_bytes(cfg, 'vae', precision='fp32', accum=1, steps=1) == pytest.approx(measured, rel=0.2)

def test_gpu_check_dry_run_appends(tmp_path):
    out = tmp_path / 'B.md'
    out.write_text('# Benchmarks\n')
    s = bench_main(['--gpu-check', '--dry', '--threads', '1', '--out', str(out)])
    txt = out.read_text()
    assert txt.startswith('# Benchmarks') and '## GPU check: CPU (dry run)' in txt and 'estimate / measured' in txt
    assert all(0.8 <= r['agree'] <= 1.2 for r in s.rows if 'memory' in r['model'])
