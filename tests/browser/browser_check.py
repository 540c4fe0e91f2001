"""Open a viewer notebook in JupyterLab in headless Chromium, run it, drive the widget, take a screenshot.

    .venv/bin/python tests/browser/browser_check.py [--notebook tests/browser/viewer_demo.ipynb] [--out docs/viewer.png]
    .venv/bin/python tests/browser/browser_check.py --notebook nbs/22_compare_samples.ipynb --out docs/viewer_22.png

The notebooks 21 and 22 open the `make demo` run by default: run `make demo` first.

Needs Debian's chromium (`apt-get install -y chromium chromium-driver`) and Playwright from PyPI
(`pip install playwright`; never `playwright install`: we drive the system browser, offline). JupyterLab runs
headless on a free local port with a random token, a throw-away config/workspace dir, and is stopped at the end.
Exits non-zero (AssertionError) if the widget does not render or does not react.
"""
from __future__ import annotations
import argparse, os, secrets, signal, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get('V2V_CHROMIUM', '/usr/bin/chromium')
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync']


def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def start_lab(tmp: Path, port: int, token: str) -> subprocess.Popen:
    "JupyterLab on 127.0.0.1:port serving the repo, with its own config and workspace folders."
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp / 'config'), JUPYTER_RUNTIME_DIR=str(tmp / 'runtime'),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp / 'workspaces'), JUPYTERLAB_SETTINGS_DIR=str(tmp / 'settings'), OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'jupyter', 'lab', '--no-browser', '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={port}',
           f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={ROOT}', '--ServerApp.port_retries=0',
           '--LabApp.news_url=', f'--LabApp.workspaces_dir={tmp / "workspaces"}']
    if os.geteuid() == 0: cmd.append('--allow-root')          # containers and CI often run as root
    (tmp / 'config' / 'labconfig').mkdir(parents=True, exist_ok=True)           # no 'Jupyter news?' toast over the widget
    (tmp / 'config' / 'labconfig' / 'page_config.json').write_text(
        '{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}')
    plugin = tmp / 'settings' / '@jupyterlab' / 'docmanager-extension'                 # never write the notebook back
    plugin.mkdir(parents=True, exist_ok=True); (plugin / 'plugin.jupyterlab-settings').write_text('{"autosave": false}')
    log = open(tmp / 'lab.log', 'w')
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(120):
        if proc.poll() is not None: raise RuntimeError(f'JupyterLab exited: {(tmp / "lab.log").read_text()[-2000:]}')
        try:
            urllib.request.urlopen(f'http://127.0.0.1:{port}/api/status?token={token}', timeout=2); return proc
        except OSError: time.sleep(0.5)
    raise TimeoutError('JupyterLab did not start in 60 s')


def stop(proc: subprocess.Popen):
    "Stop the JupyterLab we started (its process group: the server and its kernels)."
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(20)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL)


def label(page, i: int) -> str:
    return page.locator('.widget-html-content').nth(i).inner_text()


def run_all(page, url: str):
    "Open the notebook at `url`, run every cell and wait until a viewer image is on the page."
    page.goto(url)
    page.wait_for_selector('.jp-Notebook', timeout=90_000)
    page.wait_for_function("[...document.querySelectorAll('.jp-StatusBar-TextItem')].some(e => /\\| Idle/.test(e.innerText))", timeout=90_000)
    time.sleep(2)                                                   # the kernel connection settles after its first idle
    page.locator('.jp-Notebook .jp-Cell').first.click()
    n = page.locator('.jp-Notebook .jp-Cell').count()
    for i in range(n): page.keyboard.press('Shift+Enter' if i < n - 1 else 'Control+Enter'); time.sleep(0.2)   # no new cell at the end
    page.wait_for_function("[...document.querySelectorAll('.jp-InputPrompt')].some(e => /\\[\\d+\\]/.test(e.innerText))", timeout=90_000)
    page.wait_for_selector('img.widget-image', timeout=int(os.environ.get('V2V_BROWSER_TIMEOUT_MS', 180_000)))


def changed(locator, before: str, what: str, tries: int = 60):
    "Wait until the `src` of image `locator` differs from `before`."
    for _ in range(tries):
        if locator.get_attribute('src') != before: return
        time.sleep(0.5)
    raise AssertionError(f'{what}: the image did not change')


def drive_compare(page, url: str, out: Path, shots: Path) -> dict:
    "Notebook 21 or 22 on the demo run: move the slider, switch the window preset, screenshot; figures must change."
    run_all(page, url)
    page.wait_for_function("[...document.querySelectorAll('.widget-html-content')].some(e => e.innerText.includes('PSNR'))", timeout=120_000)
    ref = page.locator('.widget-html-content', has_text='reference').first
    panel = page.locator('.v2v-panel', has=ref)
    img = panel.locator('img.widget-image').first
    title = page.locator('.widget-html-content', has_text='case').first.inner_text()
    before, src0 = ref.inner_text(), img.get_attribute('src')
    handle = page.locator('.noUi-handle').first
    handle.focus()
    for _ in range(3): handle.press('ArrowRight')                   # three slices on
    page.wait_for_function("(b) => ![...document.querySelectorAll('.widget-html-content')].some(e => e.innerText === b)", arg=before, timeout=30_000)
    changed(img, src0, 'slider')
    after, src1 = ref.inner_text(), img.get_attribute('src')
    page.locator('.widget-dropdown', has_text='window').locator('select').select_option('lung')
    changed(img, src1, 'window preset lung')
    center_box = page.locator('.widget-text', has_text='center').locator('input').first
    for _ in range(40):                                              # the centre field follows the preset
        if center_box.input_value() == '-600': break
        time.sleep(0.25)
    center = center_box.input_value()
    time.sleep(1.0)
    widget = page.locator('.jp-OutputArea-output', has=page.locator('img.widget-image')).first
    widget.scroll_into_view_if_needed()
    out.parent.mkdir(parents=True, exist_ok=True)
    widget.screenshot(path=str(out))
    page.screenshot(path=str(shots / f'page_{out.stem}.png'), full_page=True)
    res = dict(title=title, label_before=before, label_after=after, center=center)
    if page.locator('.widget-html-content', has_text='generated (seed 1)').count():
        res['seed_difference'] = seed_differences(page, widget, out.with_name(f'{out.stem}_seeds.png'))
    return res


