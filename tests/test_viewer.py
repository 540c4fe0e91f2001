"Drive the SliceViewer widgets from Python (no display) and check what they show."
import time
import numpy as np
import pytest
from v2v_diffusion.viewer import (SliceViewer, ViewVolume, from_png, window_to_uint8, diff_to_rgb, extract_slice,
                                  nearest_index, slice_metrics)
from v2v_diffusion.windowing import WINDOWS


def toy(n=40, size=48, dz=1.0, seed=0):
    "A chest-like toy: body, two lungs changing size with z, a vessel wandering along z, noise."
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    rng, vol = np.random.default_rng(seed), []
    for k in range(n):
        img = np.full((size, size), -1000.0); img[(xx / 0.9) ** 2 + (yy / 0.7) ** 2 < 1] = 30
        r = 0.25 + 0.1 * np.sin(k / 6)
        for cx in (-0.42, 0.42): img[((xx - cx) / r) ** 2 + (yy / 0.45) ** 2 < 1] = -850
        img[((xx - 0.3 * np.sin(k / 5)) ** 2 + (yy + 0.3) ** 2) < 0.01] = 300
        vol.append(img + rng.normal(0, 10, img.shape))
    return ViewVolume(np.stack(vol), np.arange(n) * dz + 100.0, (dz, 0.7, 0.7))


@pytest.fixture
def vols():
    thin = toy()
    thick = ViewVolume(thin.hu.reshape(8, 5, 48, 48).mean(1), thin.z.reshape(8, 5).mean(1), (5.0, 0.7, 0.7))
    gen = ViewVolume(thin.hu.copy(), thin.z, thin.spacing); gen.hu[20:30, 10:20, 10:20] += 150      # a bright error
    return dict(thick=thick, generated=gen, truth=thin)


@pytest.fixture
def viewer(vols):
    return SliceViewer({'thick input': vols['thick'], 'generated': vols['generated'], 'ground truth': vols['truth']},
                       reference='ground truth', title='test')


def shown(v, name): return from_png(v.images[name].value)


def test_initial_view_is_the_middle_slice(viewer, vols):
    assert viewer.slider.value == 120.0 and viewer.slider.min == 100.0 and viewer.slider.max == 139.0
    np.testing.assert_array_equal(shown(viewer, 'ground truth'), window_to_uint8(vols['truth'].hu[20]))
    assert 'reference' in viewer.labels['ground truth'].value


def test_slider_moves_every_panel_and_label(viewer, vols):
    before = {n: viewer.images[n].value for n in viewer.volumes}
    label = viewer.labels['generated'].value
    viewer.slider.value = 124.4
    for n in ('generated', 'ground truth'): assert bytes(viewer.images[n].value) != bytes(before[n]), n
    assert bytes(viewer.images['thick input'].value) == bytes(before['thick input'])   # same slab (120-124 mm)
    np.testing.assert_array_equal(shown(viewer, 'generated'), window_to_uint8(vols['generated'].hu[24]))
    np.testing.assert_array_equal(shown(viewer, 'thick input'), window_to_uint8(vols['thick'].hu[4]))
    assert viewer.labels['generated'].value != label and 'z 124.0 mm' in viewer.labels['generated'].value
    assert 'z 122.0 mm' in viewer.labels['thick input'].value
    assert viewer.play.value == 24


def test_labels_show_per_slice_metrics(viewer, vols):
    m = slice_metrics(vols['generated'], vols['truth'])
    viewer.slider.value = 125.0                              # inside the error: finite PSNR
    assert f"PSNR {m['psnr'][25]:.2f} dB" in viewer.labels['generated'].value
    assert f"SSIM {m['ssim'][25]:.3f}" in viewer.labels['generated'].value
    viewer.slider.value = 105.0                              # outside it: identical slice
    assert 'PSNR inf dB' in viewer.labels['generated'].value and 'SSIM 1.000' in viewer.labels['generated'].value
    mt = slice_metrics(vols['thick'], vols['truth'])
    assert f"PSNR {mt['psnr'][5]:.2f} dB" in viewer.labels['thick input'].value


