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
