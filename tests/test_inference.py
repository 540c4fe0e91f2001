"Whole-volume inference: seamless blending, the condition as in training, exported DICOM/NIfTI geometry."
import numpy as np
import pydicom, nibabel as nib
import pytest, torch
from types import SimpleNamespace
from v2v_diffusion.dicom import Volume, read_series, nifti_affine
from v2v_diffusion.data import ClipDataset, PairedCase, cond_frames, cond_positions, resize_hu
from v2v_diffusion.phantom import phantom_case
from v2v_diffusion.inference import sliding_window_z, window_starts, infer_volume, infer_posterior, export_volume
from v2v_diffusion.evaluate import evaluate_case, evaluate_slice_drop, drop_slices, scored_slices
from v2v_diffusion.base import SlabModel
from v2v_diffusion.metrics import interpolate_z
from v2v_diffusion.windowing import hu_to_unit
from v2v_diffusion.config import get_config
from v2v_diffusion.checkpoint import Pipeline
from v2v_diffusion.vae import VAE
from v2v_diffusion.formulation import build_unet
from v2v_diffusion.diffusion import GaussianDiffusion

def tiny_cfg(*overrides):
    return get_config('tiny', ['diffusion.ddim_steps=2', *overrides])

def tiny_pipeline(cfg=None, seed=0) -> Pipeline:
    "An untrained tiny pipeline (eval mode)."
    cfg = cfg or tiny_cfg(); torch.manual_seed(seed)
    vae, unet = VAE(cfg.vae).eval(), build_unet(cfg).eval()
    return Pipeline(cfg, vae, unet, GaussianDiffusion(cfg.diffusion).eval(), 1.0)


@pytest.mark.parametrize('Z,T,overlap,bs', [(8, 8, 0, 1), (23, 8, 3, 2), (64, 8, 2, 3), (50, 24, 8, 2), (9, 8, 7, 4)])
def test_identity_blending_is_seamless(Z, T, overlap, bs):
    vol = torch.randn(2, Z, 5, 4)
    out = sliding_window_z(lambda st: torch.stack([vol[:, s:s + T] for s in st]), Z, T, overlap, bs)
    assert torch.allclose(out, vol, atol=1e-6)
    starts = window_starts(Z, T, overlap)
    assert starts[0] == 0 and starts[-1] == Z - T and all(b - a <= T - overlap for a, b in zip(starts, starts[1:]))

def test_blending_has_no_seam_between_different_windows():
    "Windows that disagree (each a different constant) blend smoothly: no jump larger than the ramp step."
    out = sliding_window_z(lambda st: torch.stack([torch.full((1, 8, 2, 2), float(s)) for s in st]), 30, 8, 4, 2)[0, :, 0, 0]
    assert out.diff().abs().max() < 3.0 and out.diff().min() >= 0          # monotone, steps well below the 4-frame jumps

@pytest.fixture(scope='module')
def case():
    pc = phantom_case(5, size=48, n_thin=40)
    return PairedCase('c5', 'APE', pc['thick'], pc['thin'])

@pytest.mark.parametrize('mode', ['native', 'resampled'])
def test_condition_matches_training_clips(case, mode):
    cfg = tiny_cfg(f'data.thick_mode={mode}')
    ds = ClipDataset([case], cfg.data, train=False)
    item = ds[0]; z = np.arange(item['z_start'], item['z_end'] + 0.5, case.thin.spacing[0])
    Tk = cond_frames(cfg.data); assert item['thick'].shape[1] == Tk
    kz = cond_positions(z, Tk)
    ours = hu_to_unit(interpolate_z(resize_hu(case.thick.hu, (cfg.data.height, cfg.data.width)).numpy(), case.thick.z, kz, 'linear'),
                      (cfg.data.window_center, cfg.data.window_width))
    np.testing.assert_allclose(ours, item['thick'][0].numpy(), atol=2e-5)

