"""Static checks of the Dockerfile and .dockerignore (no Docker engine needed).

What this cannot check offline: that the base image tag exists on Docker Hub, that `docker build` succeeds
(pip resolving settings.ini's requirements against the base image), and that the image runs on a GPU.
`test_docker_build` does the build where a Docker engine is reachable (slow; skipped otherwise).
"""
import configparser, os, re, shutil, subprocess
from pathlib import Path

import pytest, yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
SECRET = re.compile(r'KEY|TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL', re.I)


def parse_dockerfile(text: str) -> list:
    "[(INSTRUCTION, arguments)] with comments dropped and continuation lines joined."
    out, buf = [], ''
    for line in text.splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith('#')): continue
        if buf and s.startswith('#'): continue                   # comment inside a continued instruction
        if s.endswith('\\'): buf += s[:-1] + ' '; continue
        buf += s
        instr, _, args = buf.partition(' ')
        out.append((instr.upper(), args.strip())); buf = ''
    assert not buf, "dangling line continuation"
    return out

INSTRS = parse_dockerfile((ROOT / 'Dockerfile').read_text())

def _all(name): return [a for i, a in INSTRS if i == name]

def _arg_defaults() -> dict:
    return {k: v for k, _, v in (a.partition('=') for a in _all('ARG'))}

def base_image() -> str:
    (frm,) = _all('FROM')
    return re.sub(r'\$\{?(\w+)\}?', lambda m: _arg_defaults()[m.group(1)], frm.split()[0])

def _settings():
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini')
    return cfg['DEFAULT']


def test_base_image_pinned_cuda_pytorch():
    img = base_image()
    m = re.fullmatch(r'pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+)\.(\d+)-cudnn(\d+)-runtime(@sha256:[0-9a-f]{64})?', img)
    assert m, f"base image {img!r} is not a pinned pytorch/pytorch:<torch>-cuda<x.y>-cudnn<n>-runtime tag"
    torch_v, cuda = Version(m.group(1)), (int(m.group(2)), int(m.group(3)))
    (torch_req,) = [Requirement(r) for r in _settings()['requirements'].split() if r.startswith('torch')]
    assert torch_v in torch_req.specifier, f"base torch {torch_v} does not satisfy {torch_req}: pip would replace it"
    # PyTorch's CUDA 12.8+ builds dropped Volta (sm_70) from 2.11 on (and CUDA 13 has none): V100 needs <= 12.6
    assert cuda <= (12, 6), f"CUDA {cuda} builds of PyTorch do not run on V100"


def test_install_steps():
    runs = ' '.join(_all('RUN'))
    assert re.search(r'pip install [^;&]*\s\.(\s|$|;)', runs), "the package is installed from the repo with `pip install .`"
    assert 'nbdev_export' not in runs, "the image ships the committed, exported package (documented choice)"
    assert 'torch.__version__' in runs, "the build checks pip kept the base image's torch"
    k8s = '\n'.join(p.read_text() for p in (ROOT / 'k8s').rglob('*.yaml'))
    if 'jupyter nbconvert' in k8s and 'nbconvert' not in _settings()['requirements']:
        assert 'nbconvert' in runs, "the visualization Job runs `jupyter nbconvert`: install nbconvert"
    copies = ' '.join(_all('COPY') + _all('ADD'))
    for f in ('settings.ini', 'setup.py', 'pyproject.toml', 'README.md', 'v2v_diffusion/'):
        assert f in copies, f"{f} is needed by `pip install .`"
    assert re.search(r'(^|\s)\.\s+/opt/v2v/?(\s|$)', copies), "the repo (nbs/, k8s/bin/) is at /opt/v2v (CONTRACT.md)"
    assert _all('WORKDIR')[-1] == '/opt/v2v'


def test_runtime_env_and_user():
    env = ' '.join(_all('ENV'))
    assert re.search(r'PYTHONUNBUFFERED=1', env)
    user = _all('USER')[-1].split(':')[0]
    assert user not in ('root', '0'), "the image runs as a non-root user"
    # the manifests run as the same uid (files on the volume stay readable by every job)
    uids = {int(u) for p in (ROOT / 'k8s').rglob('*.yaml') for u in re.findall(r'runAsUser:\s*(\d+)', p.read_text())}
    assert uids == {int(user)}
    assert 'useradd' in ' '.join(_all('RUN')) and f'--uid {user}' in ' '.join(_all('RUN'))
    cmd = _all('CMD')[-1]
    scripts = [l.split('=')[0].strip() for l in _settings()['console_scripts'].splitlines() if l.strip()]
    assert re.match(r'\["([\w-]+)"', cmd).group(1) in scripts


