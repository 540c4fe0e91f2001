"""Issue 15, items 4-8: one bad case never stops the good ones, silent cache corruption is an error naming the file
at read time, memory stays bounded, and the cache's files are written atomically by one v2v-prepare at a time."""
import io, os, shutil, time, zipfile
from pathlib import Path
import pydicom, pytest
from dicom_edits import make_zip, edit
from locks import lock_held_elsewhere
import v2v_diffusion.dicom as dicom
from v2v_diffusion.checkpoint import RunError, atomic_write_text
from v2v_diffusion.data import find_cases, make_splits, prepare_dataset
from v2v_diffusion.config import DataConfig

ROOT = Path(__file__).resolve().parents[1] / 'data_samples'


def _members(zp):
    with zipfile.ZipFile(zp) as zf: return [(i.filename, zf.read(i)) for i in zf.infolist()]


def _encrypted(path: Path):
    "Mark every entry of the zip `path` as encrypted (general purpose flag bit 0), as a password-protected zip has it."
    raw = bytearray(path.read_bytes())
    for sig, off in ((b'PK\x03\x04', 6), (b'PK\x01\x02', 8)):
        i = raw.find(sig)
        while i >= 0:
            raw[i + off] |= 1
            i = raw.find(sig, i + 4)
    path.write_bytes(bytes(raw))


@pytest.fixture(scope='module')
def src():
    zp = sorted(ROOT.glob('APE/*.zip'))[0]
    return zp, _members(zp)


def test_bad_cases_become_skipped_cases(tmp_path, src):
    "Item 6: a password-protected zip, a declared 65535² image, one id in both categories, a zip next to its folder."
    zp, m = src
    root = tmp_path / 'data'
    (root / 'APE').mkdir(parents=True)
    (root / 'non APE').mkdir()
    shutil.copy(zp, root / 'APE' / 'good.zip')
    make_zip(root / 'APE' / 'locked.zip', m)
    _encrypted(root / 'APE' / 'locked.zip')
    make_zip(root / 'APE' / 'huge.zip', m[:5] + [(m[5][0], edit(m[5][1], Rows=65535, Columns=65535))] + m[6:])
    shutil.copy(zp, root / 'APE' / 'both.zip')
    shutil.copy(zp, root / 'non APE' / 'both.zip')
    shutil.copy(zp, root / 'APE' / 'twin.zip')
    with zipfile.ZipFile(zp) as zf: zf.extractall(root / 'APE' / 'tmp')
    (root / 'APE' / 'tmp' / zp.stem).rename(root / 'APE' / 'twin')
    (root / 'APE' / 'tmp').rmdir()
    t0 = time.time()
    with pytest.warns(UserWarning, match='found 2 times'):
        s = prepare_dataset(root, tmp_path / 'cache', workers=0, progress=False)
    assert time.time() - t0 < 30 and [r['case_id'] for r in s['cases']] == ['good']
    why = {(r['case_id'], r['category'], Path(r['path']).name): r['error'] for r in s['skipped']}
    assert 'encrypted (a password-protected zip)' in why['locked', 'APE', 'locked.zip']
    assert f'{m[5][0]}: declares 65535 x 65535 pixels' in why['huge', 'APE', 'huge.zip']
    assert "case id 'both' found 2 times" in why['both', 'APE', 'both.zip'] and ('both', 'non APE', 'both.zip') in why
    assert "case id 'twin' found 2 times" in why['twin', 'APE', 'twin.zip'] and ('twin', 'APE', 'twin') in why
    assert (tmp_path / 'cache' / 'summary.json').is_file() and s['splits']['train'] == ['good']


def _with(m, k, **tags):
    return m[:k] + [(m[k][0], edit(m[k][1], **tags))] + m[k + 1:]


