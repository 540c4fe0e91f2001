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
