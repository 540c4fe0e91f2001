"""Real scanner series in, valid linked DICOM out (issue 16): tilt, uneven steps, enhanced CT, padding, misplaced
slices, linkage to the source, de-identification, NIfTI/DICOM agreement."""
import io, re
from pathlib import Path
import numpy as np, pydicom, pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from v2v_diffusion.dicom import *
from dicom_edits import dciodvfy, edit, sample, validator, assert_corners_agree

SOURCE_TAGS = dict(PatientID='DOE_JOHN_MRN123456', PatientName='DOE^JOHN', PatientBirthDate='19700101', PatientSex='M',
                   PatientAge='054Y', AccessionNumber='ACC778899', StudyDate='20240102', StudyTime='101112',
                   StudyID='S42', ReferringPhysicianName='WHO^DR', InstitutionName='General Hospital Springfield',
                   KVP='120', PatientPosition='HFS', BodyPartExamined='CHEST', Manufacturer='GE MEDICAL SYSTEMS')
TILT = np.radians(18.5)

def scanner_series(d: Path, hu, z, *, orientation=(1, 0, 0, 0, 1, 0), spacing=(0.8, 0.8), desc='THICK 5mm DOE JOHN',
                   **kw) -> list:
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

def dciodvfy_errors(folder: Path) -> list:
    "dciodvfy's errors on the first, middle and last file of the series in `folder` (skips without the validator)."
    validator()
    return dciodvfy(sample(sorted(Path(folder).glob('*.dcm'))))[0]

# ---- 1: gantry tilt
def tilted_series(d: Path, n=10, step=5.0, size=48, px=0.8):
    "A GE-like tilted stack (oblique slices, table moving along patient z) with a vertical rod; (paths, rod x, y)."
    row, col = np.array([1., 0, 0]), np.array([0, np.cos(TILT), np.sin(TILT)])
    origin = np.array([-size * px / 2, -size * px / 2, 0.0])
    i, j = round((-3 - origin[1]) / (px * col[1])), round((5 - origin[0]) / px)    # the rod's pixel in every slice
    hu = np.full((n, size, size), -1000, np.float32)
    hu[:, i, j] = 1000
    pos = origin + np.outer(np.arange(n) * step, [0, 0, 1])
    paths = scanner_series(d, hu, pos @ np.cross(row, col), orientation=[*row, *col], spacing=(px, px))
    retag(paths[::-1], [dict(ImagePositionPatient=[f'{x:.4f}' for x in p]) for p in pos])   # written top first
    return paths, (origin + j * px * row + i * px * col)[:2]

def rod_world(v: Volume) -> np.ndarray:
    "(Z,3) LPS position of the brightest pixel of each slice of `v`."
    ij = [np.unravel_index(np.argmax(s), s.shape) for s in np.asarray(v.hu)]
    return np.array([(v.affine() @ [j, i, k, 1])[:3] for k, (i, j) in enumerate(ij)])

def test_tilt_is_desheared_onto_the_true_positions(tmp_path):
    _, rod = tilted_series(tmp_path / 't')
    with pytest.warns(DicomWarning, match=r"gantry tilt of 18\.5°"):
        v = read_series(tmp_path / 't')
    w = rod_world(v)
    np.testing.assert_allclose(w[:, :2], np.tile(rod, (len(w), 1)), atol=0.41)         # the rod stays where it is
    np.testing.assert_allclose(v.spacing[0], 5 * np.cos(TILT), atol=1e-3)               # steps along the true normal

def test_tilt_refused_naming_series_and_angle(tmp_path):
    tilted_series(tmp_path / 't')
    with pytest.raises(DicomError, match=r"IM\d+\.dcm: series 3 'THICK 5mm DOE JOHN' .* tilt of 18\.5°.*refused"):
        read_series(tmp_path / 't', tilt='refuse')
    with pytest.raises(DicomError, match=r"no usable series: series .* gantry tilt of 18\.5°"):
        with pytest.warns(DicomWarning):
            read_dicom_tree(tmp_path / 't', tilt='refuse')

