"U-Net: shapes and T kept, condition resampled along T inside, zero init, errors, seed-config size, autocast, checkpointing."
import pytest, torch, torch.nn as nn
import torch.nn.functional as F
from v2v_diffusion.config import UNetConfig, get_config
from v2v_diffusion.unet import UNet, resample_time
from v2v_diffusion.vae import count_parameters

TINY = get_config('tiny').unet

def randomised(cfg=TINY, seed=0):
    "A tiny U-Net with its zero-initialised layers made non-zero (so outputs depend on inputs)."
    torch.manual_seed(seed); m = UNet(cfg)
    with torch.no_grad():
        for p in m.parameters():
            if p.abs().sum() == 0: p.normal_(std=0.05)
    return m

@pytest.fixture(scope='module')
def net(): return randomised()

@pytest.mark.parametrize('T,Tc,h', [(1, 1, 4), (8, 2, 4), (8, 8, 8), (3, 5, 2)])
def test_shapes_keep_T(net, T, Tc, h):
    out = net(torch.randn(2, 4, T, h, h), torch.tensor([0, 999]), torch.randn(2, 4, Tc, h, h))
    assert out.shape == (2, 4, T, h, h) and torch.isfinite(out).all()

def test_condition_resampled_inside_along_T(net):
    x, t, cond = torch.randn(1, 4, 8, 4, 4), torch.tensor([10]), torch.randn(1, 4, 2, 4, 4)
    explicit = F.interpolate(cond, size=(8, 4, 4), mode='trilinear', align_corners=False)
    assert torch.allclose(net(x, t, cond), net(x, t, explicit), atol=1e-6)
    assert torch.equal(resample_time(cond, 2), cond)

def test_zero_initialised_output():
    m = UNet(TINY)
    assert m(torch.randn(1, 4, 3, 4, 4), torch.tensor([5]), torch.randn(1, 4, 3, 4, 4)).abs().max() == 0
    assert m.conv_out.weight.abs().sum() == 0

def test_output_depends_on_every_input(net):
    x, cond = torch.randn(1, 4, 4, 4, 4, requires_grad=True), torch.randn(1, 4, 2, 4, 4, requires_grad=True)
    out = net(x, torch.tensor([500]), cond); out.square().sum().backward()
    assert (x.grad.abs().sum((0, 1, 3, 4)) > 0).all() and (cond.grad.abs().sum((0, 1, 3, 4)) > 0).all()
    assert not torch.allclose(out, net(x, torch.tensor([10]), cond))

@pytest.mark.parametrize('x_shape,c_shape,msg', [((1, 3, 4, 4, 4), (1, 4, 2, 4, 4), 'x_t must be'),
                                               ((1, 4, 4, 4, 4), (1, 4, 2, 4, 2), 'cond must be'),
                                               ((1, 4, 4, 3, 4), (1, 4, 2, 3, 4), 'divisible by 2')])
def test_input_errors(net, x_shape, c_shape, msg):
    with pytest.raises(ValueError, match=msg): net(torch.zeros(x_shape), torch.tensor([1]), torch.zeros(c_shape))

@pytest.mark.parametrize('kw,msg', [(dict(attention_levels=(5,)), 'valid levels are 0..3'), (dict(num_heads=3), 'num_heads=3'),
                                    (dict(norm_groups=48), 'divide by norm_groups=48')])
def test_config_errors(kw, msg):
    with pytest.raises(ValueError, match=msg): UNet(UNetConfig(**kw))

def test_seed_config_parameter_count():
    with torch.device('meta'): n = count_parameters(UNet(get_config('v100').unet))
    assert n == 279_653_764 and abs(n / 264.6e6 - 1) < 0.15

def test_autocast_bf16(net):
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = net(torch.randn(2, 4, 3, 4, 4), torch.tensor([1, 2]), torch.randn(2, 4, 1, 4, 4))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()

def test_grad_checkpointing_same_gradients():
    x, t, c = torch.randn(1, 4, 3, 4, 4), torch.tensor([7]), torch.randn(1, 4, 2, 4, 4)
    def grads(ckpt):
        m = randomised(UNetConfig(**{**TINY.__dict__, 'grad_checkpointing': ckpt}), seed=1)
        m(x, t, c).square().mean().backward()
        return torch.cat([p.grad.flatten() for p in m.parameters()])
    assert torch.allclose(grads(True), grads(False), atol=1e-6)
