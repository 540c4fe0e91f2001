"DICOM I/O on the shipped phantoms, compressed syntaxes, write/read round trips, NIfTI geometry, bad input."
import json, pickle, warnings, zipfile
from pathlib import Path
import numpy as np, pydicom, pytest
from pydicom.data import get_testdata_file
from v2v_diffusion.dicom import *
from v2v_diffusion.dicom import slice_hu, parse_dicom, LPS_TO_RAS
from dicom_edits import make_zip, edit

ROOT = Path(__file__).resolve().parents[1] / 'data_samples'
MANIFEST = json.loads((ROOT / 'manifest.json').read_text())
ZIPS = sorted(ROOT.glob('*/*.zip'))

def test_shipped_layout():
    assert len(ZIPS) >= 4 and {p.parent.name for p in ZIPS} == {'APE', 'non APE'}
    assert sum(p.stat().st_size for p in ROOT.rglob('*')) < 8e6

@pytest.mark.parametrize('zp', ZIPS[:2], ids=lambda p: p.stem)
def test_read_shipped_case(zp):
    s = read_dicom_tree(zp)
    assert sorted(s) == ['1', '2']
    thick, thin = pick_thick_thin(s)
    assert thick is s['1'] and thin is s['2']
    m = MANIFEST[zp.stem]
    np.testing.assert_allclose(thin.spacing, (1.0, 360 / 128, 360 / 128)); np.testing.assert_allclose(thick.spacing[0], 5.0)
    assert thin.thickness == 1.0 and thick.thickness == 5.0
    np.testing.assert_allclose([thin.z[0], thin.z[-1]], m['thin_z']); np.testing.assert_allclose([thick.z[0], thick.z[-1]], m['thick_z'])
    assert len(thin.z) == m['n_thin'] and thin.hu.dtype == np.float32
    hu = thin.hu
    assert np.median(hu[:, :5, :5]) == -1024                  # padding outside the scan circle
    assert -1100 < np.median(hu[:, 64, 3:12]) < -900 or np.median(hu[:, 5:10, 64]) < -900   # air
    lung = hu[:, 55:70, 25:35]; assert (lung < -700).mean() > 0.5                     # right lung
    assert (hu > 700).sum() > 1000                                                    # bone
    assert thin.meta['TransferSyntaxUID'] == '1.2.840.10008.1.2.5' and thin.meta['Modality'] == 'CT'
    assert thin.meta['PatientID'] == zp.stem and thin.meta['StudyInstanceUID'] == thick.meta['StudyInstanceUID']

@pytest.mark.parametrize('comp,plain', [('MR_small_RLE.dcm', 'MR_small.dcm'), ('MR_small_jp2klossless.dcm', 'MR_small.dcm'),
                                        ('emri_small_RLE.dcm', 'emri_small.dcm')])
def test_compressed_equals_uncompressed(comp, plain):
    a, b = (get_testdata_file(f) for f in (comp, plain))
    assert a and b, 'pydicom test files must be installed (offline)'
    da, db = (parse_dicom(f, Path(f).read_bytes()) for f in (a, b))
    if int(db.get('NumberOfFrames', 1) or 1) > 1:   # multi-frame: compare decoded arrays only
        np.testing.assert_array_equal(da.pixel_array, db.pixel_array); return
    np.testing.assert_array_equal(slice_hu(a, da), slice_hu(b, db))
    va, vb = read_series(a, modalities=None), read_series(b, modalities=None)
    np.testing.assert_array_equal(va.hu, vb.hu); np.testing.assert_allclose(va.affine(), vb.affine())

def test_jpeg2000_lossless():
    a, b = (get_testdata_file(f) for f in ('JPEG2000.dcm', 'JPEG2000_UNC.dcm'))
    np.testing.assert_array_equal(*(slice_hu(f, parse_dicom(f, Path(f).read_bytes())) for f in (a, b)))