# ---- 2: uneven steps, mixed thickness
UNEVEN = np.array([0., 4, 8, 12, 13.08, 17.08, 24.08, 31.08, 35.08])     # steps 1.08 .. 7 mm, median 4

def uneven_series(d: Path) -> list:
    "Slices at UNEVEN positions, 4 and 7 mm thick, whose HU are 10 x their position (linear in z)."
    hu = np.broadcast_to(UNEVEN[:, None, None] * 10, (len(UNEVEN), 8, 8))
    paths = scanner_series(d, hu, UNEVEN)
    retag(paths[::-1], [dict(SliceThickness='7' if s > 5 else '4') for s in np.r_[4, np.diff(UNEVEN)]])
    return paths

def test_uneven_steps_resampled_onto_a_uniform_grid(tmp_path):
    uneven_series(tmp_path / 'u')
    with pytest.warns(DicomWarning) as rec:
        v = read_series(tmp_path / 'u')
    msgs = ' | '.join(str(r.message) for r in rec)
    assert 'uneven slice spacing' in msgs and 'resampled onto a uniform grid' in msgs
    assert re.search(r'mixed SliceThickness in series 3 .*: 4, 7 mm', msgs)
    np.testing.assert_allclose(np.diff(v.z), np.diff(v.z)[0], atol=1e-9)              # uniform
    np.testing.assert_allclose([v.z[0], v.z[-1]], [0, 35.08])                          # first and last slice kept
    np.testing.assert_allclose(v.affine() @ [0, 0, len(v.z) - 1, 1], [0, 0, 35.08, 1], atol=1e-6)
    np.testing.assert_allclose(v.hu[:, 3, 3], 10 * v.z, atol=0.51)                     # each slice at its position

def test_steps_beyond_tolerance_refused(tmp_path):
    scanner_series(tmp_path / 'g', np.zeros((6, 8, 8)), np.array([0., 4, 8, 12, 30, 34]))
    with pytest.raises(DicomError, match=r"IM0003\.dcm and \S*IM0002\.dcm: slice position inconsistent .* 18\.0 mm"):
        read_series(tmp_path / 'g')

# ---- 11: NIfTI and DICOM outputs of a tilted or resampled input agree
@pytest.mark.parametrize('kind', ['tilted', 'uneven'])
def test_nifti_and_dicom_corners_agree(tmp_path, kind):
    import nibabel as nib
    (tilted_series if kind == 'tilted' else uneven_series)(tmp_path / 'in')
    with pytest.warns(DicomWarning):
        v = read_series(tmp_path / 'in')
    img = nib.load(write_nifti(v, tmp_path / 'v.nii.gz'))
    back = read_series(write_dicom_series(v, tmp_path / 'out', reference_meta=v.meta))
    assert back.shape == v.shape
    assert_corners_agree(img, back)
    if kind == 'tilted': np.testing.assert_allclose(rod_world(back), rod_world(v), atol=1e-3)
    assert not dciodvfy_errors(tmp_path / 'out')

# ---- 7: a misplaced slice
def test_slice_misplaced_by_2000_mm_is_an_error_naming_it(tmp_path):
    paths = scanner_series(tmp_path / 'm', np.zeros((8, 8, 8)), 5.0 * np.arange(8))
    retag(paths[3:4], [dict(ImagePositionPatient=['0', '0', '2015'])])
    with pytest.raises(DicomError, match=r"IM0004\.dcm: slice position inconsistent with the rest of series 3 .*"
                                         r"step of 19\d\d\.0 mm"):
        read_series(tmp_path / 'm')
    retag(paths[3:4], [dict(ImagePositionPatient=['40', '0', '20'])])                 # off the line, in-plane
    with pytest.raises(DicomError, match=r"IM0004\.dcm: slice position inconsistent .* \d\d\.\d mm off their line"):
        read_series(tmp_path / 'm')

