"Real scanner series in, valid linked DICOM out: tilt, uneven steps, enhanced CT, padding, misplaced slices, linkage, de-identification."
import io, re
from pathlib import Path
import numpy as np, pydicom, pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from v2v_diffusion.dicom import *
from v2v_diffusion.dicom import LPS_TO_RAS
from dicom_edits import dciodvfy, edit, sample, validator

SOURCE_TAGS = dict(PatientID='DOE_JOHN_MRN123456', PatientName='DOE^JOHN', PatientBirthDate='19700101', PatientSex='M',
                   PatientAge='054Y', AccessionNumber='ACC778899', StudyDate='20240102', StudyTime='101112', StudyID='S42',
                   ReferringPhysicianName='WHO^DR', InstitutionName='General Hospital Springfield', KVP='120',
                   PatientPosition='HFS', BodyPartExamined='CHEST', Manufacturer='GE MEDICAL SYSTEMS')
TILT = np.radians(18.5)

def scanner_series(d: Path, hu, z, *, orientation=(1, 0, 0, 0, 1, 0), spacing=(0.8, 0.8), desc='THICK 5mm DOE JOHN', **kw) -> list:
    "A scanner-like ORIGINAL series of slices `hu` at normal positions `z`, with identifying tags; returns the paths."
    o = np.asarray(orientation, float)
    ref = dict(SOURCE_TAGS, StudyInstanceUID=generate_uid(), FrameOfReferenceUID=generate_uid())
    v = Volume(np.asarray(hu, np.float32), np.asarray(z, float), (float(np.median(np.diff(z))), *spacing),
               np.cross(o[:3], o[3:]) * z[0], o, 5.0, ref)
    return write_dicom_series(v, d, reference_meta=ref, copy_patient_tags=True, series_description=desc,
                              image_type=('ORIGINAL', 'PRIMARY', 'AXIAL'), series_number=3, **kw)

def retag(paths, per_file: list[dict]):
    "Rewrite each file with its own tag changes."
    for p, tags in zip(paths, per_file): p.write_bytes(edit(p.read_bytes(), **tags))

# ---- 1 + 11: gantry tilt
def tilted_series(d: Path, n=10, step=5.0, size=48, px=0.8):
    "A GE-like tilted stack: oblique orientation, table moving straight along patient z; a vertical rod at x=5, y=-3 mm."
    col = np.array([0, np.cos(TILT), np.sin(TILT)]); row = np.array([1., 0, 0])
    origin = np.array([-size * px / 2, -size * px / 2, 0.0])
    i, j = round((-3 - origin[1]) / (px * col[1])), round((5 - origin[0]) / px)    # the rod's pixel, the same in every slice
    hu = np.full((n, size, size), -1000, np.float32); hu[:, i, j] = 1000
    pos = origin + np.outer(np.arange(n) * step, [0, 0, 1])
    paths = scanner_series(d, hu, pos @ np.cross(row, col), orientation=[*row, *col], spacing=(px, px))
    retag(paths[::-1], [dict(ImagePositionPatient=[f'{x:.4f}' for x in p]) for p in pos])   # files are written top first
    return paths, (origin + j * px * row + i * px * col)[:2]                               # the rod's x, y

def rod_world(v: Volume) -> np.ndarray:
    "(Z,3) LPS position of the brightest pixel of each slice of `v`."
    ij = [np.unravel_index(np.argmax(s), s.shape) for s in np.asarray(v.hu)]
    return np.array([(v.affine() @ [j, i, k, 1])[:3] for k, (i, j) in enumerate(ij)])

def test_tilt_is_desheared_onto_the_true_positions(tmp_path):
    _, rod = tilted_series(tmp_path / 't')
    with pytest.warns(DicomWarning, match=r"gantry tilt of 18\.5°"): v = read_series(tmp_path / 't')
    w = rod_world(v)
    np.testing.assert_allclose(w[:, :2], np.tile(rod, (len(w), 1)), atol=0.41)         # the rod stays where it is
    np.testing.assert_allclose(np.linalg.norm(np.cross(v.orientation[:3], v.orientation[3:])), 1)
    np.testing.assert_allclose(v.spacing[0], 5 * np.cos(TILT), atol=1e-3)               # steps along the true normal