def oblique_volume(nz=7):
    r = np.array([np.cos(0.3), np.sin(0.3), 0.0]); c = np.array([-np.sin(0.3) * np.cos(0.2), np.cos(0.3) * np.cos(0.2), np.sin(0.2)])
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 300, (nz, 12, 10)).astype(np.float32)
    origin = np.array([12.5, -40.25, 7.0])                 # z is the position along the normal: origin · normal first
    return Volume(hu, origin @ np.cross(r, c) + 2.5 * np.arange(nz), (2.5, 0.75, 0.6), origin, np.concatenate([r, c]), 3.0,
                  {'PatientID': 'X9', 'PatientName': 'DOE^JANE'})

@pytest.mark.parametrize('ts', ['explicit', 'rle'])
def test_write_read_roundtrip(tmp_path, ts):
    v = oblique_volume()
    paths = write_dicom_series(v, tmp_path, reference_meta=v.meta, transfer_syntax=ts)
    w = read_series(tmp_path)
    assert np.abs(w.hu - v.hu).max() <= 0.5                                          # HU within rounding
    np.testing.assert_allclose(w.z, v.z, atol=1e-4); np.testing.assert_allclose(w.origin, v.origin, atol=1e-4)
    np.testing.assert_allclose(w.orientation, v.orientation, atol=1e-6); np.testing.assert_allclose(w.spacing, v.spacing, atol=1e-6)
    np.testing.assert_allclose(w.affine(), v.affine(), atol=1e-4); assert w.thickness == 3.0
    ds = pydicom.dcmread(paths[0])
    assert list(ds.ImageType) == ['DERIVED', 'SECONDARY', 'AXIAL']
    assert ds.PatientID == 'ANONYMOUS'                                               # de-identified by default
    assert ds.PatientIdentityRemoved == 'YES' and ds.PatientName == 'ANONYMOUS'
    w2 = read_series(write_dicom_series(v, tmp_path / 'b', reference_meta=v.meta, copy_patient_tags=True))
    assert w2.meta['PatientID'] == 'X9'
    assert len({w.meta['StudyInstanceUID'], w2.meta['StudyInstanceUID']}) == 2           # new UIDs each time
    assert len({pydicom.dcmread(p).SOPInstanceUID for p in paths}) == len(paths)

def test_nifti_affine_matches_dicom(tmp_path):
    import nibabel as nib
    v = oblique_volume()
    img = nib.load(write_nifti(v, tmp_path / 'v.nii.gz'))
    np.testing.assert_allclose(img.affine, LPS_TO_RAS @ v.affine(), atol=1e-5)
    # voxel (i=col, j=row, k=slice) in RAS equals the DICOM LPS position with x, y negated
    i, j, k = 3, 5, 4
    lps = v.positions()[k] + i * v.spacing[2] * v.orientation[:3] + j * v.spacing[1] * v.orientation[3:]
    np.testing.assert_allclose((img.affine @ [i, j, k, 1])[:3], lps * [-1, -1, 1], atol=1e-4)
    np.testing.assert_allclose(np.asarray(img.dataobj)[i, j, k], v.hu[k, j, i], atol=1e-4)

def test_memmapped_volume_pickles_as_a_file_name(tmp_path):
    v = oblique_volume(); np.save(tmp_path / 'h.npy', v.hu.astype(np.int16))
    v.hu = np.load(tmp_path / 'h.npy', mmap_mode='r')
    blob = pickle.dumps(v); assert len(blob) < 5000
    w = pickle.loads(blob); assert isinstance(w.hu, np.memmap); np.testing.assert_array_equal(w.hu, v.hu)
    v.hu = v.hu[1:3]; assert pickle.loads(pickle.dumps(v)).hu.shape[0] == 2            # a slice pickles its data

# ---- bad input, one by one
def members(zp):
    with zipfile.ZipFile(zp) as zf: return [(i.filename, zf.read(i)) for i in zf.infolist()]