# ---- 3: enhanced multi-frame CT
def item(**kw) -> Dataset:
    "A sequence item with `kw` set."
    ds = Dataset()
    for k, val in kw.items(): setattr(ds, k, val)
    return ds

def enhanced_ct(v: Volume, *, per_frame_rescale=False, drop=None) -> bytes:
    "`v` as one Enhanced CT file: positions per frame, orientation and pixel measures shared, rescale either."
    ds = pydicom.dcmread(io.BytesIO(dicom_series_bytes(v)[0][1]))
    for k in ('ImagePositionPatient', 'ImageOrientationPatient', 'PixelSpacing', 'SliceThickness', 'RescaleSlope',
              'RescaleIntercept', 'RescaleType', 'InstanceNumber', 'SliceLocation'): delattr(ds, k)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.2.1'
    icpt = -1024.0 - 10 * np.arange(len(v.z)) if per_frame_rescale else np.full(len(v.z), -1024.0)
    shared = item(PlaneOrientationSequence=[item(ImageOrientationPatient=list(v.orientation))],
                  PixelMeasuresSequence=[item(PixelSpacing=list(v.spacing[1:]), SliceThickness=v.thickness)])
    per = [item(PlanePositionSequence=[item(ImagePositionPatient=list(p))]) for p in v.positions()]
    for g, c in zip(per, icpt):
        rescale = [item(RescaleSlope=1, RescaleIntercept=c, RescaleType='HU')]
        (g if per_frame_rescale else shared).PixelValueTransformationSequence = rescale
    if drop is not None: del per[drop].PlanePositionSequence
    ds.SharedFunctionalGroupsSequence, ds.PerFrameFunctionalGroupsSequence = [shared], per
    ds.NumberOfFrames, ds.PixelRepresentation = len(v.z), 0
    ds.PixelData = np.rint(np.asarray(v.hu) - icpt[:, None, None]).astype('<u2').tobytes()
    b = io.BytesIO()
    ds.save_as(b, enforce_file_format=True)
    return b.getvalue()

def ramp_volume(n=7, dz=2.5) -> Volume:
    "A slightly oblique volume whose HU rise along z and along the rows."
    hu = np.arange(n)[:, None, None] * 100 + np.arange(12)[None, :, None] * 10 + np.zeros((1, 1, 10)) - 500
    o = np.array([1, 0, 0, 0, np.cos(0.1), np.sin(0.1)])
    return Volume(hu.astype(np.float32), dz * np.arange(n) + 3, (dz, 0.7, 0.6), np.cross(o[:3], o[3:]) * 3, o, dz, {})

def write(path: Path, data: bytes) -> Path:
    "`data` written to `path` (parents made)."
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path

@pytest.mark.parametrize('per_frame_rescale', [False, True], ids=['shared-rescale', 'per-frame-rescale'])
def test_enhanced_ct_reads_geometry_and_hu_from_functional_groups(tmp_path, per_frame_rescale):
    v = ramp_volume()
    f = write(tmp_path / 'e' / 'enh.dcm', enhanced_ct(v, per_frame_rescale=per_frame_rescale))
    assert pydicom.dcmread(f).pixel_array.min() >= 0                                   # naively: raw values, not HU
    w = read_series(tmp_path / 'e')
    np.testing.assert_array_equal(w.hu, v.hu)
    np.testing.assert_allclose(w.affine(), v.affine(), atol=1e-6)
    assert w.thickness == 2.5 and [s[2] for s in w.meta['sources']] == list(range(1, 8))