def test_tilt_refused_naming_series_and_angle(tmp_path):
    tilted_series(tmp_path / 't')
    with pytest.raises(DicomError, match=r"IM\d+\.dcm: series 3 'THICK 5mm DOE JOHN' .* gantry tilt of 18\.5°.*refused"):
        read_series(tmp_path / 't', tilt='refuse')
    with pytest.raises(DicomError, match=r"no usable series: series .* gantry tilt of 18\.5°"):
        with pytest.warns(DicomWarning): read_dicom_tree(tmp_path / 't', tilt='refuse')

def test_nifti_and_dicom_of_a_tilted_input_agree(tmp_path):
    "Item 11: corner voxels of the written NIfTI and DICOM lie at the same world points, and the rod where it was."
    import nibabel as nib
    _, rod = tilted_series(tmp_path / 't')
    with pytest.warns(DicomWarning): v = read_series(tmp_path / 't')
    img = nib.load(write_nifti(v, tmp_path / 'v.nii.gz'))
    back = read_series(write_dicom_series(v, tmp_path / 'out', reference_meta=v.meta))
    nz, ny, nx = v.shape
    for k in (0, nz - 1):
        for i in (0, ny - 1):
            for j in (0, nx - 1):
                lps = back.positions()[k] + j * back.spacing[2] * back.orientation[:3] + i * back.spacing[1] * back.orientation[3:]
                np.testing.assert_allclose((img.affine @ [j, i, k, 1])[:3], (LPS_TO_RAS[:3, :3] @ lps), atol=1e-3)
    np.testing.assert_allclose(rod_world(back)[:, :2], np.tile(rod, (nz, 1)), atol=0.41)
    assert not dciodvfy_errors(tmp_path / 'out')

# ---- 2: uneven steps, mixed thickness
UNEVEN = np.array([0., 4, 8, 12, 13.08, 17.08, 24.08, 31.08, 35.08])     # steps 1.08 .. 7 mm, median 4

def test_uneven_steps_resampled_onto_a_uniform_grid(tmp_path):
    hu = np.broadcast_to(UNEVEN[:, None, None] * 10, (len(UNEVEN), 8, 8))          # HU = 10 x position: linear in z
    paths = scanner_series(tmp_path / 'u', hu, UNEVEN)
    retag(paths[::-1], [dict(SliceThickness='7' if s > 5 else '4') for s in np.r_[4, np.diff(UNEVEN)]])
    with pytest.warns(DicomWarning) as rec: v = read_series(tmp_path / 'u')
    msgs = ' | '.join(str(r.message) for r in rec)
    assert 'uneven slice spacing' in msgs and 'resampled onto a uniform grid' in msgs
    assert re.search(r'mixed SliceThickness in series 3 .*: 4, 7 mm', msgs)
    np.testing.assert_allclose(np.diff(v.z), np.diff(v.z)[0], atol=1e-9)              # uniform
    np.testing.assert_allclose([v.z[0], v.z[-1]], [0, 35.08])                          # first and last slice where they were
    np.testing.assert_allclose(v.positions()[-1], [0, 0, 35.08], atol=1e-6)
    np.testing.assert_allclose(v.hu[:, 3, 3], 10 * v.z, atol=0.51)                     # every slice at its true position
    np.testing.assert_allclose(v.affine() @ [0, 0, len(v.z) - 1, 1], [0, 0, 35.08, 1], atol=1e-6)

def test_steps_beyond_tolerance_refused(tmp_path):
    z = np.array([0., 4, 8, 12, 30, 34])
    paths = scanner_series(tmp_path / 'g', np.zeros((6, 8, 8)), z)
    with pytest.raises(DicomError, match=r"IM0003\.dcm and \S*IM0002\.dcm: slice position inconsistent .* step of 18\.0 mm"):
        read_series(tmp_path / 'g')

