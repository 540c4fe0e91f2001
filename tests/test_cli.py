"Console scripts: every entry point resolves; v2v-infer and v2v-eval run end to end on an untrained tiny checkpoint."
import json
from pathlib import Path
import numpy as np
import pydicom, pytest, torch
import v2v_diffusion.cli as cli
from v2v_diffusion.config import get_config, config_to_dict
from v2v_diffusion.checkpoint import CHECKPOINT_KEYS, save_checkpoint, code_version
from v2v_diffusion.vae import VAE
from v2v_diffusion.formulation import build_unet
from v2v_diffusion.phantom import phantom_case, write_phantom_case, CATEGORIES

def save_tiny_checkpoint(run_dir) -> Path:
    "An untrained tiny diffusion-stage checkpoint (2 DDIM steps) in `run_dir/checkpoints`."
    cfg = get_config('tiny', ['diffusion.ddim_steps=2']); torch.manual_seed(0)
    vae, unet = VAE(cfg.vae), build_unet(cfg)
    ck = {k: None for k in CHECKPOINT_KEYS} | dict(
        config=config_to_dict(cfg), stage='diffusion', scaling_factor=1.0, step=1, epoch=0, best_metric=0.0,
        models=dict(vae=vae.state_dict(), unet=unet.state_dict(), unet_ema=unet.state_dict()), code_version=code_version())
    return save_checkpoint(ck, Path(run_dir) / 'checkpoints', suffix=cfg.train.suffix)['last']

@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('cli')
    ckpt = save_tiny_checkpoint(tmp / 'run')
    for i in range(2):
        write_phantom_case(tmp / 'data' / CATEGORIES[i] / f'case{i}.zip', phantom_case(10 + i, ape=i == 0, size=32, n_thin=20), f'case{i}')
    return tmp, ckpt

def test_every_entry_point_is_callable():
    for name in ('prepare_main', 'train_main', 'infer_main', 'eval_main', 'phantom_main', 'bench_main', 'demo_main'):
        assert callable(getattr(cli, name)), name

def test_help_exits_cleanly(capsys):
    for main in (cli.infer_main, cli.eval_main, cli.demo_main):
        with pytest.raises(SystemExit) as e: main(['--help'])
        assert e.value.code == 0
    assert '--copy-patient-tags' in capsys.readouterr().out

def test_infer_zip(setup):
    tmp, ckpt = setup
    s = cli.infer_main(['--checkpoint', str(tmp / 'run'), '--input', str(tmp / 'data' / 'APE' / 'case0.zip'), '--out', str(tmp / 'o1'), '--seed', '1'])
    assert s['thin_shape'] == [20, 32, 32] and s['thin_spacing_mm'] == 1.0           # on the ground truth's grid
    assert set(s['metrics']) == {'nearest', 'linear', 'cubic', 'nearest_dc', 'linear_dc', 'cubic_dc', 'model'}
    assert len(list((tmp / 'o1' / 'thin_dicom').glob('*.dcm'))) == 20 and (tmp / 'o1' / 'thin.nii.gz').exists()
    assert (tmp / 'o1' / 'thin_std.nii.gz').exists() and s['samples'] == 2
    assert not {'case', 'input'} & set(json.loads((tmp / 'o1' / 'summary.json').read_text()))   # de-identified

def test_infer_case_of_dataset_with_spacing_and_tags(setup):
    tmp, ckpt = setup
    s = cli.infer_main(['--checkpoint', str(ckpt), '--input', str(tmp / 'data'), '--case', 'case1', '--out', str(tmp / 'o2'),
                        '--thin-spacing', '2.5', '--steps', '1', '--overlap', '0', '--copy-patient-tags'])
    assert s['thin_spacing_mm'] == 2.5 and 'metrics' not in s
    d = pydicom.dcmread(next((tmp / 'o2' / 'thin_dicom').glob('*.dcm')))
    assert float(d.SliceThickness) == 2.5 and d.PatientID != 'ANONYMOUS'
    with pytest.raises(ValueError, match="no case 'nope'"):
        cli.infer_main(['--checkpoint', str(ckpt), '--input', str(tmp / 'data'), '--case', 'nope', '--out', str(tmp / 'o3')])

def test_eval(setup):
    tmp, ckpt = setup
    r = cli.eval_main(['--checkpoint', str(ckpt), '--root', str(tmp / 'data'), '--split', 'all', '--out', str(tmp / 'ev'),
                       '--cache-dir', str(tmp / 'cache'), '--max-cases', '2'])
    md = (tmp / 'ev' / 'report.md').read_text()
    assert 'does not beat' in md or 'beats the best baseline' in md
    assert '| cubic interp. |' in md and (tmp / 'ev' / 'report.html').exists() and len(list((tmp / 'ev' / 'figures').glob('*.png'))) == 4
    js = json.loads((tmp / 'ev' / 'metrics.json').read_text())
    assert set(js['cases']) == {'case0', 'case1'} and np.isfinite(js['summary']['linear']['psnr'])
