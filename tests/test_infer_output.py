"v2v-infer on a case named after its patient: de-identified, linked, valid output; unusable input: one line, exit 2."
import json, zipfile
import pydicom, pytest
import v2v_diffusion.cli as cli
from v2v_diffusion.phantom import phantom_case, write_phantom_case
from test_cli import save_tiny_checkpoint
from dicom_edits import dciodvfy, sample, validator, assert_corners_agree

NAME = 'DOE_JOHN_MRN123456'

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('infer')
    zp = write_phantom_case(tmp / f'{NAME}.zip', phantom_case(3, size=32, n_thin=20), NAME)
    return tmp, save_tiny_checkpoint(tmp / 'run'), zp

def test_default_output_is_de_identified_and_linked(run):
    tmp, ckpt, zp = run
    cli.infer_main(['--checkpoint', str(ckpt), '--input', str(zp), '--out', str(tmp / 'o'), '--steps', '1',
                    '--overlap', '0'])
    source_text = (b'DOE_JOHN', b'PHANTOM', b'THICK 5mm')
    leaks = [p for p in (tmp / 'o').rglob('*') if p.is_file() and any(s in p.read_bytes() for s in source_text)]
    assert leaks == []
    assert 'input' not in json.loads((tmp / 'o' / 'summary.json').read_text())
    files = sorted((tmp / 'o' / 'thin_dicom').glob('*.dcm'))
    with zipfile.ZipFile(zp) as zf: src = pydicom.dcmread(zf.open(next(n for n in zf.namelist() if '/1/' in n)))
    d = pydicom.dcmread(files[0])
    assert d.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert d.SourceImageSequence[0].ReferencedSOPClassUID == src.SOPClassUID
    assert d.SeriesDescription.endswith('from source series') and d.PatientIdentityRemoved == 'YES'
    validator()
    assert dciodvfy(sample(files))[0] == []

def test_copy_patient_tags_keeps_input_in_summary(run):
    tmp, ckpt, zp = run
    s = cli.infer_main(['--checkpoint', str(ckpt), '--input', str(zp), '--out', str(tmp / 'k'), '--steps', '1',
                        '--overlap', '0', '--copy-patient-tags', '--thin-spacing', '2'])
    assert s['case'] == NAME and json.loads((tmp / 'k' / 'summary.json').read_text())['input'] == str(zp)
    d = pydicom.dcmread(next((tmp / 'k' / 'thin_dicom').glob('*.dcm')))
    assert d.PatientID == NAME and d.Manufacturer == 'v2v-diffusion' and 'THICK 5mm' in d.SeriesDescription

def test_unusable_input_is_one_line_and_exit_2(run, tmp_path, capsys):
    _, ckpt, _ = run
    bad = tmp_path / 'bad.zip'
    with zipfile.ZipFile(bad, 'w') as zf: zf.writestr('case/1/IM0001.dcm', b'not a dicom file')
    assert cli.infer_script(['--checkpoint', str(ckpt), '--input', str(bad), '--out', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f'v2v-infer: error: {bad}::case/1/IM0001.dcm: not a DICOM file')
    assert not (tmp_path / 'o').exists()

def test_tilted_input_gives_consistent_nifti_and_dicom(run, tmp_path):
    "A gantry-tilted thick series: de-sheared, inferred, and its thin NIfTI and DICOM agree at the corners."
    import nibabel as nib, numpy as np
    import warnings
    from v2v_diffusion.dicom import read_series
    from test_dicom_real import tilted_series
    _, ckpt, _ = run
    tilted_series(tmp_path / 'in', n=6, size=32)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        cli.infer_main(['--checkpoint', str(ckpt), '--input', str(tmp_path / 'in'), '--out', str(tmp_path / 'o'),
                        '--steps', '1', '--overlap', '0', '--thin-spacing', '2'])
    assert any('gantry tilt of 18.5°' in str(x.message) for x in w)
    img, back = nib.load(tmp_path / 'o' / 'thin.nii.gz'), read_series(tmp_path / 'o' / 'thin_dicom')
    assert_corners_agree(img, back)
    np.testing.assert_allclose(back.spacing[0], 2.0, atol=1e-6)
