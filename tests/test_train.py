"""Training on the tiny preset and data_samples: exact resume (SIGTERM, and a kill between checkpoint writes with
broken leftovers), stage 1 → stage 2 hand-over, corrupted checkpoints, the CLI."""
import os, signal, warnings
from pathlib import Path
import pytest
import torch
import v2v_diffusion.train as tr
from v2v_diffusion.checkpoint import CheckpointError, load_checkpoint, load_pipeline
from v2v_diffusion.runtime import cpu_bf16_native

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
    "One decoded-data cache for the whole module (decoding the zips is the slow part)."
    return tmp_path_factory.mktemp('cache')


def cfg_for(out, cache, stage='both', vae_steps=1, steps=3, extra=(), **train):
    sets = [f'data.cache_dir={cache}', 'data.batch_size=1', f'train.vae_max_steps={vae_steps}', f'train.max_steps={steps}',
            'train.checkpoint_every=2', 'train.validate_every=100', 'train.log_every=1', 'diffusion.ddim_steps=2', 'train.val_clips=1']
    sets += [f'train.{k}={v}' for k, v in train.items()] + list(extra)
    return tr.make_config('tiny', sets, data_root=ROOT / 'data_samples', output_dir=out, stage=stage)


class SimulatedKill(Exception): pass


def interrupt_at(monkeypatch, n, how):
    "Make the n-th call of train_step end the run: SIGTERM during that step, or a crash before it."
    calls, orig = {'n': 0}, tr.train_step
    def step(*a, **k):
        calls['n'] += 1
        if calls['n'] == n and how == 'sigterm': os.kill(os.getpid(), signal.SIGTERM)
        if calls['n'] == n and how == 'crash': raise SimulatedKill(f'killed before step call {n}')
        return orig(*a, **k)
    monkeypatch.setattr(tr, 'train_step', step)


def assert_same_state(a: dict, b: dict, atol=1e-7):
    "Models (incl. EMA), optimizer state and counters of two checkpoints agree to `atol` (bitwise on CPU in practice)."
    assert (a['step'], a['epoch'], a['sampler']) == (b['step'], b['epoch'], b['sampler'])
    pairs = [(f'{n}.{k}', v, b['models'][n][k]) for n in ('vae', 'unet', 'unet_ema') if a['models'][n] is not None
             for k, v in a['models'][n].items()]
    pairs += [(f'opt {i}.{k}', v, b['optimizer']['state'][i][k]) for i, s in a['optimizer']['state'].items() for k, v in s.items()]
    for name, x, y in pairs: torch.testing.assert_close(x, y, atol=atol, rtol=0, msg=name)
    print(f'max |straight - resumed| over {len(pairs)} tensors:', max((x.float() - y.float()).abs().max().item() for _, x, y in pairs))
    assert a['scaling_factor'] == b['scaling_factor']