def test_corrupt_zip(tmp_path):
    p = tmp_path / 'c.zip'; p.write_bytes(ZIPS[0].read_bytes()[:50000])
    with pytest.raises(DicomError, match='c.zip: not a readable zip archive'): read_dicom_tree(p)

def test_zip_slip(tmp_path):
    p = make_zip(tmp_path / 's.zip', members(ZIPS[0])[:3] + [('../../etc/evil.dcm', b'x')])
    with pytest.raises(DicomError, match=r"'\.\./\.\./etc/evil\.dcm' escapes the archive"): read_dicom_tree(p)
    p = make_zip(tmp_path / 'a.zip', [('/abs/x.dcm', b'x')])
    with pytest.raises(DicomError, match='escapes the archive'): read_dicom_tree(p)

def test_truncated_dicom(tmp_path):
    m = members(ZIPS[0]); name, data = m[20]
    p = make_zip(tmp_path / 't.zip', m[:20] + [(name, data[:len(data) // 2])] + m[21:])
    with pytest.raises(DicomError, match=name.split('/')[-1]): read_dicom_tree(p)

def test_missing_position(tmp_path):
    m = members(ZIPS[0]); name, data = m[30]
    p = make_zip(tmp_path / 'm.zip', m[:30] + [(name, edit(data, ImagePositionPatient=None))] + m[31:])
    with pytest.raises(DicomError, match=f"{name}: missing ImagePositionPatient"): read_dicom_tree(p)

def test_two_series_in_one_folder(tmp_path):
    m = members(ZIPS[0]); thick = [x for x in m if '/1/' in x[0]]
    stray = (thick[0][0].replace('/1/', '/2/').replace('IM', 'XX'), thick[0][1])
    p = make_zip(tmp_path / 'two.zip', m + [stray])
    with pytest.raises(DicomError, match='folder 2/ mixes 2 series'): read_dicom_tree(p)
    with pytest.raises(DicomError, match='2 series mixed in one source'):
        read_series([get_testdata_file('CT_small.dcm'), get_testdata_file('MR_small.dcm')], modalities=None)

def test_mr_file(tmp_path):
    m = members(ZIPS[0]); name, data = m[40]
    p = make_zip(tmp_path / 'mr.zip', m[:40] + [(name, edit(data, Modality='MR'))] + m[41:])
    with pytest.raises(DicomError, match=f"{name}: Modality MR, expected CT"): read_dicom_tree(p)

def test_generic_layout_by_uid_and_spacing(tmp_path):
    "Any tree: series found by SeriesInstanceUID, thick/thin by spacing, stray files skipped."
    for n, d in members(ZIPS[1]):
        f = tmp_path / 'x' / Path(n).name.replace('IM', 'S1' if '/1/' in n else 'S2'); f.parent.mkdir(exist_ok=True); f.write_bytes(d)
    (tmp_path / 'x' / 'notes.txt').write_text('hello')
    s = read_dicom_tree(tmp_path / 'x')
    assert len(s) == 2 and all(k.startswith('1.') or k.startswith('2.') for k in s)
    thick, thin = pick_thick_thin(s)
    assert (thick.spacing[0], thin.spacing[0]) == (5.0, 1.0)

def test_gap_and_duplicate_warn_naming_files(tmp_path):
    m = [x for x in members(ZIPS[0]) if '/1/' in x[0]]
    with pytest.warns(DicomWarning, match=r'IM000[0-9]\.dcm: gap of 10\.00 mm'):
        read_series(make_zip(tmp_path / 'g.zip', m[:4] + m[5:]))
    with pytest.warns(DicomWarning, match='duplicate slice position'):
        v = read_series(make_zip(tmp_path / 'd.zip', m + [(m[2][0].replace('IM', 'DUP'), m[2][1])]))
    assert len(v.z) == len(m)
