"Slow, optional: the viewer notebook runs in JupyterLab in headless Chromium and its widget reacts (`make browser-test`)."
import importlib.util, os, sys
from pathlib import Path
import numpy as np
import pytest

pytestmark = pytest.mark.slow
sys.path.insert(0, str(Path(__file__).parent))


@pytest.mark.skipif(importlib.util.find_spec('playwright') is None, reason='pip install playwright (the Python package only)')
@pytest.mark.skipif(not os.path.exists(os.environ.get('V2V_CHROMIUM', '/usr/bin/chromium')), reason='apt-get install -y chromium chromium-driver')
def test_viewer_in_headless_chromium(tmp_path):
    from browser_check import main
    from v2v_diffusion.viewer import from_png
    res = main(['--out', str(tmp_path / 'viewer.png'), '--shots', str(tmp_path / 'shots')])
    assert res['label_before'] != res['label_after'] and 'z -183.0 mm' in res['label_after']
    assert res['label_played'] != res['label_after']                    # Play moved z
    img = from_png((tmp_path / 'viewer.png').read_bytes())
    assert img.shape[0] > 400 and img.shape[1] > 800
    assert (np.abs(img[..., 0].astype(int) - img[..., 2]) > 80).mean() > 0.005   # red/blue difference maps are on screen


DEMO = Path(__file__).resolve().parents[2] / 'runs' / 'demo' / 'train' / 'checkpoints'

@pytest.mark.skipif(importlib.util.find_spec('playwright') is None, reason='pip install playwright (the Python package only)')
@pytest.mark.skipif(not os.path.exists(os.environ.get('V2V_CHROMIUM', '/usr/bin/chromium')), reason='apt-get install -y chromium chromium-driver')
@pytest.mark.skipif(not any(DEMO.glob('checkpoint_*_tiny.pt')), reason='run `make demo` first: notebooks 21/22 open its run')
@pytest.mark.parametrize('nb', ['21_compare_reconstructions', '22_compare_samples'])
def test_demo_notebooks_in_headless_chromium(tmp_path, nb):
    "Notebooks 21/22 open the demo run (not UNTRAINED); the slider and the window preset change what is shown."
    from browser_check import main
    res = main(['--notebook', f'nbs/{nb}.ipynb', '--out', str(tmp_path / f'{nb}.png'), '--shots', str(tmp_path / 'shots')])
    assert 'UNTRAINED' not in res['title'] and 'demo_' in res['title']
    assert res['label_before'] != res['label_after'] and 'z ' in res['label_after'] and ' mm' in res['label_after']
    assert res['center'] == '-600'                                           # the lung preset's centre
    assert from_png_shape(tmp_path / f'{nb}.png')[1] > 800
    if nb.startswith('22'): assert res['seed_difference'] > 0.01, 'seed 1 differs from seed 0 where it is coloured'


def from_png_shape(path: Path) -> tuple:
    from v2v_diffusion.viewer import from_png
    return from_png(path.read_bytes()).shape
