"Config round-trips and validation beyond the notebook's checks."
import pytest
from v2v_diffusion.config import *

@pytest.mark.parametrize('preset', list(PRESETS))
def test_preset_yaml_roundtrip(tmp_path, preset):
    cfg = get_config(preset)
    assert load_config(save_config(cfg, tmp_path / 'c.yaml')) == cfg

@pytest.mark.parametrize('override,msg', [
    ('data.width=12', 'data.width=12'), ('unet.num_heads=3', 'unet.num_heads=3'),
    ('unet.attention_levels=[7]', 'unet.attention_levels'), ('diffusion.prediction=x0', "diffusion.prediction='x0'"),
    ('train.grad_accum=0', 'train.grad_accum=0'), ('vae.temporal_kernel=2', 'vae.temporal_kernel=2'),
    ('vae.inplane_levels=5', 'vae.inplane_levels=5: valid: 0..4'), ('vae.inplane_levels=-1', 'vae.inplane_levels=-1'),
    ('data.n_frames=two', 'config.data.n_frames'), ('nosection.x=1', 'unknown key config.nosection')])
def test_bad_values_are_named(override, msg):
    with pytest.raises(ConfigError, match=msg.replace('[', r'\[')): get_config('tiny', [override])

def test_seed_values():
    c = get_config('v100')
    assert (c.data.n_frames, c.data.height, c.data.batch_size, c.train.grad_accum) == (24, 256, 2, 16)
    assert (c.train.warmup_steps, c.train.min_lr, c.train.keep_last, c.diffusion.ddim_steps) == (1000, 1e-6, 1, 50)
    assert (c.data.val_frac, c.data.test_frac, c.data.split_seed) == (0.15, 0.10, 42)
    assert (c.vae.temporal_kernel, c.vae.inplane_levels, get_config('a100').vae.inplane_levels) == (3, 1, 1)
