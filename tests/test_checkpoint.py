"Checkpoint files: weights_only round trip of real optimizer/scaler state, corruption errors, pruning, auto-resume choice."
import warnings
from pathlib import Path
import pytest
import torch
from torch import nn
from v2v_diffusion.config import get_config, config_to_dict
from v2v_diffusion.checkpoint import *
from v2v_diffusion.vae import VAE
from v2v_diffusion.formulation import build_unet


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
    names = sorted(p.name for p in tmp_path.iterdir() if p.suffix == '.pt')
    assert names == ['checkpoint_best_epoch_3_tiny.pt', 'checkpoint_last_tiny.pt', 'checkpoint_step_3_tiny.pt', 'checkpoint_step_4_tiny.pt']
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != '.pt') == sorted(n + '.sha256' for n in names)
    assert load_checkpoint(tmp_path / 'checkpoint_best_epoch_3_tiny.pt')['step'] == 3


def test_copies_are_independent_and_checked(tmp_path):
    "Issue 15.2: last/step/best are separate files; damage to one is found by its checksum and resume falls back."
    m, opt, scaler = _trained(1)
    save_checkpoint(_ckpt(1, m, opt, scaler), tmp_path, suffix='tiny', keep_last=3)
    paths = save_checkpoint(_ckpt(2, m, opt, scaler), tmp_path, suffix='tiny', keep_last=3, is_best=True)
    assert len({p.stat().st_ino for p in paths.values()}) == 3
    raw = bytearray(paths['last'].read_bytes())
    raw[len(raw) // 2] ^= 0x01                                          # one flipped bit inside the weights
    paths['last'].write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match='checkpoint_last_tiny.pt: sha256 differs'): load_checkpoint(paths['last'])
    assert load_checkpoint(paths['step'])['step'] == 2 and load_checkpoint(paths['best'])['step'] == 2
    with pytest.warns(UserWarning, match='checkpoint_last_tiny.pt.*falling back'):
        assert resolve_resume('auto', tmp_path, 'tiny') in (paths['step'], paths['best'])
    paths['step'].write_bytes(paths['step'].read_bytes()[:-10])             # truncated: size differs from the sidecar
    with pytest.raises(CheckpointError, match='truncated'): load_checkpoint(paths['step'])
    for p in tmp_path.glob('*.pt'): p.write_bytes(b'x' * 10)
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match='none of the 4 checkpoint'):
        resolve_resume('auto', tmp_path, 'tiny')


def test_resume_keeps_to_its_own_run(tmp_path):
    "Issue 15.1: a run id in every checkpoint; auto-resume and pruning only look at the run's own files."
    m, opt, scaler = _trained(1)
    for run, steps in (('old', (10, 20, 30)), ('new', (4, 8, 12))):
        for step in steps:
            save_checkpoint(_ckpt(step, m, opt, scaler) | {'run_id': run}, tmp_path, suffix='tiny', keep_last=1)
    steps = sorted(p.name for p in list_checkpoints(tmp_path, 'tiny', 'step'))
    assert steps == ['checkpoint_step_12_tiny.pt', 'checkpoint_step_30_tiny.pt']    # the new run's step 12 survived
    assert load_checkpoint(resolve_resume('auto', tmp_path, 'tiny', run_id='new'))['step'] == 12
    assert load_checkpoint(resolve_resume('auto', tmp_path, 'tiny', run_id='old'))['step'] == 30


def test_open_run_refuses_another_config(tmp_path):
    "Issue 15.1: a different config in a used folder is refused; force_new keeps the old run under previous/."
    out = tmp_path / 'run'
    rid = open_run(out, get_config('tiny'))
    assert open_run(out, get_config('tiny', ['train.max_steps=40', 'train.resume=auto'])) == rid
    with pytest.raises(RunError, match='different config.*train.lr'):
        open_run(out, get_config('tiny', ['train.lr=0.01']))
    (out / 'metrics.jsonl').write_text('{}\n')
    with pytest.warns(UserWarning, match='moved'):
        new = open_run(out, get_config('tiny', ['train.lr=0.01']), force_new=True)
    assert new != rid and (out / 'previous' / rid / 'metrics.jsonl').is_file() and not (out / 'metrics.jsonl').exists()


def test_nonfinite_weights_are_never_saved(tmp_path):
    "Issue 15.3: a checkpoint with NaN/inf weights or optimizer state is refused and nothing is written."
    m, opt, scaler = _trained(1)
    ck = _ckpt(1, m, opt, scaler)
    ck['models']['vae'] = {k: v * float('inf') if k.endswith('bias') else v for k, v in ck['models']['vae'].items()}
    with pytest.raises(NonFiniteError, match='models.vae.0.bias'): save_checkpoint(ck, tmp_path, suffix='tiny')
    assert list(tmp_path.iterdir()) == []


def test_old_checkpoint_with_removed_settings_loads(tmp_path):
    "A checkpoint whose stored config has settings since removed (infer.use_ema, infer.output_dir) still loads."
    cfg = get_config('tiny')
    old = config_to_dict(cfg)
    old['infer'].update(use_ema=True, output_dir='runs/infer')
    ck = _ckpt(1, *_trained(1)) | dict(config=old, stage='diffusion', models={
        'vae': VAE(cfg.vae).state_dict(), 'unet': build_unet(cfg).state_dict(), 'unet_ema': None})
    path = save_checkpoint(ck, tmp_path, suffix='tiny')['last']
    with pytest.warns(UserWarning, match='infer.use_ema is no longer a setting'):
        pipe = load_pipeline(path)
    assert pipe.cfg == cfg and pipe.stage == 'diffusion'
