"""Issue 15, items 9 and 10: every numeric config field has a range, YAML 1.2 floats, no YAML aliases; CLI errors
are one line on stderr with exit 2, checked before the work."""
import subprocess, sys, time
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