def test_presets_and_custom_window(viewer, vols):
    viewer.preset.value = 'lung'
    assert (viewer.center.value, viewer.width.value) == (WINDOWS['lung'].center, WINDOWS['lung'].width)
    np.testing.assert_array_equal(shown(viewer, 'ground truth'), window_to_uint8(vols['truth'].hu[20], 'lung'))
    viewer.center.value = 0.0
    assert viewer.preset.value == 'custom'
    np.testing.assert_array_equal(shown(viewer, 'ground truth'), window_to_uint8(vols['truth'].hu[20], (0, 1500)))
    viewer.width.value = 400.0; viewer.center.value = 40.0     # typed by hand, equals a preset
    assert viewer.preset.value == 'mediastinum'
    viewer.preset.value = 'seed'
    np.testing.assert_array_equal(shown(viewer, 'ground truth'), window_to_uint8(vols['truth'].hu[20], 'seed'))


def test_difference_toggle(viewer, vols):
    viewer.slider.value = 125.0
    assert viewer.colorbar.layout.display == 'none'
    viewer.diff.value = True
    d = shown(viewer, 'generated')
    assert d.shape == (48, 48, 3) and viewer.colorbar.layout.display == '' and viewer.colorbar.value
    np.testing.assert_array_equal(d, diff_to_rgb(vols['generated'].hu[25] - vols['truth'].hu[25], 200.0))
    assert d[12:18, 12:18, 0].min() > 150 and d[12:18, 12:18, 2].max() < 120          # +150 HU: red
    assert shown(viewer, 'ground truth').ndim == 2                                     # the reference stays grey
    cb = viewer.colorbar.value
    viewer.diff_range.value = 1000.0
    assert viewer.colorbar.value != cb and shown(viewer, 'generated')[15, 15, 1] > d[15, 15, 1]   # paler at ±1000 HU
    viewer.diff.value = False
    assert shown(viewer, 'generated').ndim == 2 and viewer.colorbar.layout.display == 'none'


def test_metric_plot_marker_and_metric_choice(viewer):
    p1 = viewer.plot.value
    viewer.slider.value = 130.0
    p2 = viewer.plot.value
    assert p1 != p2                                                    # the marker moved
    cols = np.nonzero((from_png(p1) != from_png(p2)).any((0, 2)))[0]
    mp = viewer.metric_plot()
    assert abs(cols.min() - mp.column(120.0)) <= 2 and abs(cols.max() - mp.column(130.0)) <= 2
    viewer.metric.value = 'ssim'
    assert viewer.plot.value != p2 and viewer.metric_plot() is viewer._plots['ssim']


def test_play_drives_the_slider(viewer):
    viewer.play.value = 3
    assert viewer.slider.value == 103.0 and 'z 103.0 mm' in viewer.labels['ground truth'].value


def test_orientations(viewer, vols):
    viewer.orientation.value = 'coronal'
    assert viewer.slider.description == 'y (mm)' and viewer.slider.max == pytest.approx(47 * 0.7)
    viewer.slider.value = 24 * 0.7
    img = shown(viewer, 'thick input')
    assert img.shape == (57, 48)                                       # 40 rows of 1 mm at 0.7 mm pixels
    np.testing.assert_array_equal(viewer.current['thick input'][0], window_to_uint8(extract_slice(vols['thick'], 24 * 0.7, 'coronal', vols['truth'].z)))
    assert 'y 16.8 mm' in viewer.labels['generated'].value and 'SSIM' in viewer.labels['generated'].value
    viewer.orientation.value = 'sagittal'
    assert viewer.slider.description == 'x (mm)'
    viewer.orientation.value = 'axial'
    assert viewer.slider.description == 'z (mm)' and viewer.slider.min == 100.0


def test_export_png_and_static_fallback(viewer, tmp_path):
    viewer.diff.value = True
    viewer.export_path.value = str(tmp_path / 'a' / 'view.png'); viewer.export_button.click()
    assert 'saved' in viewer.status.value and from_png((tmp_path / 'a' / 'view.png').read_bytes()).shape[0] > 300
    b = viewer._repr_mimebundle_()
    assert {'application/vnd.jupyter.widget-view+json', 'image/png', 'text/plain'} <= set(b)


