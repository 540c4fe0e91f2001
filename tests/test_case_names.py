"Case names survive dots and never share a cache folder; v2v-prepare fails when no case is usable, keeping reasons."
import numpy as np, pytest
from v2v_diffusion.data import find_cases, load_case, load_cases, prepare_main, _cache_dir_of
from v2v_diffusion.dicom import DicomError, Volume, write_dicom_series
from test_dicom_real import tilted_series

def small_case(d, value: float):
    "A tiny thick (1/) + thin (2/) case whose HU are all `value`."
    axial = np.array([1., 0, 0, 0, 1, 0])
    for key, n, dz in (('1', 4, 4.0), ('2', 13, 1.0)):
        hu = np.full((n, 16, 16), value, np.float32)
        write_dicom_series(Volume(hu, dz * np.arange(n), (dz, 1.0, 1.0), np.zeros(3), axial, dz, {}), d / key)
    return d

def test_dotted_and_colliding_names(tmp_path):
    root = tmp_path / 'root'
    for name, hu in (('2.000000-5mm-40805', 10), ('case a', 20), ('case_a', 30)): small_case(root / 'APE' / name, hu)
    refs = {r.case_id: r for r in find_cases(root)}
    assert sorted(refs) == ['2.000000-5mm-40805', 'case a', 'case_a']
    dirs = {i: _cache_dir_of(r, tmp_path / 'c') for i, r in refs.items()}
    assert len(set(dirs.values())) == 3 and dirs['2.000000-5mm-40805'].name == '2.000000-5mm-40805'
    for i, hu in (('case a', 20), ('case_a', 30), ('case a', 20)):                 # its own pixels, cached or not
        assert float(np.asarray(load_case(refs[i], tmp_path / 'c').thin.hu).mean()) == hu

def test_tilt_setting_reaches_the_cache(tmp_path):
    root = tmp_path / 'root'
    small_case(root / 'APE' / 't', 0)
    for key in ('1', '2'):
        for p in (root / 'APE' / 't' / key).iterdir(): p.unlink()
    tilted_series(root / 'APE' / 't' / '1', n=4, step=4.0)
    tilted_series(root / 'APE' / 't' / '2', n=13, step=1.0)
    ref = find_cases(root)[0]
    with pytest.warns(Warning, match='gantry tilt'):
        assert load_case(ref, tmp_path / 'c').thick.shape[0] == 4
    with pytest.raises(DicomError, match=r'gantry tilt of 18\.5°.*refused'):
        load_case(ref, tmp_path / 'c', tilt='refuse')       # the cached de-sheared case is not reused
    rows, cases = load_cases([ref], tmp_path / 'c', tilt='refuse', progress=False)
    assert cases == [] and 'gantry tilt of 18.5°' in rows[0]['error']

def test_prepare_fails_when_every_case_is_skipped_and_keeps_reasons(tmp_path, capsys):
    root = tmp_path / 'root'
    small_case(root / 'APE' / 'bad', 0)
    for p in (root / 'APE' / 'bad' / '2').iterdir(): p.write_bytes(b'not dicom at all')
    (root / 'APE' / 'empty' / '1').mkdir(parents=True)
    argv = ['--root', str(root), '--cache-dir', str(tmp_path / 'c'), '--workers', '1']
    with pytest.raises(SystemExit) as e:
        prepare_main(argv)
    assert e.value.code not in (0, None) and 'no usable case' in str(e.value.code) and '2 skipped' in str(e.value.code)
    out = capsys.readouterr().out
    assert 'bad (APE): DicomError:' in out and 'IM0001.dcm: not a DICOM file' in out
    assert 'empty (APE): DicomError:' in out and 'no DICOM images found' in out
    small_case(root / 'APE' / 'good', 0)                                                # one usable case: exit 0
    assert len(prepare_main(argv)['cases']) == 1
