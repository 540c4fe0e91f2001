"Diffusion: schedules, q_sample statistics, parameterisations, loss options, samplers with an oracle model, determinism."
import math
import pytest, torch, torch.nn as nn
from v2v_diffusion.config import DiffusionConfig, get_config
from v2v_diffusion.diffusion import (GaussianDiffusion, DDIMSampler, DDPMSampler, sample, sample_ddpm, cosine_beta_schedule,
                                     linear_beta_schedule, make_beta_schedule, extract, latent_ms_ssim, PREDICTIONS)

def diffusion(**kw): return GaussianDiffusion(DiffusionConfig(**kw))

class Oracle(nn.Module):
    "The true ε (or v) of a known x0, from the float64 schedule."
    def __init__(self, d, x0): super().__init__(); self.d, self.x0 = d, x0
    def forward(self, x_t, t, cond):
        a = extract(self.d.alphas_cumprod_f64, t.cpu(), x_t.shape).to(x_t)
        eps = (x_t - a.sqrt() * self.x0) / (1 - a).sqrt()
        return eps if self.d.cfg.prediction == 'eps' else a.sqrt() * eps - (1 - a).sqrt() * self.x0

@pytest.mark.parametrize('name', ['cosine', 'linear'])
def test_alphas_cumprod_decreasing_in_unit_interval(name):
    ac = torch.cumprod(1 - make_beta_schedule(name, 1000), 0)
    assert ac.dtype == torch.float64 and (ac[1:] < ac[:-1]).all() and (ac > 0).all() and (ac <= 1).all()

def test_cosine_matches_closed_form():
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    ac = torch.cumprod(1 - cosine_beta_schedule(1000), 0)
    for t in (0, 1, 250, 500, 750, 950): assert math.isclose(ac[t].item(), f(t + 1) / f(0), rel_tol=1e-10)
    assert cosine_beta_schedule(1000).max() == 0.999 and linear_beta_schedule(1000)[-1].item() == pytest.approx(0.02)

def test_q_sample_statistics():
    d = diffusion(); x0 = torch.full((40000, 1, 1, 1, 1), -0.5); g = torch.Generator().manual_seed(0)
    for tt in (0, 300, 700, 999):
        t = torch.full((40000,), tt); xt = d.q_sample(x0, t, torch.randn(x0.shape, generator=g)); a = d.alphas_cumprod[tt].item()
        assert xt.mean().item() == pytest.approx(-0.5 * math.sqrt(a), abs=0.015)
        assert xt.std().item() == pytest.approx(math.sqrt(1 - a), abs=0.015)

def test_eps_and_v_parameterisations_agree():
    x0, noise, t = torch.randn(64, 4, 2, 3, 3, dtype=torch.float64), torch.randn(64, 4, 2, 3, 3, dtype=torch.float64), torch.randint(0, 1000, (64,))
    de, dv = (GaussianDiffusion(DiffusionConfig(prediction=p), dtype=torch.float64) for p in PREDICTIONS)
    xt, v = de.q_sample(x0, t, noise), dv.velocity(x0, noise, t)
    assert torch.allclose(de.predict_x0(noise, xt, t), x0, atol=1e-6) and torch.allclose(dv.predict_x0(v, xt, t), x0, atol=1e-6)
    assert torch.allclose(dv.predict_eps(v, xt, t), noise, atol=1e-6)

@pytest.mark.parametrize('pred', PREDICTIONS)
@pytest.mark.parametrize('schedule', ['cosine', 'linear'])
def test_oracle_ddim_50_steps_recovers_x0(pred, schedule):
    d = diffusion(prediction=pred, schedule=schedule); x0 = torch.randn(2, 4, 3, 4, 4); cond = torch.zeros(2, 4, 1, 4, 4)
    out, x0s = sample(d, Oracle(d, x0), cond, x0.shape, steps=50, generator=torch.Generator().manual_seed(0), progress=False, return_x0=True)
    assert torch.allclose(out, x0, atol=1e-4) and len(x0s) == 50 and torch.allclose(x0s[-1], x0, atol=1e-4)