# ---- 7: a misplaced slice
def test_slice_misplaced_by_2000_mm_is_an_error_naming_it(tmp_path):
    z = 5.0 * np.arange(8)
    paths = scanner_series(tmp_path / 'm', np.zeros((8, 8, 8)), z)
    retag(paths[3:4], [dict(ImagePositionPatient=['0', '0', '2015'])])
    with pytest.raises(DicomError, match=r"IM0004\.dcm: slice position inconsistent with the rest of series 3 .* step of 19\d\d\.0 mm"):
        read_series(tmp_path / 'm')
    retag(paths[3:4], [dict(ImagePositionPatient=['40', '0', '20'])])                 # off the line, in-plane
    with pytest.raises(DicomError, match=r"IM0004\.dcm: slice position inconsistent .* \d\d\.\d mm off their line"):
        read_series(tmp_path / 'm')

# ---- 3: enhanced multi-frame CT
def enhanced_ct(v: Volume, *, per_frame_rescale=False, drop=None) -> bytes:
    "`v` as one Enhanced CT file: positions per frame; orientation, pixel measures (and rescale) shared; stored 0..n."
    ds = pydicom.dcmread(io.BytesIO(dicom_series_bytes(v)[0][1]))
    for k in ('ImagePositionPatient', 'ImageOrientationPatient', 'PixelSpacing', 'SliceThickness', 'RescaleSlope',
              'RescaleIntercept', 'RescaleType', 'InstanceNumber', 'SliceLocation'): delattr(ds, k)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.2.1'
    item = lambda **kw: _set(Dataset(), **kw)
    icpt = -1024.0 - 10 * np.arange(len(v.z)) if per_frame_rescale else np.full(len(v.z), -1024.0)
    shared = item(PlaneOrientationSequence=[item(ImageOrientationPatient=list(v.orientation))],
                  PixelMeasuresSequence=[item(PixelSpacing=list(v.spacing[1:]), SliceThickness=v.thickness)])
    per = [item(PlanePositionSequence=[item(ImagePositionPatient=list(p))]) for p in v.positions()]
    for g, c in zip(per, icpt):
        (g if per_frame_rescale else shared).PixelValueTransformationSequence = [item(RescaleSlope=1, RescaleIntercept=c, RescaleType='HU')]
    if drop is not None: del per[drop].PlanePositionSequence
    ds.SharedFunctionalGroupsSequence, ds.PerFrameFunctionalGroupsSequence = [shared], per
    ds.NumberOfFrames, ds.PixelRepresentation = len(v.z), 0
    ds.PixelData = np.rint(np.asarray(v.hu) - icpt[:, None, None]).astype('<u2').tobytes()
    b = io.BytesIO(); ds.save_as(b, enforce_file_format=True); return b.getvalue()

def _set(ds, **kw):
    for k, val in kw.items(): setattr(ds, k, val)
    return ds

def ramp_volume(n=7):
    hu = (np.arange(n)[:, None, None] * 100 + np.arange(12)[None, :, None] * 10 + np.zeros((1, 1, 10)) - 500).astype(np.float32)
    o = np.array([1, 0, 0, 0, np.cos(0.1), np.sin(0.1)])
    return Volume(hu, 2.5 * np.arange(n) + 3, (2.5, 0.7, 0.6), np.cross(o[:3], o[3:]) * 3, o, 2.5, {})

@pytest.mark.parametrize('per_frame_rescale', [False, True], ids=['shared-rescale', 'per-frame-rescale'])
def test_enhanced_ct_reads_geometry_and_hu_from_functional_groups(tmp_path, per_frame_rescale):
    v = ramp_volume()
    (tmp_path / 'e').mkdir(); (tmp_path / 'e' / 'enh.dcm').write_bytes(enhanced_ct(v, per_frame_rescale=per_frame_rescale))
    assert pydicom.dcmread(tmp_path / 'e' / 'enh.dcm').pixel_array.min() >= 0     # naive reading: raw values, not HU
    w = read_series(tmp_path / 'e')
    np.testing.assert_array_equal(w.hu, v.hu)
    np.testing.assert_allclose(w.affine(), v.affine(), atol=1e-6)
    assert w.thickness == 2.5 and [s[2] for s in w.meta['sources']] == list(range(1, 8))

