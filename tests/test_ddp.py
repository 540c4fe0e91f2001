"""DDP on CPU: `torchrun --nproc_per_node 2` (gloo) agrees with one process on the same global batch, and the real
`v2v-train` runs a few steps with only rank 0 writing.

Agreement is checked on `fit` (the loop both stages use) with a stand-in stage whose loss has no randomness: each
rank takes batch B from its DistributedSampler shard, one process takes 2B; after 3 AdamW steps the weights agree
to 1e-6 (float32 reduction order may differ: DDP averages two half-batch gradients; in practice they are equal).
The same with gradient accumulation (2 ranks x 2 micro-batches of 1 vs one batch of 4). The real stages draw per-rank
noise (posterior samples, diffusion timesteps/noise), so for them we check that training runs and ranks stay in sync.
This file is also the script torchrun runs (see `__main__`)."""
import json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / 'torchrun'


class ToyLoss(nn.Module):
    def __init__(self): super().__init__(); self.net = nn.Linear(3, 1)
    def forward(self, b):
        loss = F.mse_loss(self.net(b['x']), b['y'])
        return loss, {}


class ToyData(Dataset):
    def __init__(self, n=16):
        g = torch.Generator().manual_seed(0); self.x = torch.randn(n, 3, generator=g)
        self.y = self.x @ torch.tensor([[1.], [-2.], [.5]])
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return {'x': self.x[i], 'y': self.y[i]}


def toy_fit(out, d, batch_size, steps=3, accum=1) -> torch.Tensor:
    "`fit` a stand-in stage on `d`; returns the final weights (also saved as rank<r>.pt)."
    from matplotlib.figure import Figure
    import v2v_diffusion.train as tr
    cfg = tr.make_config('tiny', [f'data.batch_size={batch_size}', f'train.grad_accum={accum}', 'train.lr=0.05', 'train.warmup_steps=1',
                                  'train.checkpoint_every=100', 'train.validate_every=100'], output_dir=out, max_steps=steps)
    torch.manual_seed(0); lm = ToyLoss()
    stage = tr.Stage('vae', lm, lm.net, lambda step: ({'psnr': 0.0}, Figure()),
                     lambda: {'vae': lm.net.state_dict(), 'unet': None, 'unet_ema': None}, steps)
    tr.fit(stage, cfg, DataLoader(ToyData(), batch_size=batch_size), d, tr.RunLog(out, d.is_main))
    w = torch.cat([p.detach().flatten() for p in lm.net.parameters()])
    torch.save(w, Path(out) / f'rank{d.rank}.pt')
    return w


def main(out):
    import v2v_diffusion.train as tr
    d = tr.setup_distributed()
    toy_fit(Path(out) / 'toy', d, batch_size=2)
    toy_fit(Path(out) / 'toy_accum', d, batch_size=1, accum=2)     # gradients all-reduced on the 2nd micro-batch only
    tr.train_main(['--preset', 'tiny', '--data-root', str(ROOT / 'data_samples'), '--output-dir', str(Path(out) / 'real'),
                   '--max-steps', '2', '--set', f'data.cache_dir={Path(out) / "cache"}', '--set', 'train.val_clips=1',
                   '--set', 'diffusion.ddim_steps=2', '--set', 'data.batch_size=1', '--set', 'train.checkpoint_every=1'])


def test_torchrun_two_ranks_agree_with_one_process(tmp_path):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([str(TORCHRUN), '--nproc_per_node', '2', '--master_port', '29517', __file__, str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    import v2v_diffusion.train as tr
    w0, w1 = (torch.load(tmp_path / 'toy' / f'rank{k}.pt') for k in (0, 1))
    assert torch.equal(w0, w1)                                   # ranks in sync
    single = toy_fit(tmp_path / 'single', tr.Dist(), batch_size=4)
    print('max |DDP - single process| =', (w0 - single).abs().max().item())
    torch.testing.assert_close(w0, single, atol=1e-6, rtol=0)   # same global batch, same result
    w_acc = torch.load(tmp_path / 'toy_accum' / 'rank0.pt')
    torch.testing.assert_close(w_acc, single, atol=1e-6, rtol=0)
    ck = tmp_path / 'real' / 'checkpoints'
    assert (ck / 'checkpoint_last_vae_tiny.pt').is_file() and (ck / 'checkpoint_last_tiny.pt').is_file()
    assert len(list((tmp_path / 'real' / 'tensorboard').iterdir())) == 1    # only rank 0 logs
    assert '"preempted": false' in r.stdout


if __name__ == '__main__':
    main(sys.argv[1])