@pytest.mark.parametrize('pred', PREDICTIONS)
def test_oracle_ddpm_recovers_x0(pred):
    d = diffusion(prediction=pred); x0 = torch.randn(1, 4, 2, 4, 4)
    out = sample_ddpm(d, Oracle(d, x0), torch.zeros(1, 4, 2, 4, 4), x0.shape, generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.allclose(out, x0, atol=1e-4)

def test_eps_and_v_give_the_same_ddim_path():
    x0, cond = torch.randn(1, 4, 2, 4, 4), torch.zeros(1, 4, 1, 4, 4)
    runs = [sample(d, Oracle(d, x0), cond, x0.shape, steps=20, eta=0.7, generator=torch.Generator().manual_seed(3), progress=False, return_x0=True)
            for d in (diffusion(prediction='eps'), diffusion(prediction='v'))]
    assert torch.allclose(runs[0][0], runs[1][0], atol=1e-4)
    for a, b in zip(runs[0][1], runs[1][1]): assert torch.allclose(a, b, atol=5e-3)   # float32 x̂_0 at t≈999: 1/√ᾱ ≈ 10⁴

def test_seeded_sampling_is_deterministic():
    d, cond, model = diffusion(), torch.zeros(1, 4, 2, 4, 4), lambda x, t, c: 0.5 * x
    run = lambda seed, eta: sample(d, model, cond, (1, 4, 2, 4, 4), steps=8, eta=eta, generator=torch.Generator().manual_seed(seed), progress=False)
    assert torch.equal(run(0, 1.0), run(0, 1.0)) and not torch.equal(run(0, 1.0), run(1, 1.0))
    ddpm = lambda seed: sample_ddpm(d, model, cond, (1, 4, 2, 4, 4), steps=10, generator=torch.Generator().manual_seed(seed), progress=False)
    assert torch.equal(ddpm(5), ddpm(5))

def test_ddpm_is_ddim_with_eta_one():
    d = diffusion(); x, out = torch.randn(1, 4, 2, 4, 4), torch.randn(1, 4, 2, 4, 4)
    p, q = DDPMSampler.from_diffusion(d).set_timesteps(), DDIMSampler.from_diffusion(d).set_timesteps(1000)
    for t in (999, 500, 1, 0):
        a = p.step(out, t, x, generator=torch.Generator().manual_seed(t))[0]
        b = q.step(out, t, x, eta=1.0, generator=torch.Generator().manual_seed(t))[0]
        assert torch.allclose(a, b, atol=1e-5)

def test_timestep_grids():
    ac = diffusion().alphas_cumprod
    assert DDIMSampler(ac).set_timesteps(50).timesteps.tolist() == list(range(999, 0, -20))
    assert DDIMSampler(ac, timestep_spacing='leading').set_timesteps(50).timesteps.tolist() == list(range(980, -1, -20))
    assert DDIMSampler(ac, timestep_spacing='linspace').set_timesteps(2).timesteps.tolist() == [999, 0]

@pytest.mark.parametrize('make,msg', [
    (lambda: diffusion(schedule='sigmoid'), 'valid: cosine, linear'), (lambda: diffusion(prediction='x0'), 'valid: eps, v'),
    (lambda: DDIMSampler(torch.ones(10), timestep_spacing='odd'), 'valid: trailing, leading, linspace'),
    (lambda: DDIMSampler(torch.ones(10), prediction='sample'), 'valid: eps, v'),
    (lambda: DDIMSampler(torch.ones(10)).set_timesteps(11), 'must be in 1..10'),
    (lambda: DDIMSampler(torch.ones(10)).step(torch.zeros(1), 9, torch.zeros(1)), 'call set_timesteps'),
    (lambda: DDIMSampler.from_diffusion(diffusion()).set_timesteps(10).step(torch.zeros(1), 999, torch.zeros(1), eta=-1), 'eta=-1')])
def test_invalid_options_list_valid_ones(make, msg):
    with pytest.raises((ValueError, RuntimeError), match=msg): make()

def test_min_snr_weights():
    d = diffusion(min_snr_gamma=5.0, prediction='eps'); t = torch.tensor([0, 999])
    w = d.loss_weight(t)
    assert w[0].item() == pytest.approx(5 / d.snr[0].item(), rel=1e-5) and w[1].item() == 1.0
    wv = diffusion(min_snr_gamma=5.0, prediction='v').loss_weight(t)
    assert wv[0].item() == pytest.approx(5 / (d.snr[0].item() + 1), rel=1e-5)
    assert torch.equal(diffusion().loss_weight(t), torch.ones(2))

@pytest.mark.parametrize('pred', PREDICTIONS)
def test_training_loss_oracle_is_zero_and_reports_floats(pred):
    d = GaussianDiffusion(DiffusionConfig(prediction=pred, msssim_weight=0.2, min_snr_gamma=5.0), dtype=torch.float64)
    x0 = torch.randn(3, 4, 2, 8, 8, dtype=torch.float64)
    loss, stats = d.training_loss(Oracle(d, x0), x0, None, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and loss.item() == pytest.approx(0, abs=1e-6)
    assert set(stats) == {'loss', 'mse', 'msssim'} and all(isinstance(v, float) for v in stats.values())

def test_latent_ms_ssim_scales():
    z = torch.randn(1, 4, 2, 32, 32)
    assert latent_ms_ssim(z, z).item() == pytest.approx(1, abs=1e-5) and latent_ms_ssim(z, -z) < 0.1
    assert latent_ms_ssim(z[..., :4, :4], z[..., :4, :4] + 0.1).item() < 1
    with pytest.raises(ValueError, match='smaller than win_size'): latent_ms_ssim(z[..., :2, :2], z[..., :2, :2])

@pytest.mark.slow
def test_tiny_unet_loss_falls_on_one_batch():
    from v2v_diffusion.unet import UNet
    cfg = get_config('tiny', ['diffusion.prediction=eps']); torch.manual_seed(0)
    x0 = torch.sin(3 * torch.linspace(-1, 1, 4).view(1, 1, 4, 1, 1) + torch.randn(2, 4, 1, 4, 4)); cond = x0.mean(2, keepdim=True)
    d, net = GaussianDiffusion(cfg.diffusion), UNet(cfg.unet); opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    t_eval, n_eval = torch.tensor([100, 900]), torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    evaluate = lambda: d.training_loss(net, x0, cond, t=t_eval, noise=n_eval)[1]['mse']
    before, g = evaluate(), torch.Generator().manual_seed(0)
    for _ in range(40):
        loss, _ = d.training_loss(net, x0, cond, generator=g); opt.zero_grad(); loss.backward(); opt.step()
    assert evaluate() < 0.8 * before