def test_no_secrets():
    for instr in ('ENV', 'ARG'):
        for a in _all(instr):
            for key, val in re.findall(r'(\w+)=("[^"]*"|\S*)', a) or [(a.split()[0], '')]:
                assert not SECRET.search(key), f"{instr} {key}: secrets do not belong in the image"
    for a in _all('COPY') + _all('ADD'):
        srcs = [s for s in a.split() if not s.startswith('--')][:-1]
        assert not any(s.rstrip('/').lstrip('./') in ('.git', '.venv', '.env') for s in srcs), a
    assert not _all('ADD'), "use COPY (ADD fetches URLs / unpacks archives)"


# ---------------------------------------------------------------- .dockerignore: what the build context holds
def _ignore_patterns() -> list:
    pats = []
    for line in (ROOT / '.dockerignore').read_text().splitlines():
        line = line.strip()
        if not line or line.startswith('#'): continue
        neg = line.startswith('!')
        pat = os.path.normpath(line.lstrip('!').lstrip('/'))
        rx = ''
        for part in re.split(r'(\*\*/?|\*|\?)', pat):
            rx += {'**/': '(.*/)?', '**': '.*', '*': '[^/]*', '?': '[^/]'}.get(part, re.escape(part))
        pats.append((neg, re.compile(rx + r'\Z')))
    return pats

def _excluded(rel: str, pats) -> bool:
    "Docker semantics: last matching pattern wins; a pattern matching a parent directory excludes the path."
    parts = rel.split('/')
    out = False
    for neg, rx in pats:
        if any(rx.match('/'.join(parts[:i])) for i in range(1, len(parts) + 1)): out = not neg
    return out

def build_context() -> set:
    pats, files = _ignore_patterns(), set()
    has_neg = any(n for n, _ in pats)
    for d, dirs, fs in os.walk(ROOT):
        reld = os.path.relpath(d, ROOT)
        if not has_neg:
            dirs[:] = [x for x in dirs if not _excluded(os.path.normpath(os.path.join(reld, x)), pats)]
        for f in fs:
            rel = os.path.normpath(os.path.join(reld, f))
            if not _excluded(rel, pats): files.add(rel)
    return files

def test_dockerignore_keeps_secrets_and_junk_out():
    pats = _ignore_patterns()
    for p in ('.git/config', '.venv/bin/python', '.env', 'v2v_diffusion/__pycache__/x.pyc', 'runs/demo/a.pt',
              'cache/splits.json', 'data/APE/case.zip', 'nbs/.ipynb_checkpoints/x.ipynb', 'k8s/id_rsa', 'x.pem',
              'v2v_diffusion.egg-info/PKG-INFO', '.kube/config'):
        assert _excluded(p, pats), p
    ctx = build_context()
    assert not [f for f in ctx if f.startswith(('.git/', '.venv/')) or '__pycache__' in f or f.endswith('.pt')]
    needed = {'settings.ini', 'setup.py', 'pyproject.toml', 'README.md', 'v2v_diffusion/__init__.py',
              'k8s/bin/forward_sigterm.py', 'nbs/00_config.ipynb'}
    assert needed <= ctx, needed - ctx
    for nb in (ROOT / 'nbs').glob('*.ipynb'): assert f'nbs/{nb.name}' in ctx


@pytest.mark.slow
def test_docker_build():
    if not shutil.which('docker') or subprocess.run(['docker', 'info'], capture_output=True, timeout=30).returncode:
        pytest.skip("no Docker engine reachable (only the docker client is installed): the build is not verified here")
    r = subprocess.run(['docker', 'build', '-t', 'v2v-diffusion:test', str(ROOT)], capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run(['docker', 'run', '--rm', 'v2v-diffusion:test', 'v2v-train', '--help'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def test_dependencies_are_a_layer_of_their_own():
    "settings.ini alone feeds the dependency install, so a commit to the package does not re-download them."
    steps = [(i, a) for i, a in INSTRS if i in ('COPY', 'RUN')]
    dep = next(k for k, (i, a) in enumerate(steps) if i == 'RUN' and 'requirements' in a and 'pip install' in a)
    copies_before = [a for i, a in steps[:dep] if i == 'COPY']
    assert copies_before == ['settings.ini ./'], copies_before
    pkg = next(k for k, (i, a) in enumerate(steps) if i == 'COPY' and 'v2v_diffusion/' in a)
    assert pkg > dep
    assert '--no-deps' in next(a for i, a in steps[pkg:] if i == 'RUN' and 'pip install' in a)
