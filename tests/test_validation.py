"""Issue 15, items 9 and 10: every numeric config field has a range, YAML 1.2 floats, no YAML aliases; CLI errors
are one line on stderr with exit 2, checked before the work."""
import json, subprocess, sys, time
from pathlib import Path
import pytest
from v2v_diffusion.config import ConfigError, RANGES, get_config, load_config

ROOT = Path(__file__).resolve().parents[1]

INVALID = ['train.log_every=0', 'train.val_clips=0', 'train.lr=.nan', 'train.lr=0', 'train.lr=-1', 'train.min_lr=-1',
           'train.max_grad_norm=0', 'train.grad_accum=0', 'train.warmup_steps=-1', 'train.weight_decay=-0.1',
           'train.ema_decay=1.01', 'train.checkpoint_every=0', 'train.validate_every=-5', 'train.keep_last=0',
           'train.early_stop_patience=-1', 'train.max_steps=0', 'train.vae_max_steps=-3', 'train.seed=-1',
           'data.window_width=.nan', 'data.window_width=0', 'data.window_center=.inf', 'data.batch_size=0',
           'data.num_workers=-1', 'data.val_frac=-0.1', 'data.test_frac=1.0', 'data.n_frames=0',
           'vae.kl_weight=-1', 'vae.scaling_factor=0', 'unet.dropout=1.0', 'diffusion.ddim_eta=-0.5',
           'diffusion.min_snr_gamma=.nan', 'infer.batch_size=0', 'infer.overlap=-1']


@pytest.mark.parametrize('override', INVALID)
def test_invalid_numbers_are_refused(override):
    "Item 9: NaN, negatives, zeros of every kind are a ConfigError naming the key (not a crash later)."
    with pytest.raises(ConfigError, match=override.split('=')[0].replace('.', r'\.')):
        get_config('tiny', [override])


def test_every_numeric_field_has_a_range():
    cfg = get_config('v100')
    numeric = [f'{s}.{k}' for s, sec in vars(cfg).items() for k, v in vars(sec).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert sorted(set(numeric) - set(RANGES)) == ['data.window_center']          # any finite HU value is a centre


def test_yaml_floats_presets_and_aliases(tmp_path):
    "Item 9: `lr: 3e-4` is a float; `preset: bogus` a clear error; item 8: an alias bomb is refused at once, briefly."
    (tmp_path / 'a.yaml').write_text('preset: tiny\ntrain:\n  lr: 3e-4\n  min_lr: 1e-6\n')
    assert load_config(tmp_path / 'a.yaml').train.lr == 3e-4
    (tmp_path / 'b.yaml').write_text('preset: bogus\n')
    with pytest.raises(ConfigError, match="unknown preset 'bogus'"): load_config(tmp_path / 'b.yaml')
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    bomb += ''.join(f'{c}: &{c} [{",".join([f"*{p}"] * 9)}]\n' for p, c in zip('abcdefgh', 'bcdefghi'))
    (tmp_path / 'bomb.yaml').write_text(f'train:\n  suffix: x\n{bomb}')
    t0 = time.time()
    with pytest.raises(ConfigError, match='aliases') as e: load_config(tmp_path / 'bomb.yaml')
    assert time.time() - t0 < 1 and len(str(e.value)) < 300 and len(bomb) < 700


def test_cli_user_errors_are_one_line_exit_2(tmp_path, capsys):
    "Item 10: bad key, bad value, missing path, unwritable output: one line on stderr, exit 2; --debug: the traceback."
    from v2v_diffusion.cli import train_script
    (tmp_path / 'file').write_text('x')
    cases = [(['--preset', 'tiny', '--set', 'train.lr=-1'], 'train.lr=-1.0: must be > 0'),
             (['--config', str(tmp_path / 'missing.yaml')], 'missing.yaml: cannot read the config'),
             (['--preset', 'tiny', '--output-dir', str(tmp_path / 'file' / 'run')], 'file/run')]
    for args, msg in cases:
        assert train_script(args) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and msg in err and err.startswith('v2v-train: error: '), (args, err)
    code = 'import sys; from v2v_diffusion.cli import train_script; sys.exit(train_script())'
    r = subprocess.run([sys.executable, '-c', code, '--preset', 'tiny', '--set', 'train.nope=1'],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        'v2v-train: error: unknown key config.train.nope (valid: ' + r.stderr.split('(valid: ')[1].strip()], r.stderr
    r = subprocess.run([sys.executable, '-c', code, '--preset', 'tiny', '--set', 'train.nope=1', '--debug'],
                       capture_output=True, text=True)
    assert r.returncode == 1 and 'Traceback' in r.stderr


@pytest.fixture(scope='module')
def tiny_setup(tmp_path_factory):
    from test_cli import save_tiny_checkpoint
    from v2v_diffusion.phantom import phantom_case, write_phantom_case
    tmp = tmp_path_factory.mktemp('v')
    ckpt = save_tiny_checkpoint(tmp / 'run')
    write_phantom_case(tmp / 'a.zip', phantom_case(3, ape=True, size=32, n_thin=20), 'a')
    write_phantom_case(tmp / 'b.zip', phantom_case(4, ape=True, size=32, n_thin=10), 'b')
    return tmp, ckpt


def test_infer_checks_device_and_out_first_and_never_mixes(tiny_setup, capsys, monkeypatch):
    "Items 4 and 10: --device cuda without CUDA says so; a used --out is replaced whole, a busy one refused."
    import torch
    import v2v_diffusion.cli as cli
    tmp, ckpt = tiny_setup
    base = ['--checkpoint', str(ckpt), '--steps', '1', '--overlap', '0']
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert cli.infer_script(base + ['--input', str(tmp / 'a.zip'), '--out', str(tmp / 'o'), '--device', 'cuda']) == 2
    assert 'CUDA is not available on this machine' in capsys.readouterr().err and not (tmp / 'o').exists()
    monkeypatch.undo()
    cli.infer_main(base + ['--input', str(tmp / 'a.zip'), '--out', str(tmp / 'o')])
    assert len(list((tmp / 'o' / 'thin_dicom').glob('*.dcm'))) == 20
    cli.infer_main(base + ['--input', str(tmp / 'b.zip'), '--out', str(tmp / 'o')])     # a shorter series: no leftovers
    assert len(list((tmp / 'o' / 'thin_dicom').glob('*.dcm'))) == 10
    assert json.loads((tmp / 'o' / 'summary.json').read_text())['thin_shape'][0] == 10
    assert [p.name for p in tmp.glob('.o.*')] == ['.o.lock']
    code = ("import sys\nfrom v2v_diffusion.checkpoint import folder_lock\n"
            f"with folder_lock({str(tmp)!r}, 'v2v-infer', name='.o.lock'):\n"
            "    print('locked', flush=True)\n    sys.stdin.read()")
    p = subprocess.Popen([sys.executable, '-c', code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == 'locked'
        assert cli.infer_script(base + ['--input', str(tmp / 'a.zip'), '--out', str(tmp / 'o')]) == 2
        assert 'is in use by another v2v-infer' in capsys.readouterr().err
    finally:
        p.communicate('')
    assert json.loads((tmp / 'o' / 'summary.json').read_text())['thin_shape'][0] == 10      # the refused run changed nothing
