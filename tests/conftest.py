"Every DICOM series the tests write goes through dciodvfy (first, middle and last file): errors fail the test."
import shutil
import pytest
import v2v_diffusion.dicom, v2v_diffusion.phantom    # now: phantom binds the writer at import, before any patch
from dicom_edits import dciodvfy, sample

_WARNINGS: set = set()

@pytest.fixture(autouse=True)
def _validate_written_dicom(monkeypatch):
    "Wrap `dicom_series_bytes`, the one writer, so that each series it makes is validated (when dciodvfy is there)."
    if not shutil.which('dciodvfy'):
        yield
        return
    errors, original = [], v2v_diffusion.dicom.dicom_series_bytes
    def checked(*args, **kwargs):
        out = original(*args, **kwargs)
        err, warn = dciodvfy([b for _, b in sample(out)])
        errors.extend(err)
        _WARNINGS.update(w.split(': ', 1)[1] for w in warn)
        return out
    for mod in (v2v_diffusion.dicom, v2v_diffusion.phantom): monkeypatch.setattr(mod, 'dicom_series_bytes', checked)
    yield
    if errors: pytest.fail('dciodvfy errors in written DICOM:\n' + '\n'.join(sorted(set(errors))))

def pytest_terminal_summary(terminalreporter):
    "List the distinct dciodvfy warnings of the written series."
    if _WARNINGS:
        terminalreporter.write_sep('-', f'dciodvfy warnings on written DICOM ({len(_WARNINGS)} distinct)')
        for w in sorted(_WARNINGS): terminalreporter.write_line(w)