def test_enhanced_ct_in_the_dataset_layout_and_its_errors(tmp_path):
    thin = ramp_volume(13); thin.z, thin.spacing = 1.25 * np.arange(13) + 3, (1.25, 0.7, 0.6)
    (tmp_path / 'c' / '2').mkdir(parents=True); (tmp_path / 'c' / '2' / 'thin.dcm').write_bytes(enhanced_ct(thin))
    write_dicom_series(ramp_volume(), tmp_path / 'c' / '1')
    thick, thin_r = pick_thick_thin(read_dicom_tree(tmp_path / 'c'))
    assert (thick.spacing[0], thin_r.spacing[0]) == pytest.approx((2.5, 1.25))
    (tmp_path / 'b').mkdir(); (tmp_path / 'b' / 'enh.dcm').write_bytes(enhanced_ct(ramp_volume(), drop=3))
    with pytest.raises(DicomError, match=r"no usable series: series .*enh\.dcm frame 4: missing ImagePositionPatient"):
        with pytest.warns(DicomWarning): read_dicom_tree(tmp_path / 'b')

# ---- 4: padding
@pytest.mark.parametrize('pad,limit,stored', [(-1500, None, -1500), (-3024, None, -3024), (63536, None, -2000), (-2000, -1900, -1950)],
                         ids=['GE-1500', 'minus3024', 'US-encoded', 'range-limit'])
def test_padding_becomes_air(tmp_path, pad, limit, stored):
    hu = np.full((3, 8, 8), 40, np.float32); hu[:, :2] = stored                          # two padded rows
    paths = scanner_series(tmp_path / 'p', hu, np.array([0., 5, 10]))
    tags = dict(PixelPaddingValue=pad) | (dict(PixelPaddingRangeLimit=limit) if limit is not None else {})
    for p in paths:
        ds = pydicom.dcmread(p)
        for k, val in tags.items():
            ds.add_new(k, 'US' if val > 32767 else 'SS', val)
        ds.save_as(p)
    v = read_series(tmp_path / 'p')
    assert (v.hu[:, :2] == -1024).all() and (v.hu[:, 2:] == 40).all()
    case = read_dicom_tree(tmp_path / 'p', dtype=np.int16)                                # the cache's (training) path
    assert (next(iter(case.values())).hu[:, :2] == -1024).all()

# ---- 8: linkage
def dciodvfy_errors(folder: Path) -> list:
    validator()
    return dciodvfy(sample(sorted(Path(folder).glob('*.dcm'))))[0]

@pytest.fixture
def source(tmp_path):
    "A read scanner-like thick series (identifying tags, KVP, HFS, chest) and its files."
    paths = scanner_series(tmp_path / 'src', np.zeros((4, 8, 8)), 5.0 * np.arange(4))
    return read_series(tmp_path / 'src'), paths

