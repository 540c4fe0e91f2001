"""Issue 15: runs that never lose, mix or silently corrupt work — run identity, checksummed checkpoints with
fallback, non-finite training, one writer per folder, atomic metrics — on the tiny preset (seconds each)."""
import json, os, random, re, subprocess, sys, time
from pathlib import Path
import pytest
import torch
import v2v_diffusion.train as tr
from locks import lock_held_elsewhere
from v2v_diffusion.checkpoint import (CheckpointError, NonFiniteError, RunError, current_run_id, list_checkpoints,
                                      load_checkpoint, nonfinite_tensors, read_checksum)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('cache')


def cfg_for(out, cache, vae_steps=4, **train):
    "A stage-1-only tiny run: a checkpoint every 2 steps, a metrics line every step."
    sets = [f'data.cache_dir={cache}', 'data.batch_size=1', f'train.vae_max_steps={vae_steps}',
            'train.checkpoint_every=2', 'train.validate_every=100', 'train.log_every=1', 'train.val_clips=1',
            'train.keep_last=2']
    sets += [f'train.{k}={v}' for k, v in train.items()]
    return tr.make_config('tiny', sets, data_root=ROOT / 'data_samples', output_dir=out, stage='vae')


class SimulatedKill(Exception): pass


def crash_at(monkeypatch, n):
    "Make the n-th call of train_step raise (a kill after n-1 optimizer steps)."
    calls, orig = {'n': 0}, tr.train_step
    def step(*a, **k):
        calls['n'] += 1
        if calls['n'] == n: raise SimulatedKill(n)
        return orig(*a, **k)
    monkeypatch.setattr(tr, 'train_step', step)


def same_weights(a: dict, b: dict) -> bool:
    return a['step'] == b['step'] and all(torch.equal(v, b['models']['vae'][k]) for k, v in a['models']['vae'].items())


def test_used_folder_keeps_to_its_run(tmp_path, cache_dir):
    "Item 1: old run at step 6 with keep-last pruning; a new run with another config or fewer steps is refused."
    out = tmp_path / 'run'
    tr.train(cfg_for(out, cache_dir, vae_steps=6, keep_last=1))
    old_id = current_run_id(out)
    with pytest.raises(RunError, match='different config.*train.lr'):
        tr.train(cfg_for(out, cache_dir, vae_steps=6, lr=0.01))
    with pytest.raises(RunError, match='step 6, past train.vae_max_steps=2'):   # used to "resume" and train nothing
        tr.train(cfg_for(out, cache_dir, vae_steps=2))
    with pytest.raises(RunError, match='resume=none'):
        tr.train(cfg_for(out, cache_dir, vae_steps=6, resume='none'))
    with pytest.warns(UserWarning, match='previous run was moved'):
        s = tr.train(cfg_for(out, cache_dir, vae_steps=2, lr=0.01), force_new=True)
    new_id = current_run_id(out)
    assert s['vae']['steps'] == 2 and new_id != old_id
    files = list_checkpoints(out / 'checkpoints')
    assert len(files) == 3 and {load_checkpoint(p)['run_id'] for p in files} == {new_id}
    assert (out / 'previous' / old_id / 'checkpoints' / 'checkpoint_step_6_vae_tiny.pt').is_file()


def test_corrupted_checkpoint_falls_back_and_metrics_do_not_repeat(tmp_path, cache_dir, monkeypatch):
    "Items 2 and 5: a flipped byte in `last` is caught; resume goes on from the step file, exactly; no repeated steps."
    straight = load_checkpoint(tr.train(cfg_for(tmp_path / 'straight', cache_dir))['vae']['checkpoints']['last'])
    out = tmp_path / 'run'
    crash_at(monkeypatch, 4)                         # steps 1-3 done and logged, checkpoint at step 2
    with pytest.raises(SimulatedKill): tr.train(cfg_for(out, cache_dir))
    monkeypatch.undo()
    last = out / 'checkpoints' / 'checkpoint_last_vae_tiny.pt'
    raw = bytearray(last.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    last.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match='checkpoint_last_vae_tiny.pt: sha256 differs.*falling back'):
        s = tr.train(cfg_for(out, cache_dir))
    assert s['vae']['steps'] == 4 and same_weights(straight, load_checkpoint(s['vae']['checkpoints']['last']))
    steps = [r['step'] for r in tr.read_metrics(out) if r['kind'] == 'train']
    assert steps == [1, 2, 3, 4], steps
    for p in list_checkpoints(out / 'checkpoints'): p.write_bytes(p.read_bytes()[:1000])
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match='none of the .* is valid'):
        tr.train(cfg_for(out, cache_dir, vae_steps=8))


def test_diverging_training_stops_without_saving_nan(tmp_path, cache_dir):
    "Item 3: train.lr=1e4 used to finish with exit 0 and NaN weights; now a clear error, and only finite checkpoints."
    out = tmp_path / 'run'
    with pytest.raises(NonFiniteError, match='training diverged.*lower train.lr'):
        tr.train(cfg_for(out, cache_dir, vae_steps=20, lr=1e4, warmup_steps=1))
    files = list_checkpoints(out / 'checkpoints')
    assert all(not nonfinite_tensors(load_checkpoint(p)['models']) for p in files)
    skipped = [r['skipped'] for r in tr.read_metrics(out) if r['kind'] == 'train']    # the last one raised unlogged
    assert skipped == [0.0] + [1.0] * (tr.MAX_NONFINITE_STEPS_UNSCALED - 1), skipped


