"Phantom: determinism, z-structure, slab-averaged thick series, filling defects, CLI layout."
import json, zipfile
from pathlib import Path
import numpy as np, pytest
from v2v_diffusion.phantom import *
from v2v_diffusion.dicom import read_dicom_tree, pick_thick_thin

@pytest.fixture(scope='module')
def case(): return phantom_case(5, ape=True, n_thin=60)

def test_deterministic_by_seed():
    a, b, c = (phantom_case(s, n_thin=12, size=64)['thin'].hu for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b); assert np.abs(a - c).mean() > 10

def test_hu_of_tissues(case):
    a, thin = case['anatomy'], case['thin']
    px = thin.spacing[1]; ij = lambda x, y: (int(round((y - thin.origin[1]) / px)), int(round((x - thin.origin[0]) / px)))
    k = len(thin.z) // 2
    lung = thin.hu[k][ij(-a['lung_cx'], 5)]; body = thin.hu[k][ij(0, -0.8 * a['body_ay'])]
    assert -950 < lung < -750 and -60 < body < 120
    assert (thin.hu > 700).sum() > 500 and (thin.hu[:, 2, 2] == -1024).all()

def test_structure_along_z(case):
    "Adjacent thin slices differ (vessels, ribs, vertebrae change along z): z-SR is not trivial."
    thin = case['thin'].hu; body = thin[len(thin) // 2] > -950
    d1 = np.abs(np.diff(thin, axis=0))[:, body].mean()
    d5 = np.abs(thin[5:] - thin[:-5])[:, body].mean()
    assert d5 > 1.3 * d1 and d5 > 25

def test_thick_is_slab_mean(case):
    thin, thick = case['thin'], case['thick']
    assert np.allclose(np.diff(thick.z), 5.0) and thick.thickness == 5.0
    for k in range(len(thick.z)):
        near = np.abs(thin.z - thick.z[k]) <= 2.5
        assert near.sum() == 5
        body = thick.hu[k] > -950
        assert np.abs(thin.hu[near].mean(0) - thick.hu[k])[body].mean() < 15

def test_filling_defect_is_dark_inside_an_artery():
    c = phantom_case(5, ape=True, n_thin=80, size=256, noise_hu=0.0)
    thin, a = c['thin'], c['anatomy']
    assert len(a['defects']) >= 1 and phantom_anatomy(5, ape=False)['defects'] == []
    for x, y, z in defect_positions(a):
        k = int(np.argmin(np.abs(thin.z - z)))
        if abs(thin.z[k] - z) > 0.5: continue
        j, i = (int(round((v - o) / thin.spacing[1])) for v, o in ((y, thin.origin[1]), (x, thin.origin[0])))
        assert thin.hu[k, j, i] < 150, 'defect centre is not low-attenuation'
        assert thin.hu[k, j - 4:j + 5, i - 4:i + 5].max() > 200, 'no contrast-filled artery around the defect'

def test_cli_layout_and_readback(tmp_path):
    paths = phantom_main(['--out', str(tmp_path), '--cases', '4', '--size', '64', '--thin-slices', '30', '--seed', '3'])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == [
        'APE/phantom_000.zip', 'APE/phantom_002.zip', 'non APE/phantom_001.zip', 'non APE/phantom_003.zip']
    with zipfile.ZipFile(paths[0]) as zf:
        names = zf.namelist()
    assert all(n.startswith('phantom_000/1/') or n.startswith('phantom_000/2/') for n in names)
    assert sum(n.startswith('phantom_000/2/') for n in names) == 30
    m = json.loads((tmp_path / 'manifest.json').read_text())
    assert m['phantom_000']['seed'] == 3000 and m['phantom_001']['category'] == 'non APE'
    thick, thin = pick_thick_thin(read_dicom_tree(paths[0]))
    ref = phantom_case(3000, ape=True, size=64, n_thin=30)
    assert np.abs(thin.hu - ref['thin'].hu).max() <= 0.5 and np.abs(thick.hu - ref['thick'].hu).max() <= 0.5
    np.testing.assert_allclose(thin.z, ref['thin'].z); np.testing.assert_allclose(thick.affine(), ref['thick'].affine(), atol=1e-4)
