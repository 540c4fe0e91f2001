"Helpers that build bad input for the DICOM and dataset tests: zips from (name, bytes) members, DICOM files with tags changed."
import io, zipfile
import pydicom

def make_zip(path, items):
    "Write `items` [(member name, bytes)] to the zip `path` (parents created) and return the path."
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, 'w') as zf:
        for n, d in items: zf.writestr(n, d)
    return path

def edit(data: bytes, **tags) -> bytes:
    "The DICOM file `data` with `tags` set (or deleted where the value is None)."
    ds = pydicom.dcmread(io.BytesIO(data))
    for k, v in tags.items():
        if v is None: delattr(ds, k)
        else: setattr(ds, k, v)
    b = io.BytesIO(); ds.save_as(b); return b.getvalue()

# ---- dciodvfy (Debian's dicom3tools): the DICOM validator every written series goes through
VALIDATOR_HINT = 'apt-get install -y dicom3tools (or `make test`, which installs it where apt is usable)'

def validator():
    "Path of dciodvfy; under CI=true a missing validator fails the test, elsewhere it skips with how to install it."
    import os, shutil, pytest
    if path := shutil.which('dciodvfy'): return path
    if os.environ.get('CI') == 'true': pytest.fail(f"dciodvfy (dicom3tools) is missing; CI needs it: {VALIDATOR_HINT}")
    pytest.skip(f"dciodvfy not installed: {VALIDATOR_HINT}")

def dciodvfy(files) -> tuple[list[str], list[str]]:
    "(errors, warnings) that dciodvfy reports for the DICOM `files` (paths or bytes), each line prefixed by its file."
    import shutil, subprocess, tempfile
    from pathlib import Path
    errors, warns, exe = [], [], shutil.which('dciodvfy')
    with tempfile.TemporaryDirectory() as d:
        for i, f in enumerate(files):
            p = Path(f) if not isinstance(f, bytes) else Path(d) / f'{i}.dcm'
            if isinstance(f, bytes): p.write_bytes(f)
            run = subprocess.run([exe, str(p)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            lines = run.stdout.splitlines()
            errors += [f"{p.name}: {x}" for x in lines if x.startswith('Error')]
            warns += [f"{p.name}: {x}" for x in lines if x.startswith('Warning')]
    return errors, warns

def sample(files: list) -> list:
    "The first, middle and last of `files`: what the tests validate of each series (they differ only per slice)."
    return [files[i] for i in sorted({0, len(files) // 2, len(files) - 1})] if files else []

# ---- geometry: a NIfTI and a DICOM series of the same volume must put its corners at the same place
def assert_corners_agree(img, series, atol: float = 1e-3):
    "The 8 corner voxels of the nibabel image `img` and of the read-back DICOM Volume `series` coincide in space."
    import numpy as np
    from v2v_diffusion.dicom import LPS_TO_RAS
    nz, ny, nx = series.shape
    r, c = series.orientation[:3] * series.spacing[2], series.orientation[3:] * series.spacing[1]
    for k, i, j in np.ndindex(2, 2, 2):
        k, i, j = k * (nz - 1), i * (ny - 1), j * (nx - 1)
        lps = series.positions()[k] + j * r + i * c
        np.testing.assert_allclose((img.affine @ [j, i, k, 1])[:3], LPS_TO_RAS[:3, :3] @ lps, atol=atol)