def test_base_condition_matches_training_clips(case):
    "The base a window is conditioned on at inference is the base of the training clip at the same positions."
    from v2v_diffusion.inference import _conditions
    from v2v_diffusion.base import interpolation_base
    cfg = tiny_cfg()
    item = ClipDataset([case], cfg.data, train=False, formulation=cfg.formulation)[1]
    z = np.asarray(case.thin.z, float); s = int(np.searchsorted(z, item['z_start']))
    base = interpolation_base(case.thick.hu, case.thick.z, case.thick.thickness, z)
    ours = _conditions(cfg, case.thick, base, z)([s])[0]
    np.testing.assert_allclose(ours.numpy(), item['base'].numpy(), atol=3e-3)   # ≈1 HU: the clip's spline is local

def test_infer_volume_with_a_real_tiny_pipeline(case):
    pipe = tiny_pipeline()
    a = infer_volume(pipe, case.thick, steps=2, seed=3, progress=False)
    b = infer_volume(pipe, case.thick, steps=2, seed=3, progress=False)
    span = case.thick.z[-1] - case.thick.z[0] + case.thick.thickness
    assert a.hu.shape == (int(round(span)), 48, 48) and np.isfinite(a.hu).all()     # the slabs' full extent
    np.testing.assert_array_equal(a.hu, b.hu)                                    # seeded
    assert a.hu.min() < -1000                                                    # air in full HU: never clipped to the window
    r = evaluate_case(pipe, case, steps=2, progress=False)
    assert set(r['metrics']) == {'model', 'model_sample', 'vae', 'nearest', 'linear', 'cubic', 'nearest_dc', 'linear_dc', 'cubic_dc'}
    assert r['preds']['model'].shape == case.thin.hu.shape

def _far_outside_window() -> Volume:
    "A synthetic thick series whose HU lie far outside the seed window (−700..1100), both ways."
    z = np.arange(0., 36., 5.); yy, xx = np.mgrid[0:24, 0:24]
    hu = np.stack([np.where(xx < 12, -2500.0 + 10 * yy, 3000.0 + 20 * zz) for zz in z]).astype(np.float32)
    return Volume(hu, z, (5., 1., 1.), np.zeros(3), np.array([1., 0, 0, 0, 1, 0]), 5.0, {})

def test_values_far_outside_the_window_pass_through_unclipped():
    thick = _far_outside_window()
    post = infer_posterior(tiny_pipeline(), thick, steps=2, progress=False)
    assert post.mean.hu.min() < -2400 and post.mean.hu.max() > 2900
    sm = SlabModel.of(thick.z, thick.thickness, post.mean.z)
    assert np.abs(sm.slab_means(post.mean.hu) - thick.hu).max() <= 0.5         # consistent within 0.5 HU

def test_zero_residual_is_the_base_bit_for_bit_and_k1_mean_is_the_sample(case):
    zero = lambda cond, T: torch.zeros(cond.shape[0], 1, T, *cond.shape[-2:])
    post = infer_posterior(SimpleNamespace(cfg=tiny_cfg()), case.thick, progress=False, predict_fn=zero)
    assert post.mean.hu.tobytes() == post.base.hu.tobytes()
    assert post.mean.hu.tobytes() == post.sample.hu.tobytes() and post.num_samples == 1 and post.std.hu.max() == 0

def test_two_seeds_give_different_samples(case):
    pipe = tiny_pipeline()
    for p in pipe.unet.parameters(): torch.nn.init.normal_(p, std=0.02)
    a, b = (infer_posterior(pipe, case.thick, steps=2, seed=s, num_samples=2, progress=False) for s in (1, 2))
    assert np.abs(a.sample.hu - b.sample.hu).max() > 1e-2 and a.std.hu.max() > 0

def test_paired_cases_are_scored_inside_the_thick_coverage_only(case):
    lo, hi = case.thin_range()
    assert 0 < hi - lo < len(case.thin.z)             # the phantom's thin series reaches beyond its thick slabs
    np.testing.assert_array_equal(scored_slices(case), np.arange(lo, hi))
    r = evaluate_case(tiny_pipeline(), case, steps=1, progress=False)
    np.testing.assert_array_equal(r['score_z'], case.thin.z[lo:hi])
    h = case.thick.spacing[0] / 2
    assert case.thick.z.min() - h <= r['score_z'].min() and r['score_z'].max() <= case.thick.z.max() + h
    assert all('psnr_all' in v and v['psnr_all'] != v['psnr'] for v in r['metrics'].values())

