"Metrics against independent numpy implementations (PSNR, gaussian-window SSIM), on random and constant images."
import math, warnings
import numpy as np
import pytest, torch
from numpy.lib.stride_tricks import sliding_window_view
from v2v_diffusion.metrics import psnr, ssim, ms_ssim, hu_mae, per_slice_metrics, interpolate_z, interpolate_clip

def np_psnr(a, b, data_range=2.0):
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(data_range ** 2 / mse)

def np_ssim2d(a, b, data_range=2.0, win=11, sigma=1.5, K=(0.01, 0.03)):
    "Wang et al. 2004 SSIM: 11-tap gaussian window (sigma 1.5), valid region, float64."
    g = np.exp(-((np.arange(win) - win // 2) ** 2) / (2 * sigma ** 2)); w = np.outer(g, g); w /= w.sum()
    filt = lambda x: np.einsum('ijkl,kl->ij', sliding_window_view(x, (win, win)), w)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    C1, C2 = (K[0] * data_range) ** 2, (K[1] * data_range) ** 2
    ma, mb = filt(a), filt(b)
    va, vb, cab = filt(a * a) - ma ** 2, filt(b * b) - mb ** 2, filt(a * b) - ma * mb
    return ((2 * ma * mb + C1) * (2 * cab + C2) / ((ma ** 2 + mb ** 2 + C1) * (va + vb + C2))).mean()

rng = np.random.default_rng(0)
PAIRS = {
    'random': (rng.uniform(-1, 1, (4, 40, 36)), rng.uniform(-1, 1, (4, 40, 36))),
    'correlated': (lambda a: (a, np.clip(a + rng.normal(0, .1, a.shape), -1, 1)))(rng.uniform(-1, 1, (3, 32, 32))),
    'constant_vs_constant': (np.full((2, 24, 24), 0.3), np.full((2, 24, 24), -0.2)),
    'constant_vs_random': (np.full((2, 24, 24), 0.1), rng.uniform(-1, 1, (2, 24, 24))),
    'identical_constant': (np.full((2, 24, 24), -1.0), np.full((2, 24, 24), -1.0)),
}

@pytest.mark.parametrize('name', list(PAIRS))
@pytest.mark.parametrize('as_torch', [False, True])
def test_psnr_and_ssim_match_numpy(name, as_torch):
    a, b = (x.astype(np.float32) for x in PAIRS[name])
    A, B = (torch.from_numpy(a), torch.from_numpy(b)) if as_torch else (a, b)
    ref_psnr = np_psnr(a, b)
    got = float(psnr(A, B))
    assert got == ref_psnr if math.isinf(ref_psnr) else got == pytest.approx(ref_psnr, abs=1e-4)
    ref_slices = [np_ssim2d(x, y) for x, y in zip(a, b)]
    assert np.asarray(ssim(A, B, per_slice=True)) == pytest.approx(ref_slices, abs=2e-5)
    assert float(ssim(A, B)) == pytest.approx(np.mean(ref_slices), abs=2e-5)
    assert np.asarray(psnr(A, B, dim=(-2, -1))) == pytest.approx([np_psnr(x, y) for x, y in zip(a, b)], abs=1e-4)

def test_masked_metrics_match_numpy():
    a, b = (x.astype(np.float32) for x in PAIRS['random'])
    m = np.zeros(a.shape, bool); m[:, 5:30, 8:20] = True
    mse = np.mean((a[m].astype(np.float64) - b[m]) ** 2)
    assert psnr(a, b, mask=m) == pytest.approx(10 * math.log10(4 / mse), abs=1e-4)
    assert hu_mae(a * 1000, b * 1000, mask=m) == pytest.approx(np.abs(a[m] - b[m].astype(np.float64)).mean() * 1000, rel=1e-5)

def test_ms_ssim_small_images_and_identity():
    a = rng.uniform(-1, 1, (2, 32, 32)).astype(np.float32)
    with pytest.warns(UserWarning, match='2 of 5 scales'): assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-5)
    with pytest.warns(UserWarning, match='NaN'): assert math.isnan(ms_ssim(a[:, :8, :8], a[:, :8, :8]))
    d = per_slice_metrics(a, a)        # no warning leaks out of the per-slice report
    assert d['ssim'] == pytest.approx(1.0, abs=1e-5) and np.isinf(d['psnr']).all()

def test_interpolation_baselines_on_real_positions():
    zk = np.array([0.0, 2.5, 5.0, 7.5, 10.0]); zt = np.linspace(0, 10, 11)
    thick = (zk[:, None, None] ** 2 + np.zeros((1, 3, 4))).astype(np.float32)  # quadratic along z
    cub = interpolate_z(thick, zk, zt, 'cubic')[:, 1, 1]
    lin = interpolate_z(thick, zk, zt, 'linear')[:, 1, 1]
    assert cub == pytest.approx(zt ** 2, abs=1e-3)                      # a cubic spline is exact on a quadratic
    assert np.abs(lin - zt ** 2).max() > 1                              # linear is not
    assert interpolate_z(thick, zk, zt, 'nearest')[:, 0, 0].tolist() == [0, 0, 6.25, 6.25, 25, 25, 25, 56.25, 56.25, 100, 100]

def test_interpolate_clip_matches_interpolate_z_linear():
    "Both baselines agree when the clip layout is translated to positions (cell centres)."
    T, Tk = 10, 2 * 1 + 3
    thick = torch.randn(1, 1, Tk, 4, 4)
    zk = (np.arange(Tk) + 0.5) * T / Tk; zt = np.arange(T) + 0.5
    ref = interpolate_z(thick[0, 0].numpy(), zk, zt, 'linear')
    assert interpolate_clip(thick, T, 'linear')[0, 0].numpy() == pytest.approx(ref, abs=1e-5)

def test_fast_ssim_matches_pytorch_msssim_on_volumes():
    "The shifted-sum gaussian filter gives pytorch-msssim's SSIM and MS-SSIM (public API, conv2d) to 1e-4."
    import pytorch_msssim
    g = torch.from_numpy(rng.uniform(-1, 1, (6, 192, 176)).astype(np.float32))
    p = (g * 0.7 + 0.3 * torch.from_numpy(rng.uniform(-1, 1, g.shape).astype(np.float32))).clamp(-1, 1)
    ref = pytorch_msssim.ssim(p[:, None], g[:, None], data_range=2.0, size_average=False)
    assert np.asarray(ssim(p, g, per_slice=True)) == pytest.approx(ref.numpy(), abs=1e-4)
    assert float(ssim(p, g, chunk=4)) == pytest.approx(float(ref.mean()), abs=1e-4)
    ref_ms = pytorch_msssim.ms_ssim(p[:, None], g[:, None], data_range=2.0, size_average=False)
    assert np.asarray(ms_ssim(p, g, per_slice=True)) == pytest.approx(ref_ms.numpy(), abs=1e-4)
    m = np.ones(g.shape, bool)
    assert float(ssim(p, g, mask=m)) == pytest.approx(float(ref.mean()), abs=1e-4)
