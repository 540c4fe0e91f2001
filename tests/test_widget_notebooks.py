"""Notebooks 21 and 22 run headless under papermill on data_samples with a tiny checkpoint made here.

The checkpoint holds the `tiny` preset's models with *random weights*, written by `checkpoint.save_checkpoint`
and read back by `checkpoint.load_pipeline` inside the notebooks: this checks the notebooks' plumbing
(parameters, checkpoint loading, case loading, VAE reconstruction, DDIM sampling over several seeds, the viewer's
static fallback, the files written), not image quality — training a model is out of a test's budget.
"""
import base64, json, os, re, subprocess, sys
from pathlib import Path
import pytest
import torch

pm = pytest.importorskip('papermill')
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / 'data_samples'


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory) -> Path:
    from v2v_diffusion.config import get_config, config_to_dict
    from v2v_diffusion.checkpoint import save_checkpoint, code_version
    from v2v_diffusion.vae import VAE
    from v2v_diffusion.formulation import build_unet
    cfg = get_config('tiny')
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae, unet = VAE(cfg.vae), build_unet(cfg)
    ckpt = dict(config=config_to_dict(cfg), stage='diffusion',
                models=dict(vae=vae.state_dict(), unet=unet.state_dict(), unet_ema=unet.state_dict()),
                scaling_factor=1.0, optimizer=None, lr_scheduler=None, scaler=None, step=1, epoch=0, rng=None,
                sampler=None, best_metric=None, code_version=code_version())
    paths = save_checkpoint(ckpt, tmp_path_factory.mktemp('run') / 'checkpoints', suffix='tiny')
    return Path(paths['last'])


def run_notebook(name: str, out_dir: Path, monkeypatch, **params) -> dict:
    "Execute nbs/<name> with papermill from the project root (one torch thread: CI runs on 2 shared cores)."
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    out = out_dir / f'out_{name}'
    pm.execute_notebook(str(ROOT / 'nbs' / name), str(out), parameters=params, cwd=str(ROOT),
                        kernel_name='python3', progress_bar=False, log_output=False)
    return json.loads(out.read_text())


def outputs(nb: dict, mime: str) -> list:
    return [o['data'][mime] for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', [])
            if mime in o.get('data', {})]


def check_common(nb: dict, out_dir: Path, stem: str, n_rows: int):
    views = outputs(nb, 'application/vnd.jupyter.widget-view+json')
    assert views and 'model_id' in views[0], 'the viewer widget was displayed'
    pngs = outputs(nb, 'image/png')
    assert pngs and len(base64.b64decode(pngs[0])) > 10_000, 'static fallback figure of the view'
    assert (out_dir / f'{stem}.png').stat().st_size > 10_000
    table = (out_dir / f'{stem}.md').read_text()
    assert 'UNTRAINED' not in table and 'stage diffusion' in table
    assert len([l for l in table.splitlines() if l.startswith('| ') and 'volume' not in l]) == n_rows


def test_compare_reconstructions(tiny_checkpoint, tmp_path, monkeypatch):
    nb = run_notebook('21_compare_reconstructions.ipynb', tmp_path, monkeypatch, checkpoint=str(tiny_checkpoint),
                      data_root=str(DATA), case_id='phantom_001', output_dir=str(tmp_path / 'viewer'))
    check_common(nb, tmp_path / 'viewer', 'phantom_001_reconstruction', n_rows=2)
    static_html_shows_the_figures(tmp_path / 'out_21_compare_reconstructions.ipynb')


def static_html_shows_the_figures(executed: Path):
    "The visualization Job's HTML export (k8s/bin/static_html.py) shows the viewer's PNG, with no widget to fetch."
    config = str(ROOT / 'k8s/bin/static_html.py')
    subprocess.run([sys.executable, '-m', 'jupyter', 'nbconvert', '--config', config, '--to', 'html', str(executed)],
                   check=True, capture_output=True)
    page = executed.with_suffix('.html').read_text()
    pngs = re.findall(r'<img[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert pngs and max(len(base64.b64decode(p)) for p in pngs) > 10_000, 'the viewer figure is in the page'
    assert 'widget-view+json' not in page and 'widget-state+json' not in page and 'html-manager' not in page


def test_compare_samples(tiny_checkpoint, tmp_path, monkeypatch):
    nb = run_notebook('22_compare_samples.ipynb', tmp_path, monkeypatch, checkpoint=str(tiny_checkpoint.parent.parent),
                      data_root=str(DATA), case_id='phantom_002', output_dir=str(tmp_path / 'viewer'), seeds=[3, 4])
    check_common(nb, tmp_path / 'viewer', 'phantom_002_samples', n_rows=6)   # thick, mean, 2 seeds, linear, cubic
    table = (tmp_path / 'viewer' / 'phantom_002_samples.md').read_text()
    assert 'generated (seed 3)' in table and 'generated (seed 4)' in table and 'cubic interpolation' in table
    seeds = [m for m in map(''.join, outputs(nb, 'text/markdown')) if 'to generated (seed 3)' in m]
    assert seeds and 'generated (seed 4)' in seeds[0], 'the table of differences between seeds is shown'
    assert float(seeds[0].splitlines()[-1].split('|')[2]) > 0, 'two seeds, two different samples'

