"Paired dataset: z-alignment, native/resampled clips, cache, splits, bad cases skipped, DataLoaders with workers."
import json, pickle, shutil, zipfile
from dataclasses import replace
from pathlib import Path
import numpy as np, pytest, torch
from v2v_diffusion.config import get_config
from v2v_diffusion.dicom import Volume, DicomError
import v2v_diffusion.data as data
from v2v_diffusion.data import *
from dicom_edits import make_zip, edit

ROOT = Path(__file__).resolve().parents[1] / 'data_samples'

@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    c = tmp_path_factory.mktemp('cache'); prepare_dataset(ROOT, c, workers=2, progress=False); return c

@pytest.fixture(scope='module')
def cases(cache): return [load_case(r, cache) for r in find_cases(ROOT)]

def plate_pair(z_plate=3.0, phase=1.0):
    "Thin 1 mm slices with a bright plate at z_plate; thick 5 mm slabs (phase-shifted), slab-averaged."
    z = np.arange(-30.0, 31.0); hu = np.zeros((len(z), 16, 16), np.float32); hu[np.abs(z - z_plate) < 0.5] = 1000
    thin = Volume(hu, z, (1.0, 1.0, 1.0), np.array([0., 0, z[0]]), np.array([1., 0, 0, 0, 1, 0]), 1.0)
    zk = np.arange(-25.0, 26.0, 5.0) + phase
    tk = np.stack([hu[np.abs(z - c) <= 2.5].mean(0) if (np.abs(z - c) <= 2.5).sum() == 5 else hu[np.abs(z - c) < 2.5].mean(0) for c in zk])
    thick = Volume(tk, zk, (5.0, 1.0, 1.0), np.array([0., 0, zk[0]]), np.array([1., 0, 0, 0, 1, 0]), 5.0)
    return pair_case('plate', 'APE', thick, thin)

@pytest.mark.parametrize('mode', ['native', 'resampled'])
@pytest.mark.parametrize('phase', [0.0, 1.0, 3.0])
def test_known_z_structure_appears_at_the_same_z(mode, phase):
    dc = replace(get_config('tiny').data, n_frames=24, height=16, width=16, window_center=500, window_width=1000, thick_mode=mode)
    ds = ClipDataset([plate_pair(3.0, phase)], dc, train=False)
    for i in range(len(ds)):
        it = ds[i]
        if not it['z_start'] <= 3.0 <= it['z_end']: continue
        thin_z = it['z_start'] + np.arange(24)
        assert thin_z[int(it['thin'][0, :, 8, 8].argmax())] == 3.0
        kz = it['thick_z'].numpy(); prof = it['thick'][0, :, 8, 8].numpy()
        assert abs(kz[int(prof.argmax())] - 3.0) <= (2.5 if mode == 'native' else 2.0)
        if mode == 'native': assert it['thick'].shape[1] == 5 and kz[0] - it['z_start'] == pytest.approx(1.9)
        break
    else: pytest.fail('no clip covers the plate')

def test_shipped_thick_clip_matches_thin_anatomy(cases):
    "On the shipped phantoms the thick clip equals the 5 mm slab mean of the thin clip at zero shift, not at ±3 mm."
    dc = replace(get_config('tiny').data, n_frames=24, height=128, width=128, thick_mode='resampled')
    for c in cases[:3]:
        it = ClipDataset([c], dc, train=False)[1]
        t, k = it['thin'][0].numpy(), it['thick'][0].numpy()
        box = np.stack([t[max(0, j - 2):j + 3].mean(0) for j in range(24)])
        err = {s: np.abs(k[6:18] - box[6 + s:18 + s]).mean() for s in (-3, 0, 3)}
        assert err[0] < 0.6 * min(err[-3], err[3]), err

def test_native_shape_is_fixed_and_batches_stack(cache):
    cfg = get_config('tiny', [f'data.root={ROOT}', f'data.cache_dir={cache}', 'data.n_frames=24', 'data.height=64', 'data.width=64'])
    ds = ClipDataset([load_case(r, cache) for r in find_cases(ROOT)], cfg.data, train=True)
    shapes = {tuple(ds[i]['thick'].shape) for i in range(len(ds))}
    assert shapes == {(1, 5, 64, 64)}
    b = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert b['thin'].shape == (4, 1, 24, 64, 64) and b['thick'].shape == (4, 1, 5, 64, 64)
    assert b['thin'].dtype == torch.float32 and -1 <= b['thin'].min() and b['thin'].max() <= 1

def test_eval_clips_deterministic_train_random(cases):
    dc = get_config('tiny').data
    ev, tr = ClipDataset(cases[:2], dc, train=False), ClipDataset(cases[:2], dc, train=True)
    assert [ev[i]['z_start'] for i in range(len(ev))] == [ev[i]['z_start'] for i in range(len(ev))]
    torch.manual_seed(0); a = [tr[0]['z_start'] for _ in range(20)]
    assert len(set(a)) > 3
    zs = sorted(ev[i]['z_start'] for i in range(len(ev)) if ev[i]['case_id'] == cases[0].case_id)
    lo, hi = cases[0].z_range
    assert zs[0] == lo and zs[-1] + dc.n_frames - 1 == hi                     # windows tile the paired span

def test_cache_never_touches_dicom_again(cache, monkeypatch):
    ref = find_cases(ROOT)[0]
    monkeypatch.setattr(data, 'read_dicom_tree', lambda *a, **k: pytest.fail('DICOM read on a cached case'))
    c = load_case(ref, cache)
    assert isinstance(c.thin.hu, np.memmap) and c.thin.hu.dtype == np.int16
    ds = ClipDataset([c], get_config('tiny').data)
    assert len(pickle.dumps(ds)) < 200_000                                     # workers get file names, not arrays