def test_enhanced_ct_in_the_dataset_layout_and_its_errors(tmp_path):
    write(tmp_path / 'c' / '2' / 'thin.dcm', enhanced_ct(ramp_volume(13, dz=1.25)))
    write_dicom_series(ramp_volume(), tmp_path / 'c' / '1')
    thick, thin = pick_thick_thin(read_dicom_tree(tmp_path / 'c'))
    assert (thick.spacing[0], thin.spacing[0]) == pytest.approx((2.5, 1.25))
    write(tmp_path / 'b' / 'enh.dcm', enhanced_ct(ramp_volume(), drop=3))
    with pytest.raises(DicomError, match=r"no usable series: series .*enh\.dcm frame 4: missing ImagePositionPatient"):
        with pytest.warns(DicomWarning):
            read_dicom_tree(tmp_path / 'b')

# ---- 4: padding
@pytest.mark.parametrize('pad,limit,stored', [(-1500, None, -1500), (-3024, None, -3024), (63536, None, -2000),
                                              (-2000, -1900, -1950)], ids=['GE-1500', '-3024', 'as-US', 'range'])
def test_padding_becomes_air(tmp_path, pad, limit, stored):
    hu = np.full((3, 8, 8), 40, np.float32)
    hu[:, :2] = stored                                                                 # two padded rows
    paths = scanner_series(tmp_path / 'p', hu, np.array([0., 5, 10]))
    tags = dict(PixelPaddingValue=pad) | (dict(PixelPaddingRangeLimit=limit) if limit is not None else {})
    for p in paths:
        ds = pydicom.dcmread(p)
        for k, val in tags.items(): ds.add_new(k, 'US' if val > 32767 else 'SS', val)
        ds.save_as(p)
    v = read_series(tmp_path / 'p')
    assert (v.hu[:, :2] == -1024).all() and (v.hu[:, 2:] == 40).all()
    case = read_dicom_tree(tmp_path / 'p', dtype=np.int16)                             # the cache's (training) path
    assert (next(iter(case.values())).hu[:, :2] == -1024).all()

# ---- 8: linkage
@pytest.fixture
def source(tmp_path):
    "A read scanner-like thick series (identifying tags, KVP, HFS, chest) and its files."
    paths = scanner_series(tmp_path / 'src', np.zeros((4, 8, 8)), 5.0 * np.arange(4))
    return read_series(tmp_path / 'src'), paths

def test_derived_series_links_to_its_source(tmp_path, source):
    src, src_paths = source
    thin = Volume(np.zeros((16, 8, 8), np.float32), 1.0 * np.arange(16), (1.0, 0.8, 0.8), src.origin, src.orientation,
                  1.0, {})
    ds = [pydicom.dcmread(p) for p in write_dicom_series(thin, tmp_path / 'd', reference_meta=src.meta)]
    src_z = {d.SOPInstanceUID: float(d.ImagePositionPatient[2]) for d in map(pydicom.dcmread, src_paths)}
    assert {d.FrameOfReferenceUID for d in ds} == {src.meta['FrameOfReferenceUID']}
    assert {d.StudyInstanceUID for d in ds} != {src.meta['StudyInstanceUID']}        # de-identified: a new study
    assert list(ds[0].ImageType) == ['DERIVED', 'SECONDARY', 'AXIAL']
    assert 'thick CT series' in ds[0].DerivationDescription
    for d in ds:                                                                     # each names its source slices
        z, refs = float(d.ImagePositionPatient[2]), [r.ReferencedSOPInstanceUID for r in d.SourceImageSequence]
        assert all(abs(src_z[r] - z) < 5 for r in refs) and 1 <= len(refs) <= 2
        other = d.StudiesContainingOtherReferencedInstancesSequence[0]
        series = other.ReferencedSeriesSequence[0]
        assert (other.StudyInstanceUID, series.SeriesInstanceUID) == (src.meta['StudyInstanceUID'],
                                                                      src.meta['SeriesInstanceUID'])
        assert {r.ReferencedSOPInstanceUID for r in series.ReferencedInstanceSequence} == set(refs)
    assert (ds[0].KVP, ds[0].PatientPosition, ds[0].BodyPartExamined) == (120, 'HFS', 'CHEST')
    assert ds[0].Manufacturer == 'v2v-diffusion'
    kept = pydicom.dcmread(write_dicom_series(thin, tmp_path / 'k', reference_meta=src.meta, copy_patient_tags=True)[0])
    assert kept.StudyInstanceUID == src.meta['StudyInstanceUID']                     # same study: named directly
    assert kept.ReferencedSeriesSequence[0].SeriesInstanceUID == src.meta['SeriesInstanceUID']
    assert not dciodvfy_errors(tmp_path / 'd') and not dciodvfy_errors(tmp_path / 'k')