def seed_differences(page, widget, out: Path) -> float:
    "Compare with seed 0 and show differences at ±20 HU; the share of coloured pixels in seed 1's panel."
    from v2v_diffusion.viewer import from_png
    seed1 = page.locator('.v2v-panel', has=page.locator('.widget-html-content', has_text='generated (seed 1)'))
    img = seed1.locator('img.widget-image').first
    page.locator('.widget-dropdown', has_text='compare with').locator('select').select_option('generated (seed 0)')
    page.locator('.widget-text', has_text='± HU').locator('input').first.fill('20')
    page.keyboard.press('Enter')
    src = img.get_attribute('src')
    page.locator('button.widget-toggle-button', has_text='difference').click()
    changed(img, src, 'difference to seed 0')
    time.sleep(1.0)
    widget.screenshot(path=str(out))
    rgb = from_png(img.screenshot())[..., :3].astype(int)                 # what the page shows of seed 1
    return float((abs(rgb[..., 0] - rgb[..., 2]) > 40).mean())


def drive(page, url: str, out: Path, shots: Path) -> dict:
    "Run all cells, check the viewer renders, move the slider with the keyboard, toggle differences, screenshot."
    run_all(page, url)
    page.wait_for_function("document.querySelectorAll('img.widget-image').length >= 4", timeout=60_000)
    page.wait_for_function("[...document.querySelectorAll('.widget-html-content')].some(e => e.innerText.includes('PSNR'))", timeout=60_000)
    page.screenshot(path=str(shots / 'page_initial.png'), full_page=True)
    gt = page.locator('.widget-html-content', has_text='reference').first
    gt_img = page.locator('.v2v-panel', has=gt).locator('img.widget-image').first
    before, img_before = gt.inner_text(), gt_img.get_attribute('src')
    handle = page.locator('.noUi-handle').first                     # the z slider (ipywidgets 8 uses noUiSlider)
    handle.focus()
    handle.press('ArrowRight')                                       # one step: 1 mm
    page.wait_for_function("(b) => ![...document.querySelectorAll('.widget-html-content')].some(e => e.innerText === b)", arg=before, timeout=30_000)
    after = gt.inner_text()
    for _ in range(60):                                             # the reference panel's image follows
        if gt_img.get_attribute('src') != img_before: break
        time.sleep(0.5)
    else: raise AssertionError('the reference image did not change after the slider moved')
    play = page.locator('.widget-play button').first                 # Play runs through z in the frontend
    play.click()
    page.wait_for_function("(b) => ![...document.querySelectorAll('.widget-html-content')].some(e => e.innerText === b)", arg=after, timeout=30_000)
    play.click()                                                    # pause
    played = gt.inner_text()
    visible = "[...document.querySelectorAll('img.widget-image')].filter(e => e.offsetParent !== null).length"
    n_visible = page.evaluate(visible)
    page.locator('button.widget-toggle-button', has_text='difference').click()
    page.wait_for_function(f"{visible} > {n_visible}", timeout=30_000)   # the colour bar appears
    time.sleep(1.0)
    widget = page.locator('.jp-OutputArea-output', has=page.locator('img.widget-image')).first
    widget.scroll_into_view_if_needed()
    out.parent.mkdir(parents=True, exist_ok=True)
    widget.screenshot(path=str(out))
    page.screenshot(path=str(shots / 'page_final.png'), full_page=True)
    return dict(label_before=before, label_after=after, label_played=played)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--notebook', default='tests/browser/viewer_demo.ipynb', help='notebook path relative to the repo root')
    p.add_argument('--out', default=str(ROOT / 'docs' / 'viewer.png'), help='screenshot of the widget')
    p.add_argument('--shots', default=None, help='folder for full-page screenshots (default: a temp dir)')
    a = p.parse_args(argv)
    from playwright.sync_api import sync_playwright
    with tempfile.TemporaryDirectory(prefix='v2v-browser-') as td:
        tmp, port, token = Path(td), free_port(), secrets.token_hex(16)
        shots = Path(a.shots) if a.shots else tmp / 'shots'; shots.mkdir(parents=True, exist_ok=True)
        lab = start_lab(tmp, port, token)
        try:
            with sync_playwright() as pw:
                ctx = pw.chromium.launch_persistent_context(str(tmp / 'chromium-profile'), executable_path=CHROMIUM, headless=True,
                                                            args=FLAGS, viewport={'width': 1500, 'height': 1100})
                page = ctx.new_page()
                fn = drive if a.notebook.startswith('tests/browser/') else drive_compare
                try: res = fn(page, f'http://127.0.0.1:{port}/lab/tree/{a.notebook}?token={token}', Path(a.out), shots)
                except Exception:
                    page.screenshot(path=str(shots / 'page_failed.png'), full_page=True)
                    (shots / 'page_failed.html').write_text(page.content())
                    raise
                finally: ctx.close()
        finally: stop(lab)
    print(f"viewer rendered and reacted: {res['label_before']!r} -> {res['label_after']!r}; screenshot {a.out}", flush=True)
    return res


if __name__ == '__main__': main()