def test_splits_saved_stratified_and_stable(cache):
    sp = json.loads((cache / 'splits.json').read_text())
    ids = [r.case_id for r in find_cases(ROOT)]
    got = sp['train'] + sp['val'] + sp['test']
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))
    assert len(sp['train']) >= 1 and len(sp['val']) == 1 and len(sp['test']) == 1
    cats = {r.case_id: r.category for r in find_cases(ROOT)}
    assert {cats[i] for i in sp['train']} == {'APE', 'non APE'}
    with pytest.warns(UserWarning, match='differ from the config; using the saved ones'):
        again = make_splits(find_cases(ROOT), replace(get_config('tiny').data, cache_dir=str(cache), split_seed=1))
    assert again == {k: sp[k] for k in ('train', 'val', 'test')}

def test_tiny_datasets_keep_train_nonempty():
    class C:
        def __init__(s, i): s.case_id, s.category = f'c{i}', 'APE'
    for n in (1, 2, 3, 4):
        sp = split_cases([C(i) for i in range(n)], 0.15, 0.10, 42)
        assert len(sp['train']) >= 1 and sum(map(len, sp.values())) == n

# ---- a dataset with bad cases: each is skipped with its reason, the others load
def _members(zp):
    with zipfile.ZipFile(zp) as zf: return [(i.filename, zf.read(i)) for i in zf.infolist()]

def test_bad_cases_are_skipped_and_listed(tmp_path):
    root, src = tmp_path / 'data', sorted(ROOT.glob('*/*.zip'))
    shutil.copy(src[0], (root / 'APE').mkdir(parents=True) or root / 'APE' / 'good_a.zip')
    (root / 'non APE').mkdir(); shutil.copy(src[-1], root / 'non APE' / 'good_b.zip')
    m = _members(src[1]); thick = [x for x in m if '/1/' in x[0]]
    (root / 'APE' / 'corrupt.zip').write_bytes(src[1].read_bytes()[:40000])
    make_zip(root / 'APE' / 'slip.zip', m + [('../evil.dcm', b'x')])
    make_zip(root / 'APE' / 'truncated.zip', m[:20] + [(m[20][0], m[20][1][:5000])] + m[21:])
    make_zip(root / 'non APE' / 'nopos.zip', m[:30] + [(m[30][0], edit(m[30][1], ImagePositionPatient=None))] + m[31:])
    make_zip(root / 'non APE' / 'mixed.zip', m + [(thick[0][0].replace('/1/', '/2/').replace('IM', 'X'), thick[0][1])])
    make_zip(root / 'non APE' / 'mr.zip', m[:40] + [(m[40][0], edit(m[40][1], Modality='MR'))] + m[41:])
    s = prepare_dataset(root, tmp_path / 'cache', workers=2, progress=False)
    assert sorted(r['case_id'] for r in s['cases']) == ['good_a', 'good_b']
    why = {r['case_id']: r['error'] for r in s['skipped']}
    assert 'not a readable zip archive' in why['corrupt']
    assert "'../evil.dcm' escapes the archive" in why['slip']
    assert m[20][0] in why['truncated']
    assert f"{m[30][0]}: missing ImagePositionPatient" in why['nopos']
    assert 'folder 2/ mixes 2 series' in why['mixed']
    assert f"{m[40][0]}: Modality MR, expected CT" in why['mr']
    assert 'skipped:' in s['table'] and 'mr (non APE)' in s['table']
    assert sorted(sum(s['splits'].values(), [])) == ['good_a', 'good_b'] and s['splits']['train']

def test_extracted_folders_and_prepare_main(tmp_path, capsys):
    src = sorted(ROOT.glob('APE/*.zip'))[0]
    with zipfile.ZipFile(src) as zf: zf.extractall(tmp_path / 'root' / 'APE')        # APE/<case>/{1,2}/*.dcm
    shutil.copy(sorted(ROOT.glob('non APE/*.zip'))[0], (tmp_path / 'root' / 'non_APE').mkdir() or tmp_path / 'root' / 'non_APE' / 'z.zip')
    refs = find_cases(tmp_path / 'root')
    assert [(r.category, r.path.is_dir()) for r in refs] == [('APE', True), ('non APE', False)]
    s = prepare_main(['--root', str(tmp_path / 'root'), '--cache-dir', str(tmp_path / 'c'), '--workers', '1'])
    assert len(s['cases']) == 2 and 'APE' in capsys.readouterr().out

def test_dataloaders_with_workers(cache):
    cfg = get_config('tiny', [f'data.root={ROOT}', f'data.cache_dir={cache}', 'data.num_workers=2'])
    dls = build_dataloaders(cfg)
    assert set(dls) == {'train', 'val', 'test'}
    n = 0
    for b in dls['train']:
        assert b['thin'].shape[1:] == (1, 8, 32, 32) and b['thick'].shape[1:] == (1, 2, 32, 32); n += 1
    assert n == len(dls['train'])
    v1 = [b['z_start'].tolist() for b in dls['val']]; v2 = [b['z_start'].tolist() for b in dls['val']]
    assert v1 == v2

def test_distributed_sampler(cache):
    cfg = get_config('tiny', [f'data.root={ROOT}', f'data.cache_dir={cache}'])
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group('gloo', init_method='tcp://127.0.0.1:29533', rank=0, world_size=1)
    try:
        dls = build_dataloaders(cfg, distributed=True)
        assert isinstance(dls['train'].sampler, torch.utils.data.DistributedSampler)
        assert len(list(dls['train'])) == len(dls['train'])
    finally: dist.destroy_process_group()