# ---- 9: de-identification
SHORT = ('PatientSex', 'StudyTime')                  # too short to search the bytes for; checked as elements
IDENTIFYING = [v for k, v in SOURCE_TAGS.items() if k in PATIENT_TAGS and k not in SHORT] + ['DOE', 'JOHN']

def test_default_output_carries_no_source_identity_or_free_text(tmp_path, source):
    src, _ = source
    desc = f"v2v thin from {src.meta['SeriesDescription']}"
    for p in write_dicom_series(src, tmp_path / 'd', reference_meta=src.meta, series_description=desc):
        raw = p.read_bytes()
        assert not [s for s in IDENTIFYING if s.encode() in raw], p
    ds = pydicom.dcmread(sorted((tmp_path / 'd').glob('*.dcm'))[0])
    assert ds.SeriesDescription == 'v2v thin from source series' and ds.PatientIdentityRemoved == 'YES'
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == '113100'
    assert [ds[k].value or '' for k in ('PatientSex', 'StudyDate', 'StudyTime', 'AccessionNumber')] == [''] * 4
    assert (ds.PatientID, ds.PatientName) == ('ANONYMOUS', 'ANONYMOUS')               # a dummy value, no pseudonym
    ps = pydicom.dcmread(write_dicom_series(src, tmp_path / 'p', reference_meta=src.meta, pseudonym='PSEUDO-7')[0])
    assert (ps.PatientID, str(ps.PatientName)) == ('PSEUDO-7', 'PSEUDO-7')
    assert not dciodvfy_errors(tmp_path / 'd')

def test_source_description_cut_short_is_removed_too(tmp_path, source):
    "inference.export_volume cuts descriptions to 64 characters before writing: a cut copy must go as well."
    src, _ = source
    ref = dict(src.meta, SeriesDescription='CT CHEST ABDOMEN PELVIS WITH CONTRAST 5MM DOE JOHN MRN 123456')
    desc = f"v2v-diffusion thin 1 mm from {ref['SeriesDescription']}"[:64]
    ds = pydicom.dcmread(write_dicom_series(src, tmp_path / 'd', reference_meta=ref, series_description=desc)[0])
    assert ds.SeriesDescription == 'v2v-diffusion thin 1 mm from source series'

def test_copy_patient_tags_copies_every_documented_tag(tmp_path, source):
    src, _ = source
    ds = pydicom.dcmread(write_dicom_series(src, tmp_path / 'c', reference_meta=src.meta, copy_patient_tags=True)[0])
    assert len(PATIENT_TAGS) == 11
    for k in PATIENT_TAGS: assert str(ds[k].value) == SOURCE_TAGS[k], k
    assert ds.Manufacturer == 'v2v-diffusion' and 'PatientIdentityRemoved' not in ds
    assert not dciodvfy_errors(tmp_path / 'c')

# ---- 10: the validator itself
def test_validator_is_there_and_catches_errors(source):
    validator()
    _, paths = source
    errors, _ = dciodvfy([edit(paths[0].read_bytes(), ImageType=['DERIVED', 'SECONDARY'], KVP=None)])
    assert any('ImageType' in e for e in errors) and any('KVP' in e for e in errors)
    assert dciodvfy(sample(paths))[0] == []
