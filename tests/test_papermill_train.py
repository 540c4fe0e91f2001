"""Headless training: papermill runs nbs/20_train_papermill.ipynb on the tiny preset and data_samples and leaves
checkpoints, metrics.jsonl, TensorBoard events and validation figures; the output notebook shows the figures."""
import json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPERMILL = Path(sys.executable).parent / 'papermill'


def test_papermill_train(tmp_path):
    out, nb = tmp_path / 'run', tmp_path / 'out.ipynb'
    overrides = [f'data.cache_dir={tmp_path / "cache"}', 'data.batch_size=1', 'train.val_clips=1', 'diffusion.ddim_steps=2',
                 'train.validate_every=2', 'train.checkpoint_every=2', 'train.log_every=1']
    cmd = [str(PAPERMILL), str(ROOT / 'nbs' / '20_train_papermill.ipynb'), str(nb), '-k', 'python3', '--cwd', str(ROOT),
           '-p', 'preset', 'tiny', '-p', 'max_steps', '2', '-p', 'data_root', str(ROOT / 'data_samples'),
           '-p', 'output_dir', str(out), '-y', json.dumps({'overrides': overrides})]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-5000:]
    ck = out / 'checkpoints'
    for name in ('checkpoint_last_vae_tiny.pt', 'checkpoint_last_tiny.pt', 'checkpoint_step_2_tiny.pt'): assert (ck / name).is_file(), name
    assert list(ck.glob('checkpoint_best_epoch_*_tiny.pt'))
    rows = [json.loads(l) for l in (out / 'metrics.jsonl').read_text().splitlines()]
    assert {(r['stage'], r['kind']) for r in rows} == {('vae', 'train'), ('vae', 'val'), ('diffusion', 'train'), ('diffusion', 'val')}
    assert 'psnr_linear' in rows[-1] and list((out / 'tensorboard').iterdir())
    assert {p.name.split('_step')[0] for p in (out / 'figures').glob('*.png')} == {'vae_val', 'diffusion_val'}
    cells = json.loads(nb.read_text())['cells']
    images = [o for c in cells if c['cell_type'] == 'code' for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]
    assert len(images) >= 3            # loss/metric curves + the latest validation figure of each stage
    injected = [c for c in cells if 'injected-parameters' in c.get('metadata', {}).get('tags', [])]
    assert injected and 'preset = "tiny"' in ''.join(injected[0]['source'])