def test_derived_series_links_to_its_source(tmp_path, source):
    src, src_paths = source
    thin = Volume(np.zeros((16, 8, 8), np.float32), 1.0 * np.arange(16), (1.0, 0.8, 0.8), src.origin, src.orientation, 1.0, {})
    out = write_dicom_series(thin, tmp_path / 'd', reference_meta=src.meta)
    ds = [pydicom.dcmread(p) for p in out]
    src_uids = {pydicom.dcmread(p).SOPInstanceUID: float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in src_paths}
    assert {d.FrameOfReferenceUID for d in ds} == {src.meta['FrameOfReferenceUID']}
    assert {d.StudyInstanceUID for d in ds} != {src.meta['StudyInstanceUID']}        # de-identified: a new study
    assert list(ds[0].ImageType) == ['DERIVED', 'SECONDARY', 'AXIAL'] and 'thick CT series' in ds[0].DerivationDescription
    for d in ds:                                                                     # each slice names the source slices around it
        z, refs = float(d.ImagePositionPatient[2]), [r.ReferencedSOPInstanceUID for r in d.SourceImageSequence]
        assert all(abs(src_uids[r] - z) < 5 for r in refs) and 1 <= len(refs) <= 2
        other = d.StudiesContainingOtherReferencedInstancesSequence[0]
        assert other.StudyInstanceUID == src.meta['StudyInstanceUID']
        assert other.ReferencedSeriesSequence[0].SeriesInstanceUID == src.meta['SeriesInstanceUID']
        assert {r.ReferencedSOPInstanceUID for r in other.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == set(refs)
    assert (ds[0].KVP, ds[0].PatientPosition, ds[0].BodyPartExamined, ds[0].Manufacturer) == (120, 'HFS', 'CHEST', 'v2v-diffusion')
    kept = pydicom.dcmread(write_dicom_series(thin, tmp_path / 'k', reference_meta=src.meta, copy_patient_tags=True)[0])
    assert kept.StudyInstanceUID == src.meta['StudyInstanceUID'] and kept.ReferencedSeriesSequence[0].SeriesInstanceUID == src.meta['SeriesInstanceUID']
    assert not dciodvfy_errors(tmp_path / 'd') and not dciodvfy_errors(tmp_path / 'k')

# ---- 9: de-identification
IDENTIFYING = [v for k, v in SOURCE_TAGS.items() if k not in ('KVP', 'PatientPosition', 'BodyPartExamined', 'Manufacturer',
                                                          'PatientSex', 'StudyTime')] + ['DOE', 'JOHN']   # sex, time: too short to search

def test_default_output_carries_no_source_identity_or_free_text(tmp_path, source):
    src, _ = source
    out = write_dicom_series(src, tmp_path / 'd', reference_meta=src.meta, series_description=f"v2v thin from {src.meta['SeriesDescription']}")
    for p in out:
        raw = p.read_bytes()
        assert not [s for s in IDENTIFYING if s.encode() in raw], p
    ds = pydicom.dcmread(out[0])
    assert ds.SeriesDescription == 'v2v thin from source series' and ds.PatientIdentityRemoved == 'YES'
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == '113100'
    assert [ds[k].value or '' for k in ('PatientSex', 'StudyDate', 'StudyTime', 'AccessionNumber')] == [''] * 4
    assert (ds.PatientID, ds.PatientName) == ('ANONYMOUS', 'ANONYMOUS')                  # a dummy value, not a pseudonym
    ps = pydicom.dcmread(write_dicom_series(src, tmp_path / 'p', reference_meta=src.meta, pseudonym='PSEUDO-7')[0])
    assert (ps.PatientID, str(ps.PatientName)) == ('PSEUDO-7', 'PSEUDO-7')
    assert not dciodvfy_errors(tmp_path / 'd')

def test_copy_patient_tags_copies_every_documented_tag(tmp_path, source):
    src, _ = source
    ds = pydicom.dcmread(write_dicom_series(src, tmp_path / 'c', reference_meta=src.meta, copy_patient_tags=True)[0])
    for k in ('PatientID', 'PatientName', 'PatientBirthDate', 'PatientSex', 'PatientAge', 'AccessionNumber', 'StudyDate',
              'StudyTime', 'StudyID', 'ReferringPhysicianName', 'InstitutionName'):
        assert str(ds[k].value) == SOURCE_TAGS[k], k
    assert ds.Manufacturer == 'v2v-diffusion' and 'PatientIdentityRemoved' not in ds
    assert not dciodvfy_errors(tmp_path / 'c')

# ---- 10: the validator itself
def test_validator_is_there_and_catches_errors(tmp_path, source):
    validator()
    _, paths = source
    bad = edit(paths[0].read_bytes(), ImageType=['DERIVED', 'SECONDARY'], KVP=None)
    errors, _ = dciodvfy([bad])
    assert any('ImageType' in e for e in errors) and any('KVP' in e for e in errors)
    assert dciodvfy(sample(paths))[0] == []
