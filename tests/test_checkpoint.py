"Checkpoint files: weights_only round trip of real optimizer/scaler state, corruption errors, pruning, auto-resume choice."
import warnings
from pathlib import Path
import pytest
import torch
from torch import nn
from v2v_diffusion.config import get_config, config_to_dict
from v2v_diffusion.checkpoint import *


def _ckpt(step, model, opt, scaler):
    return dict(config=config_to_dict(get_config('tiny')), stage='vae', models={'vae': model.state_dict(), 'unet': None, 'unet_ema': None},
                scaling_factor=0.5, optimizer=opt.state_dict(), lr_scheduler={'lr': 1e-3}, scaler=scaler.state_dict(),
                step=step, epoch=0, rng=rng_state(), sampler={'epoch': 0, 'batches': step}, best_metric=float('-inf'),
                code_version=code_version())


def _trained(steps=2):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    for _ in range(steps):
        m(torch.randn(3, 4)).square().mean().backward(); opt.step(); opt.zero_grad()
    return m, opt, scaler


def test_roundtrip_weights_only(tmp_path):
    m, opt, scaler = _trained()
    paths = save_checkpoint(_ckpt(2, m, opt, scaler), tmp_path, suffix='vae_tiny')
    ck = load_checkpoint(paths['last'])            # weights_only=True inside
    m2 = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)); m2.load_state_dict(ck['models']['vae'])
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-2); opt2.load_state_dict(ck['optimizer'])
    for a, b in zip(m.parameters(), m2.parameters()): assert torch.equal(a, b)
    st1, st2 = opt.state_dict()['state'], opt2.state_dict()['state']
    for k in st1:
        for name in ('exp_avg', 'exp_avg_sq', 'step'): assert torch.equal(st1[k][name], st2[k][name])
    set_rng_state(ck['rng'])


@pytest.mark.parametrize('damage', ['truncate', 'garbage', 'empty'])
def test_corrupted_checkpoint_names_file(tmp_path, damage):
    m, opt, scaler = _trained(1)
    p = save_checkpoint(_ckpt(1, m, opt, scaler), tmp_path, suffix='tiny')['step']
    raw = p.read_bytes()
    bad = tmp_path / 'checkpoint_step_2_tiny.pt'
    bad.write_bytes({'truncate': raw[: len(raw) * 2 // 3], 'garbage': b'\x00' * 1000, 'empty': b''}[damage])
    with pytest.raises(CheckpointError, match='checkpoint_step_2_tiny.pt'): load_checkpoint(bad)
    with pytest.warns(UserWarning, match='checkpoint_step_2_tiny.pt'):
        assert latest_checkpoint(tmp_path, 'tiny').name in ('checkpoint_step_1_tiny.pt', 'checkpoint_last_tiny.pt')


def test_suffixes_do_not_mix(tmp_path):
    m, opt, scaler = _trained(1)
    save_checkpoint(_ckpt(5, m, opt, scaler), tmp_path, suffix='vae_tiny')
    assert latest_checkpoint(tmp_path, 'tiny') is None
    save_checkpoint(_ckpt(3, m, opt, scaler), tmp_path, suffix='tiny')
    assert load_checkpoint(latest_checkpoint(tmp_path, 'tiny'))['step'] == 3
    assert find_pipeline_checkpoint(tmp_path).name == 'checkpoint_last_tiny.pt'


def test_keep_last_and_best(tmp_path):
    m, opt, scaler = _trained(1)
    for step, best in [(1, True), (2, False), (3, True), (4, False)]:
        save_checkpoint(_ckpt(step, m, opt, scaler) | {'epoch': step}, tmp_path, suffix='tiny', keep_last=2, is_best=best)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ['checkpoint_best_epoch_3_tiny.pt', 'checkpoint_last_tiny.pt', 'checkpoint_step_3_tiny.pt', 'checkpoint_step_4_tiny.pt']
    assert load_checkpoint(tmp_path / 'checkpoint_best_epoch_3_tiny.pt')['step'] == 3