def test_incomparable_volume_and_errors(vols):
    small = ViewVolume(vols['truth'].hu[:, :32, :32], vols['truth'].z)
    v = SliceViewer({'small': small, 'truth': vols['truth']}, reference='truth')
    v.diff.value = True
    assert shown(v, 'small').ndim == 2 and 'PSNR' not in v.labels['small'].value
    assert v.plot.layout.display == 'none'
    with pytest.raises(KeyError, match='reference'): SliceViewer({'a': small}, reference='b')
    with pytest.raises(ValueError, match='at least one'): SliceViewer({})
    with pytest.raises(ValueError, match='valid: axial'): SliceViewer({'a': small}, orientation='oblique')


@pytest.mark.parametrize('n', [pytest.param(120, id='512x512x120'), pytest.param(300, id='512x512x300', marks=pytest.mark.slow)])
def test_responsive_on_big_volumes(n, monkeypatch):
    "Slider moves on 512×512 volumes never recompute whole volumes (metrics are cached) and stay interactive."
    import v2v_diffusion.viewer as vw
    calls = []
    real = vw.slice_metrics
    monkeypatch.setattr(vw, 'slice_metrics', lambda *a, **k: calls.append(1) or real(*a, **k))
    base = (np.add.outer(np.arange(512), np.arange(512)) % 97 * 10.0 - 400).astype(np.float32)
    hu = np.empty((n, 512, 512), np.float32); hu[:] = base; hu += np.arange(n, dtype=np.float32)[:, None, None]
    z = np.arange(float(n))
    truth, gen, thick = ViewVolume(hu, z, (1.0, 0.7, 0.7)), ViewVolume(hu[::-1], z, (1.0, 0.7, 0.7)), ViewVolume(hu[2::5], z[2::5], (5.0, 0.7, 0.7))
    t0 = time.perf_counter()
    v = SliceViewer({'thick': thick, 'generated': gen, 'truth': truth}, reference='truth')
    build, n_calls = time.perf_counter() - t0, len(calls)
    assert n_calls == 2                                     # one PSNR curve per compared volume, at construction
    times = []
    for p in np.linspace(3, n - 3, 12):
        t0 = time.perf_counter(); v.slider.value = float(p); times.append(time.perf_counter() - t0)
    print(f'{n} slices: build {build:.2f} s, median slider move {np.median(times) * 1000:.0f} ms')
    assert len(calls) == n_calls                            # no whole-volume work per move
    assert np.median(times) < 1.5                           # ~60 ms on an idle 2-core machine; generous for shared CI

def test_open_case_names_what_exists():
    from pathlib import Path
    from v2v_diffusion.viewer import open_case
    data = Path(__file__).resolve().parents[1] / 'data_samples'
    assert open_case(data, 'phantom_001').case_id == 'phantom_001'
    with pytest.raises(KeyError, match="case 'nope' is not under .*phantom_000"): open_case(data, 'nope')
    with pytest.raises(FileNotFoundError): open_case(data / 'missing')


def test_coronal_positions_are_patient_coordinates(vols):
    "The coronal slider runs over the patient's y (mm, from the origin); volumes without geometry take the reference's."
    from dataclasses import replace
    truth = replace(vols['truth'], origin=(-16.8, -20.0, 100.0), orientation=(1, 0, 0, 0, 1, 0))
    v = SliceViewer({'generated': vols['generated'], 'truth': truth}, reference='truth')
    v.orientation.value = 'coronal'
    assert (v.slider.min, round(v.slider.max, 6)) == (-20.0, round(-20.0 + 47 * 0.7, 6))
    v.slider.value = -20.0 + 30 * 0.7                                           # row 30 (the error is in rows 10-19)
    np.testing.assert_array_equal(v.plane('generated'), v.plane('truth'))        # the same row of both
    assert 'y 1.0 mm' in v.labels['generated'].value and 'y 1.0 mm' in v.labels['truth'].value
    sides = v.sides['truth']
    assert [sides[s].value.count(f'>{t}<') for s, t in (('top', 'S'), ('left', 'R'), ('right', 'L'))] == [1, 1, 1]
    fig = v.figure()
    assert 'window seed (C 200 / W 1800)' in fig.get_suptitle()
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ['I', 'L', 'R', 'S']