def test_slice_drop_scores_only_the_dropped_slices(case):
    kept, dropped = drop_slices(case.thin, 2)
    assert len(dropped) == len(case.thin.z) // 2 and not set(np.searchsorted(case.thin.z, kept.z)) & set(dropped)
    r = evaluate_slice_drop(tiny_pipeline(), case.thin, 2, steps=1, progress=False)
    np.testing.assert_array_equal(r['score_z'], case.thin.z[dropped])
    assert r['metrics']['linear']['psnr_z'].shape == (len(dropped),)

@pytest.fixture(scope='module')
def exported(tmp_path_factory, case):
    out = tmp_path_factory.mktemp('export')
    zero = lambda cond, T: torch.zeros(cond.shape[0], 1, T, *cond.shape[-2:])
    thin = infer_volume(SimpleNamespace(cfg=tiny_cfg()), case.thick, progress=False, predict_fn=zero)
    thin.hu = thin.hu + np.random.default_rng(0).normal(0, 30, thin.hu.shape).astype(np.float32)   # non-integer HU
    ref = dict(PatientID='PID-7', PatientName='Doe^Jane', StudyInstanceUID='1.2.3.4', SeriesInstanceUID='1.2.3.4.5')
    return thin, export_volume(thin, out, reference_meta=ref), export_volume(thin, out / 'copy', reference_meta=ref, copy_patient_tags=True, pngs=False)

def test_dicom_geometry_uids_and_hu(exported):
    thin, res, _ = exported
    files = sorted(res['dicom'].glob('*.dcm')); dss = [pydicom.dcmread(f) for f in files]
    assert len(dss) == len(thin.z)
    pos = np.array(sorted([[float(v) for v in d.ImagePositionPatient] for d in dss], key=lambda p: p[2]))
    np.testing.assert_allclose(pos, thin.positions(), atol=1e-3)
    np.testing.assert_allclose(np.diff(pos[:, 2]), 1.0, atol=1e-4)
    for d in dss:
        np.testing.assert_allclose([float(v) for v in d.ImageOrientationPatient], [1, 0, 0, 0, 1, 0])
        np.testing.assert_allclose([float(v) for v in d.PixelSpacing], thin.spacing[1:], rtol=1e-6)
        assert float(d.SliceThickness) == 1.0 and list(d.ImageType)[:2] == ['DERIVED', 'SECONDARY']
        assert d.PatientID == 'ANONYMOUS' and str(d.PatientName) == 'ANONYMOUS'                   # de-identified by default
        assert d.StudyInstanceUID != '1.2.3.4' and d.SeriesInstanceUID != '1.2.3.4.5'
    assert len({d.SOPInstanceUID for d in dss}) == len(dss) and len({d.SeriesInstanceUID for d in dss}) == 1
    back = read_series(res['dicom'])
    np.testing.assert_allclose(back.z, thin.z, atol=1e-3)
    assert np.abs(back.hu - thin.hu).max() <= 0.5 + 1e-3                                         # HU rounded to integers

def test_copy_patient_tags(exported):
    d = pydicom.dcmread(sorted(exported[2]['dicom'].glob('*.dcm'))[0])
    assert d.PatientID == 'PID-7' and str(d.PatientName) == 'Doe^Jane' and d.SeriesInstanceUID != '1.2.3.4.5'

def test_nifti_affine_matches_dicom(exported):
    thin, res, _ = exported
    img = nib.load(res['nifti'])
    dss = sorted((pydicom.dcmread(f) for f in res['dicom'].glob('*.dcm')), key=lambda d: float(d.ImagePositionPatient[2]))
    o = np.array([float(v) for v in dss[0].ImageOrientationPatient]); dy, dx = (float(v) for v in dss[0].PixelSpacing)
    p0, p1 = (np.array([float(v) for v in d.ImagePositionPatient]) for d in dss[:2])
    lps = np.eye(4); lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = o[:3] * dx, o[3:] * dy, p1 - p0, p0
    np.testing.assert_allclose(img.affine, np.diag([-1, -1, 1, 1]) @ lps, atol=1e-3)
    assert img.shape == thin.hu.shape[::-1]
    np.testing.assert_allclose(np.asarray(img.dataobj).transpose(2, 1, 0), thin.hu, atol=1e-3)   # float NIfTI: exact
    for png in res['png']: assert png.stat().st_size > 1000