def test_exact_resume_after_sigterm_and_after_a_kill(tmp_path, cache_dir, monkeypatch):
    straight = tr.train(cfg_for(tmp_path / 'straight', cache_dir))
    ref = load_checkpoint(straight['diffusion']['checkpoints']['last'])
    # 1) SIGTERM during diffusion step 1 (train_step call 2): checkpoint at step 1, clean return, flag in the summary
    out = tmp_path / 'stopped'
    interrupt_at(monkeypatch, 2, 'sigterm')
    s = tr.train(cfg_for(out, cache_dir))
    assert s['preempted'] and s['diffusion']['steps'] == 1 and 'vae' in s
    # 2) resume, then a kill right after diffusion step 2's checkpoint; leave a broken newer file and a stray .tmp
    monkeypatch.undo(); interrupt_at(monkeypatch, 2, 'crash')
    with pytest.raises(SimulatedKill): tr.train(cfg_for(out, cache_dir))
    ck = out / 'checkpoints'
    raw = (ck / 'checkpoint_step_2_tiny.pt').read_bytes()
    (ck / 'checkpoint_step_3_tiny.pt').write_bytes(raw[: len(raw) // 3])
    (ck / 'checkpoint_step_4_tiny.pt.tmp').write_bytes(raw[:1000])
    # 3) resume=auto skips the truncated file with a warning naming it, and finishes identical to the straight run
    monkeypatch.undo()
    with pytest.warns(UserWarning, match='checkpoint_step_3_tiny.pt'):
        s = tr.train(cfg_for(out, cache_dir))
    assert s['diffusion']['steps'] == 3 and not s['preempted']
    assert_same_state(ref, load_checkpoint(s['diffusion']['checkpoints']['last']))
    assert_same_state(load_checkpoint(straight['vae']['checkpoints']['last']), load_checkpoint(s['vae']['checkpoints']['last']))
    assert not list(ck.glob('*.tmp'))


def test_stage1_checkpoint_feeds_stage2(tmp_path, cache_dir):
    out = tmp_path / 'run'
    s1 = tr.train(cfg_for(out, cache_dir, stage='vae', vae_steps=1, keep_last=1))
    name = Path(s1['vae']['checkpoints']['best']).name
    assert name.startswith('checkpoint_best_epoch_') and name.endswith('_vae_tiny.pt')
    s2 = tr.train(cfg_for(out, cache_dir, stage='diffusion', steps=1))
    vae1, ck2 = load_checkpoint(s1['vae']['checkpoints']['best']), load_checkpoint(s2['diffusion']['checkpoints']['last'])
    for k, v in vae1['models']['vae'].items(): assert torch.equal(v, ck2['models']['vae'][k]), k
    assert ck2['stage'] == 'diffusion' and ck2['scaling_factor'] > 0 and ck2['models']['unet_ema'] is not None
    p = load_pipeline(out)
    assert p.unet is not None and p.scaling_factor == ck2['scaling_factor'] and not p.unet.training
    # an explicit stage-1 file starts stage 2 of another run
    other = tr.train(cfg_for(tmp_path / 'other', cache_dir, stage='diffusion', steps=1, cache_latents=True,
                             resume=s1['vae']['checkpoints']['best']))
    assert other['diffusion']['steps'] == 1 and (tmp_path / 'other' / 'latents_tiny.pt').is_file()


def test_corrupted_checkpoint_is_named(tmp_path, cache_dir):
    bad = tmp_path / 'checkpoint_last_tiny.pt'; bad.write_bytes(b'PK\x03\x04 not really a zip')
    with pytest.raises(CheckpointError, match='checkpoint_last_tiny.pt'):
        tr.train(cfg_for(tmp_path / 'run', cache_dir, stage='diffusion', resume=str(bad)))
    with pytest.raises(CheckpointError, match='no stage-1 checkpoint'):
        tr.train(cfg_for(tmp_path / 'run', cache_dir, stage='diffusion', resume='none'))


def test_train_main_cli(tmp_path, cache_dir, capsys):
    tr.train_main(['--preset', 'tiny', '--data-root', str(ROOT / 'data_samples'), '--output-dir', str(tmp_path / 'cli'),
                   '--stage', 'vae', '--max-steps', '1', '--set', f'data.cache_dir={cache_dir}', '--set', 'train.val_clips=1'])
    assert (tmp_path / 'cli' / 'checkpoints' / 'checkpoint_last_vae_tiny.pt').is_file()
    assert (tmp_path / 'cli' / 'metrics.jsonl').is_file() and (tmp_path / 'cli' / 'config.yaml').is_file()
    assert '"vae"' in capsys.readouterr().out


def test_corrector_builds_on_the_regression(tmp_path, cache_dir):
    "formulation.corrector: stage all trains the regression before the diffusion, which learns what it leaves."
    corrector = ['formulation.corrector=true']
    with pytest.raises(CheckpointError, match='corrector needs a trained regression'):
        tr.train(cfg_for(tmp_path / 'alone', cache_dir, stage='both', steps=1, extra=corrector))
    out = tmp_path / 'run'
    s = tr.train(cfg_for(out, cache_dir, stage='all', steps=2, regression_max_steps=2, extra=corrector))
    assert list(s)[-3:] == ['vae', 'regression', 'diffusion']
    reg, dif = (load_checkpoint(s[k]['checkpoints']['last']) for k in ('regression', 'diffusion'))
    for k, v in reg['models']['unet_ema'].items(): assert torch.equal(v, dif['models']['regressor'][k]), k
    assert dif['scaling_factor'] == reg['scaling_factor']          # one latent scale for the regression and its corrector
    p = load_pipeline(out)
    assert p.stage == 'diffusion' and p.regressor is not None and not p.regressor.training
    assert load_pipeline(out, stage='regression').regressor is None


def test_bf16_on_the_cpu_trains_and_resumes_exactly(tmp_path, cache_dir, monkeypatch):
    "`train.precision=bf16` on a CPU: autocast where it has bf16 in hardware (else fp32); fp32 weights, exact resume."
    kw, seen, amp_setup = dict(vae_steps=1, steps=3, precision='bf16'), [], tr.amp_setup
    monkeypatch.setattr(tr, 'amp_setup', lambda *a, **k: seen.append(amp_setup(*a, **k)) or seen[-1])
    straight = tr.train(cfg_for(tmp_path / 'straight', cache_dir, **kw))
    assert {getattr(ctx, 'fast_dtype', None) for ctx, _ in seen} == {torch.bfloat16 if cpu_bf16_native() else None}
    ref = load_checkpoint(straight['diffusion']['checkpoints']['last'])
    assert ref['config']['train']['precision'] == 'bf16'
    weights = [v for v in ref['models']['unet'].values() if v.is_floating_point()]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights)
    out = tmp_path / 'stopped'
    interrupt_at(monkeypatch, 2, 'sigterm')
    assert tr.train(cfg_for(out, cache_dir, **kw))['preempted']
    monkeypatch.undo()
    resumed = tr.train(cfg_for(out, cache_dir, **kw))
    assert_same_state(ref, load_checkpoint(resumed['diffusion']['checkpoints']['last']))
