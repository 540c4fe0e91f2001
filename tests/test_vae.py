"VAE: shapes and T kept for any T, errors, KL, reparameterization, seed-config size, autocast, scaling factor."
import math
import pytest, torch
from v2v_diffusion.config import VAEConfig, get_config
from v2v_diffusion.vae import VAE, DiagonalGaussian, count_parameters, measure_scaling_factor, temporal_receptive_field

TINY = get_config('tiny').vae

@pytest.fixture(scope='module')
def vae():
    torch.manual_seed(0); return VAE(TINY)

@pytest.mark.parametrize('T,H,W', [(1, 32, 32), (5, 16, 24), (8, 32, 32)])
def test_shapes_keep_T(vae, T, H, W):
    recon, post = vae(torch.rand(2, 1, T, H, W) * 2 - 1)
    assert recon.shape == (2, 1, T, H, W) and post.mean.shape == post.logvar.shape == (2, 4, T, H // 8, W // 8)
    assert vae.decode(post.sample()).shape == (2, 1, T, H, W) and post.kl().shape == (2,)

@pytest.mark.parametrize('shape,msg', [((1, 1, 4, 32, 28), 'H and W must be divisible by 8'), ((1, 1, 0, 32, 32), 'T>=1'),
                                       ((1, 2, 4, 32, 32), 'expected (B,1,T>=1,H,W)'), ((1, 32, 32), 'expected')])
def test_encode_errors(vae, shape, msg):
    with pytest.raises(ValueError, match=msg.replace('(', r'\(').replace(')', r'\)')): vae.encode(torch.zeros(shape))

@pytest.mark.parametrize('kw,msg', [(dict(channels=(8, 10, 16, 16), norm_groups=4), 'divide by norm_groups=4'),
                                    (dict(temporal_kernel=4), 'temporal_kernel=4 must be odd')])
def test_config_errors(kw, msg):
    with pytest.raises(ValueError, match=msg): VAE(VAEConfig(**kw))

def test_kl_zero_at_prior_positive_elsewhere():
    z = torch.zeros(2, 4, 3, 4, 4)
    assert torch.equal(DiagonalGaussian(z, z).kl(), torch.zeros(2))
    for mean, logvar in [(z + 0.3, z), (z, z + 0.5), (z, z - 0.5), (torch.randn_like(z), torch.randn_like(z))]:
        assert (DiagonalGaussian(mean, logvar).kl() > 0).all()
    m, lv = torch.randn_like(z), torch.randn_like(z)        # closed form per element
    assert torch.allclose(DiagonalGaussian(m, lv).kl(), 0.5 * (m ** 2 + lv.exp() - 1 - lv).sum((1, 2, 3, 4)))

def test_reparameterized_sample_statistics():
    mean, std = torch.tensor([-2.0, 0.0, 3.0]).view(1, 3, 1, 1, 1), torch.tensor([0.1, 1.0, 2.5]).view(1, 3, 1, 1, 1)
    post = DiagonalGaussian(mean.expand(4, 3, 8, 32, 32), (2 * std.log()).expand(4, 3, 8, 32, 32))
    s = post.sample(torch.Generator().manual_seed(0))
    assert torch.allclose(s.mean((0, 2, 3, 4)), mean.flatten(), atol=0.03)
    assert torch.allclose(s.std((0, 2, 3, 4)), std.flatten(), rtol=0.02)
    assert torch.equal(s, post.sample(torch.Generator().manual_seed(0))) and torch.equal(post.mode(), post.mean)

def test_seed_config_parameter_count():
    with torch.device('meta'): n = count_parameters(VAE(get_config('v100').vae))
    assert n == 38_767_817 and abs(n / 43.1e6 - 1) < 0.15           # full resolution in-plane (inplane_levels=1)
    with torch.device('meta'): n0 = count_parameters(VAE(VAEConfig(inplane_levels=0)))
    assert n0 == 39_728_585 and abs(n0 / 43.1e6 - 1) < 0.15

def test_temporal_receptive_field_formula():
    assert temporal_receptive_field(VAEConfig(inplane_levels=0))['encoder'] == 1 + 2 * (1 + 4 * 2 * 2 + 3 + 1)
    # the seed: conv_in and level 0's four res-block convs in-plane; the field still spans a 24-frame clip
    assert temporal_receptive_field(get_config('v100').vae)['encoder'] == 1 + 2 * (1 + 4 * 2 * 2 + 3 + 1) - 2 * 5 > 24
    assert temporal_receptive_field(VAEConfig(temporal_kernel=1))['autoencoder'] == 1

def test_autocast_bf16(vae):
    with torch.autocast('cpu', dtype=torch.bfloat16):
        recon, post = vae(torch.rand(1, 1, 2, 16, 16))
    assert recon.shape == (1, 1, 2, 16, 16) and torch.isfinite(recon.float()).all() and post.kl().dtype == torch.float32

def test_grad_checkpointing_same_gradients():
    x = torch.rand(1, 1, 3, 16, 16)
    def grads(ckpt):
        torch.manual_seed(1); m = VAE(VAEConfig(**{**TINY.__dict__, 'grad_checkpointing': ckpt}))
        m(x, sample_posterior=False)[0].square().mean().backward()
        return torch.cat([p.grad.flatten() for p in m.parameters()])
    assert torch.allclose(grads(True), grads(False), atol=1e-6)

def test_measure_scaling_factor_normalises(vae):
    clips = [torch.rand(2, 1, 3, 16, 16) * 2 - 1 for _ in range(2)]
    sf = measure_scaling_factor(vae, clips)
    with torch.no_grad(): z = torch.cat([vae.encode(c).mode().flatten() for c in clips])
    assert math.isclose(float((z * sf).std()), 1.0, rel_tol=1e-4)
    assert math.isclose(measure_scaling_factor(vae, torch.cat(clips)), sf, rel_tol=1e-6)

@pytest.mark.slow
def test_tiny_vae_overfits_one_clip():
    torch.manual_seed(0); m = VAE(TINY); opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    z = torch.linspace(-1, 1, 8).view(1, 1, 8, 1, 1); yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing='ij')
    clip = ((xx - 0.3 * z) ** 2 + yy ** 2 < 0.3).float() * 1.5 - 1
    psnr = lambda r: 10 * math.log10(4 / float((r - clip).square().mean()))
    first = psnr(m(clip, sample_posterior=False)[0].detach())
    for _ in range(100):
        recon, post = m(clip); loss = (recon - clip).abs().mean() + 1e-6 * post.kl().mean()
        opt.zero_grad(); loss.backward(); opt.step()
    assert psnr(m(clip, sample_posterior=False)[0].detach()) > first + 8