def test_second_training_in_one_folder_is_refused(tmp_path, cache_dir):
    "Item 4: another process holds the run folder; a second training gets a clear error before touching anything."
    out = tmp_path / 'run'
    with lock_held_elsewhere(out, 'v2v-train'):
        with pytest.raises(RunError, match='in use by another v2v-train'): tr.train(cfg_for(out, cache_dir))
        assert not (out / 'checkpoints').exists()
    assert tr.train(cfg_for(out, cache_dir, vae_steps=1))['vae']['steps'] == 1     # free again once it is gone


def _valid_steps(ckdir: Path, run_id: str) -> list[int]:
    "Steps of the checkpoints in `ckdir` that pass their checksum and load, of run `run_id`."
    out = []
    for p in list_checkpoints(ckdir):
        try: ck = load_checkpoint(p, mmap=True)
        except CheckpointError: continue
        assert ck['run_id'] in (None, run_id) and not nonfinite_tensors(ck['models'])
        out.append(ck['step'])
    return out


def _is_valid(p: Path) -> bool:
    try: load_checkpoint(p, mmap=True)
    except CheckpointError: return False
    return True


def _damage(p: Path, rng):
    "Flip one random byte of `p`, or cut it at a random length."
    raw = bytearray(p.read_bytes())
    if rng.random() < 0.5: raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    else: raw = raw[:rng.randrange(len(raw))]
    p.write_bytes(bytes(raw))


def _train_steps(metrics: Path) -> list[tuple[int, float]]:
    "(step, time) of the train rows logged so far (a row being written is skipped)."
    rows = []
    for line in (metrics.read_text().splitlines() if metrics.exists() else []):
        try: r = json.loads(line)
        except json.JSONDecodeError: continue
        if r.get('kind') == 'train': rows.append((r['step'], r['time']))
    return rows


def _step_times(metrics: Path, started: float) -> dict:
    "Seconds from a run's start (`time.time()`) to its first step (key 0) and from each logged step to the next one."
    rows = _train_steps(metrics)
    return {0: rows[0][1] - started} | {a: tb - ta for (a, ta), (_, tb) in zip(rows, rows[1:])}


def _kill_at_random_moment(p: subprocess.Popen, metrics: Path, times: dict, rng) -> bool:
    """kill -9 `p` at a random moment of its own progress, however fast the machine: during start-up (a third of the
    time), or within the step that follows its next logged one (`times` of a straight run). True if it was killed."""
    def last_row(): return (_train_steps(metrics) or [None])[-1]     # resuming drops rows: compare, do not count
    start, deadline = last_row(), time.monotonic() + rng.uniform(0.3, 1.0) * max(times[0], 1.0)
    after_step = rng.random() < 2 / 3
    while p.poll() is None and (last_row() in (start, None) if after_step else time.monotonic() < deadline):
        time.sleep(0.01)
    if after_step and p.poll() is None and (row := last_row()): time.sleep(rng.uniform(0.0, times.get(row[0], 0.5)))
    if p.poll() is not None: return False
    p.kill()
    return True


@pytest.mark.slow
def test_fault_injection_kills_and_corruption(tmp_path):
    """kill -9 at random moments, random damage to checkpoints: resume always takes the newest valid checkpoint of the
    run, the final weights equal a straight run's, the metrics have every step once, and nothing non-finite is saved."""
    rng, cache, steps = random.Random(15), tmp_path / 'cache', 20
    def cmd(out):
        sets = [f'data.cache_dir={cache}', 'data.batch_size=1', f'train.vae_max_steps={steps}',
                'train.checkpoint_every=1', 'train.validate_every=4', 'train.log_every=1', 'train.val_clips=1',
                'train.keep_last=3']
        return [sys.executable, '-c', 'from v2v_diffusion.train import train_main; train_main()', '--preset', 'tiny',
                '--data-root', str(ROOT / 'data_samples'), '--output-dir', str(out), '--stage', 'vae',
                *[a for s in sets for a in ('--set', s)]]
    started = time.time()
    assert subprocess.run(cmd(tmp_path / 'straight'), capture_output=True).returncode == 0
    straight = load_checkpoint(tmp_path / 'straight' / 'checkpoints' / 'checkpoint_last_vae_tiny.pt')
    times = _step_times(tmp_path / 'straight' / 'metrics.jsonl', started)
    out, run_id, kills, resumed = tmp_path / 'run', None, 0, []
    for attempt in range(40):
        expected = max(_valid_steps(out / 'checkpoints', run_id), default=None) if run_id else None
        p = subprocess.Popen(cmd(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, 'PYTHONUNBUFFERED': '1'})
        if attempt < 25 and _kill_at_random_moment(p, out / 'metrics.jsonl', times, rng): kills += 1
        log = p.communicate()[0]
        run_id = run_id or current_run_id(out)
        assert current_run_id(out) == run_id                                   # one run all along
        m = re.search(r'vae: resuming at step (\d+)', log)
        if m or re.search(r'vae: +\d+%', log):                               # it got as far as choosing a checkpoint
            assert (int(m[1]) if m else None) == expected, (expected, log[-2000:])
            resumed.append(expected)
        if p.returncode == 0: break
        valid = [q for q in list_checkpoints(out / 'checkpoints') if _is_valid(q) and read_checksum(q)]
        if len(valid) >= 2 and rng.random() < 0.6: _damage(rng.choice(valid), rng)
    print(f'{kills} kills; resumed at steps {resumed}; straight run: {times[0]:.1f} s to step 1')
    assert p.returncode == 0 and kills >= 10, (p.returncode, kills, resumed)
    final = load_checkpoint(out / 'checkpoints' / 'checkpoint_last_vae_tiny.pt')
    assert same_weights(straight, final) and final['run_id'] == run_id
    assert [r['step'] for r in tr.read_metrics(out) if r['kind'] == 'train'] == list(range(1, steps + 1))
    _valid_steps(out / 'checkpoints', run_id)