def test_silent_corruption_is_an_error_naming_the_file(tmp_path, src):
    "Item 7: each of these used to be cached as garbage (or crash later); now the case is skipped naming the file."
    zp, m = src
    k = 7
    longer = pydicom.dcmread(io.BytesIO(m[k][1]))
    longer.decompress()                                                                 # the shipped data are RLE
    longer.PixelData = longer.PixelData + bytes(2 * longer.Columns)                     # one row too many
    buf = io.BytesIO()
    longer.save_as(buf)
    cases = {'slope_nan': (_with(m, k, RescaleSlope='nan'), 'must be finite'),
             'slope_inf': (_with(m, k, RescaleSlope='inf'), 'must be finite'),
             'slope_huge': (_with(m, k, RescaleSlope='1e30'), 'outside ±1e6 HU'),
             'slope_zero': (_with(m, k, RescaleSlope='0'), 'RescaleSlope is 0'),
             'longer': (m[:k] + [(m[k][0], buf.getvalue())] + m[k + 1:], 'bytes of pixel data for Rows x Columns'),
             'cut': (m[:k] + [(m[k][0], m[k][1][:500])] + m[k + 1:], 'no pixel data (no Modality): truncated'),
             'rows0': (_with(m, k, Rows=0), 'Rows x Columns = 0 x'),
             'spacing0': (_with(m, k, PixelSpacing=[0, 0]), 'PixelSpacing [0.0, 0.0] must be > 0')}
    for name, (members, _) in cases.items(): make_zip(tmp_path / 'data' / 'APE' / f'{name}.zip', members)
    s = prepare_dataset(tmp_path / 'data', tmp_path / 'cache', workers=0, progress=False)
    why = {r['case_id']: r['error'] for r in s['skipped']}
    assert s['cases'] == [] and sorted(why) == sorted(cases)
    for name, (_, msg) in cases.items(): assert m[k][0] in why[name] and msg in why[name], (name, why[name])


def test_memory_bounds(tmp_path, src, monkeypatch):
    "Item 8: a deflated file that inflates past the member cap, and an extracted folder past the archive cap."
    zp, m = src
    ds = pydicom.dcmread(io.BytesIO(m[3][1]))
    ds.decompress()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    make_zip(tmp_path / 'data' / 'APE' / 'deflated.zip', m[:3] + [(m[3][0], buf.getvalue())] + m[4:])
    with zipfile.ZipFile(zp) as zf: zf.extractall(tmp_path / 'data' / 'non APE')
    cap = max(len(d) for _, d in m) + 1000                          # every file passes as stored, not the inflated one
    assert len(buf.getvalue()) < cap < len(ds.PixelData)
    monkeypatch.setattr(dicom, 'MAX_MEMBER_BYTES', cap)
    monkeypatch.setattr(dicom, 'MAX_ARCHIVE_BYTES', sum(len(d) for _, d in m) // 2)
    s = prepare_dataset(tmp_path / 'data', tmp_path / 'cache', workers=0, progress=False)
    why = {r['case_id']: r['error'] for r in s['skipped']}
    assert 'deflated data inflate to more than' in why['deflated'] and m[3][0] in why['deflated']
    assert 'bytes of files (limit' in why[zp.stem]


def test_one_prepare_per_cache_and_atomic_files(tmp_path, src, monkeypatch):
    "Items 4 and 5: a second v2v-prepare on a cache is refused; a failed write (full disk) leaves the old file whole."
    cache = tmp_path / 'cache'
    with lock_held_elsewhere(cache, 'v2v-prepare'), pytest.raises(RunError, match='is in use by another'):
        prepare_dataset(ROOT, cache, workers=0, progress=False)
    sp = make_splits(find_cases(ROOT), DataConfig(cache_dir=str(cache)))
    before = (cache / 'splits.json').read_bytes()
    def full_disk(fd): raise OSError(28, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', full_disk)
    with pytest.raises(OSError, match='No space'): atomic_write_text(cache / 'splits.json', '{}')
    monkeypatch.undo()
    assert (cache / 'splits.json').read_bytes() == before and not list(cache.glob('*.tmp'))
    assert make_splits(find_cases(ROOT), DataConfig(cache_dir=str(cache))) == sp
