"""Offline checks of the Kubernetes manifests in k8s/ (no cluster needed).

Every kustomization is rendered (pure-python renderer below; compared with `kubectl kustomize` when kubectl is
installed) and each object is validated against the Kubernetes JSON schemas that kubernetes-validate ships,
the PyTorchJob against a schema of the Kubeflow training-operator v1 CRD fields. The commands in the
containers are parsed: each program must be a console script of settings.ini, papermill on a notebook in nbs/
with parameter names from its `parameters` cell, jupyter nbconvert, torchrun or tensorboard, each with flags
its parser knows. Paths must agree across jobs: one PVC, one mount path, data/cache/runs under it.
"""
import ast, configparser, contextlib, copy, io, json, os, re, shlex, shutil, signal, subprocess, sys, time
from pathlib import Path

import jsonschema, pytest, yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / 'k8s'
IMAGE_DIR = '/opt/v2v'                  # CONTRACT.md: the repo in the image
PVC_MOUNT = '/workspace/pvc'            # CONTRACT.md: the PVC in every pod
PVC_NAME = 'v2v-pvc'
DATA, CACHE, RUNS = f'{PVC_MOUNT}/data', f'{PVC_MOUNT}/cache', f'{PVC_MOUNT}/runs'
K8S_VERSIONS = ('1.28', '1.33')         # oldest supported (podFailurePolicy on by default) and a recent one
GPUS = ('v100', 'a100')

# CONTRACT.md (lead's notes) — the fallback while the notebooks / cli.py are not written yet.
CONTRACT_NB_PARAMS = {
    '20_train_papermill.ipynb': {'preset', 'overrides', 'data_root', 'output_dir', 'stage', 'max_steps', 'resume'},
    '21_compare_reconstructions.ipynb': {'checkpoint', 'data_root', 'case_id', 'output_dir'},
    '22_compare_samples.ipynb': {'checkpoint', 'data_root', 'case_id', 'output_dir', 'seeds'},
}
CONTRACT_FLAGS = {
    'v2v-phantom': {'--out', '--cases', '--size', '--thin-slices', '--seed'},
    'v2v-prepare': {'--root', '--cache-dir', '--workers'},
    'v2v-train': {'--config', '--preset', '--set', '--data-root', '--output-dir', '--stage', '--max-steps', '--resume'},
    'v2v-infer': {'--checkpoint', '--input', '--case', '--out', '--steps', '--eta', '--seed', '--overlap', '--copy-patient-tags'},
    'v2v-eval': {'--checkpoint', '--root', '--split', '--out', '--steps'},
    'v2v-demo': {'--out'}, 'v2v-bench': {'--out'},
}
SHELL_BUILTINS = {'set', 'mkdir', 'echo', 'exit', '[', 'test', 'sleep', 'true', 'date'}


# ---------------------------------------------------------------- a small kustomize (the features k8s/ uses)
KNOWN_KUSTOMIZATION_KEYS = {'apiVersion', 'kind', 'resources', 'components', 'patches', 'images'}

def load_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]

def _ptr(path: str) -> list:
    return [p.replace('~1', '/').replace('~0', '~') for p in path.lstrip('/').split('/')]

def json_patch(doc, ops: list):
    "RFC 6902 add/replace/remove/test, as kustomize applies them."
    for op in ops:
        *parents, last = _ptr(op['path'])
        node = doc
        for p in parents: node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list) and last != '-': last = int(last)
        kind = op['op']
        if kind == 'test':
            assert node[last] == op['value'], f"patch test failed at {op['path']}: {node[last]!r} != {op['value']!r}"
        elif kind == 'add':
            if isinstance(node, list): node.append(op['value']) if last == '-' else node.insert(last, op['value'])
            else: node[last] = copy.deepcopy(op['value'])
        elif kind == 'replace':
            node[last]  # must exist
            node[last] = copy.deepcopy(op['value'])
        elif kind == 'remove': del node[last]
        else: raise NotImplementedError(f"json patch op {kind}")
    return doc

def _matches(obj, target: dict) -> bool:
    group, _, version = obj['apiVersion'].rpartition('/')
    if any(k in target and target[k] != v for k, v in
           (('group', group), ('version', version), ('kind', obj['kind']), ('name', obj['metadata']['name']))): return False
    labels = obj['metadata'].get('labels', {})
    for sel in filter(None, target.get('labelSelector', '').split(',')):
        k, v = sel.split('=')
        if labels.get(k) != v: return False
    return True

def _set_images(node, images: list):
    if isinstance(node, dict):
        for key, val in node.items():
            if key in ('containers', 'initContainers') and isinstance(val, list):
                for c in val:
                    name, _, tag = c['image'].partition(':')
                    for im in images:
                        if im['name'] == name:
                            c['image'] = f"{im.get('newName', name)}:{im.get('newTag', tag)}"
            else: _set_images(val, images)
    elif isinstance(node, list):
        for v in node: _set_images(v, images)

def render(directory: Path, objs=None) -> list:
    "Render a kustomization (or apply a component to `objs`)."
    k = yaml.safe_load((directory / 'kustomization.yaml').read_text())
    unknown = set(k) - KNOWN_KUSTOMIZATION_KEYS
    assert not unknown, f"{directory}: renderer does not implement {unknown}"
    objs = [] if objs is None else objs
    for r in k.get('resources', []):
        p = (directory / r).resolve()
        objs.extend(render(p) if p.is_dir() else load_docs(p))
    for c in k.get('components', []):
        render((directory / c).resolve(), objs)
    for patch in k.get('patches', []):
        ops = yaml.safe_load((directory / patch['path']).read_text()) if 'path' in patch else yaml.safe_load(patch['patch'])
        assert isinstance(ops, list), "only JSON6902 patches are implemented"
        hits = [o for o in objs if _matches(o, patch['target'])]
        for o in hits: json_patch(o, ops)
    if k.get('images'): _set_images(objs, k['images'])
    return objs

def kustomizations() -> dict:
    "Every non-component kustomization under k8s/, by relative dir."
    out = {}
    for f in sorted(K8S.rglob('kustomization.yaml')):
        if yaml.safe_load(f.read_text()).get('kind') != 'Component': out[str(f.parent.relative_to(K8S))] = f.parent
    return out

KUSTOMIZATIONS = kustomizations()
RENDERED = {name: render(d) for name, d in KUSTOMIZATIONS.items()}
# what users apply (the GPU-agnostic bases train/visualize/infer/ddp are only reached through overlays)
APPLIED = {n: objs for n, objs in RENDERED.items() if n in ('storage', 'shell', 'prepare') or n.startswith('overlays/')}

def _key(o): return (o['kind'], o['metadata']['name'])


def test_layout():
    assert set(APPLIED) >= {'storage', 'shell', 'prepare'} | {f'overlays/{g}{s}' for g in GPUS
                                                            for s in ('', '/visualize', '/infer', '/ddp')}
    kinds = {_key(o) for objs in APPLIED.values() for o in objs}
    assert kinds >= {('PersistentVolumeClaim', PVC_NAME), ('Job', 'v2v-prepare'), ('Job', 'v2v-train'),
                     ('Job', 'v2v-visualize'), ('Job', 'v2v-infer'), ('PyTorchJob', 'v2v-train-ddp'),
                     ('Deployment', 'v2v-tensorboard'), ('Service', 'v2v-tensorboard'), ('Pod', 'v2v-shell')}
    # the PVC is applied once on its own: deleting a training overlay must not delete the data
    for name, objs in APPLIED.items():
        if name != 'storage': assert 'PersistentVolumeClaim' not in {o['kind'] for o in objs}, name


@pytest.mark.skipif(not shutil.which('kubectl'), reason="kubectl not installed: rendered with the pure-python renderer only")
@pytest.mark.parametrize('name', sorted(KUSTOMIZATIONS))
def test_renderer_matches_kubectl_kustomize(name):
    out = subprocess.run(['kubectl', 'kustomize', str(KUSTOMIZATIONS[name])], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    theirs = sorted(yaml.safe_load_all(out.stdout), key=_key)
    assert sorted(RENDERED[name], key=_key) == theirs


# ---------------------------------------------------------------- schemas
def _k8s_validate(obj, where):
    import kubernetes_validate
    for v in K8S_VERSIONS:
        try: kubernetes_validate.validate(obj, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{where}: {obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {v}: "
                        f"{'/'.join(map(str, e.absolute_path))}: {e.message}")

_INT = {'type': 'integer'}
_NAME = {'type': 'string', 'pattern': r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$', 'maxLength': 63}
# Kubeflow training-operator v1 CRD (manifests/base/crds/kubeflow.org_pytorchjobs.yaml, v1.7-v1.9): the fields
# of PyTorchJob that exist; unknown fields are rejected (kubectl's strict field validation does the same).
PYTORCHJOB_SCHEMA = {
    'type': 'object', 'additionalProperties': False, 'required': ['apiVersion', 'kind', 'metadata', 'spec'],
    'properties': {
        'apiVersion': {'const': 'kubeflow.org/v1'}, 'kind': {'const': 'PyTorchJob'},
        'metadata': {'type': 'object', 'required': ['name'], 'properties': {
            'name': _NAME, 'labels': {'type': 'object', 'additionalProperties': {'type': 'string'}},
            'annotations': {'type': 'object', 'additionalProperties': {'type': 'string'}}}},
        'spec': {'type': 'object', 'additionalProperties': False, 'required': ['pytorchReplicaSpecs'], 'properties': {
            'nprocPerNode': {'type': 'string'},
            'elasticPolicy': {'type': 'object', 'additionalProperties': False, 'properties': {
                'minReplicas': _INT, 'maxReplicas': _INT, 'maxRestarts': _INT, 'nProcPerNode': _INT,
                'rdzvBackend': {'type': 'string'}, 'rdzvHost': {'type': 'string'}, 'rdzvId': {'type': 'string'},
                'rdzvPort': _INT, 'rdzvConf': {'type': 'array'}, 'standalone': {'type': 'boolean'},
                'metrics': {'type': 'array'}}},
            'runPolicy': {'type': 'object', 'additionalProperties': False, 'properties': {
                'activeDeadlineSeconds': {'type': 'integer', 'minimum': 1}, 'backoffLimit': {'type': 'integer', 'minimum': 0},
                'cleanPodPolicy': {'enum': ['All', 'Running', 'None']}, 'managedBy': {'type': 'string'},
                'schedulingPolicy': {'type': 'object'}, 'suspend': {'type': 'boolean'},
                'ttlSecondsAfterFinished': {'type': 'integer', 'minimum': 0}}},
            'pytorchReplicaSpecs': {
                'type': 'object', 'minProperties': 1, 'propertyNames': {'enum': ['Master', 'Worker']},
                'additionalProperties': {'type': 'object', 'additionalProperties': False, 'required': ['template'], 'properties': {
                    'replicas': {'type': 'integer', 'minimum': 0},
                    'restartPolicy': {'enum': ['Always', 'OnFailure', 'Never', 'ExitCode']},
                    'template': {'type': 'object'}}}}}}}}

def _pod_specs(obj) -> list:
    "(where, pod spec) of a workload."
    k = obj['kind']
    if k == 'Pod': return [('', obj['spec'])]
    if k in ('Job', 'Deployment'): return [('', obj['spec']['template']['spec'])]
    if k == 'PyTorchJob': return [(r, s['template']['spec']) for r, s in obj['spec']['pytorchReplicaSpecs'].items()]
    return []

ALL_OBJECTS = [(name, o) for name, objs in RENDERED.items() for o in objs]

@pytest.mark.parametrize('name,obj', ALL_OBJECTS, ids=[f"{n}:{o['kind']}/{o['metadata']['name']}" for n, o in ALL_OBJECTS])
def test_schema(name, obj):
    if obj['kind'] == 'PyTorchJob':
        jsonschema.validate(obj, PYTORCHJOB_SCHEMA)
        for rtype, spec in obj['spec']['pytorchReplicaSpecs'].items():  # the pod templates are core PodTemplateSpecs
            _k8s_validate({'apiVersion': 'v1', 'kind': 'PodTemplate', 'metadata': {'name': f'{obj["metadata"]["name"]}-{rtype.lower()}'},
                           'template': spec['template']}, f'{name} {rtype}')
            tspec = spec['template']['spec']
            main = tspec['containers'][0]
            assert main['name'] == 'pytorch', "the training operator needs the container named 'pytorch'"
            assert {'name': 'pytorchjob-port', 'containerPort': 23456} in main.get('ports', [])
            assert 'restartPolicy' not in tspec, "set restartPolicy on the replica spec, not the pod"
    else:
        _k8s_validate(obj, name)


def test_pytorchjob_schema_rejects_unknown_fields():
    job = copy.deepcopy(next(o for _, o in ALL_OBJECTS if o['kind'] == 'PyTorchJob'))
    job['spec']['pytorchReplicaSpecs']['Chief'] = job['spec']['pytorchReplicaSpecs']['Worker']
    with pytest.raises(jsonschema.ValidationError): jsonschema.validate(job, PYTORCHJOB_SCHEMA)


# ---------------------------------------------------------------- workloads
def _containers(obj): return [(w, c) for w, spec in _pod_specs(obj) for c in spec['containers']]

def _env(container) -> dict:
    "Container env with Kubernetes' $(VAR) expansion of earlier variables."
    env = {}
    for e in container.get('env', []):
        env[e['name']] = re.sub(r'\$\((\w+)\)', lambda m: env.get(m.group(1), m.group(0)), e.get('value', ''))
    return env

def test_volumes_agree():
    claims = {o['metadata']['name'] for _, o in ALL_OBJECTS if o['kind'] == 'PersistentVolumeClaim'}
    assert claims == {PVC_NAME}
    for name, obj in ALL_OBJECTS:
        for where, spec in _pod_specs(obj):
            vols = {v['name']: v for v in spec.get('volumes', [])}
            pvc_vols = [n for n, v in vols.items() if 'persistentVolumeClaim' in v]
            assert [vols[n]['persistentVolumeClaim']['claimName'] for n in pvc_vols] == [PVC_NAME], (name, where)
            for c in spec['containers']:
                mounts = {m['mountPath']: m for m in c.get('volumeMounts', [])}
                assert mounts[PVC_MOUNT]['name'] == pvc_vols[0], (name, where)
                assert all(m['name'] in vols for m in mounts.values())
                assert c.get('workingDir', IMAGE_DIR).startswith((IMAGE_DIR, PVC_MOUNT))


def test_security_and_image():
    images = set()
    for name, obj in ALL_OBJECTS:
        for where, spec in _pod_specs(obj):
            sc = spec['securityContext']
            assert sc['runAsNonRoot'] is True and sc['runAsUser'] == 1000 and sc['fsGroup'] == 1000, (name, where)
            for c in spec['containers']:
                assert c['securityContext']['allowPrivilegeEscalation'] is False
                assert 'resources' in c and 'memory' in c['resources']['limits'], (name, c['name'])
                if name in APPLIED: images.add(c['image'])
    assert len(images) == 1 and re.fullmatch(r'[\w.\-/:]+/v2v-diffusion:[\w.\-]+', images.pop())


def _gpu_workloads():
    for name, objs in APPLIED.items():
        for o in objs:
            if o['metadata'].get('labels', {}).get('v2v-diffusion/gpu') == 'true': yield name, o

def test_gpu_workloads():
    from v2v_diffusion.config import PRESETS
    seen = set()
    for name, obj in _gpu_workloads():
        gpu = name.split('/')[1]
        seen.add((gpu, obj['kind'], obj['metadata']['name']))
        for where, spec in _pod_specs(obj):
            terms = spec['affinity']['nodeAffinity']['requiredDuringSchedulingIgnoredDuringExecution']['nodeSelectorTerms']
            products = terms[0]['matchExpressions'][0]['values']
            assert products and all(gpu.upper() in p for p in products), (name, products)
            assert {'key': 'nvidia.com/gpu', 'operator': 'Exists', 'effect': 'NoSchedule'} in spec['tolerations']
            shm = [v for v in spec['volumes'] if v.get('emptyDir', {}).get('medium') == 'Memory']
            c = spec['containers'][0]
            assert any(m['mountPath'] == '/dev/shm' and m['name'] == shm[0]['name'] for m in c['volumeMounts'])
            assert int(c['resources']['limits']['nvidia.com/gpu']) >= 1
            env = _env(c)
            assert env['V2V_PRESET'] == gpu and gpu in PRESETS and env['V2V_RUN'] == gpu
            if obj['kind'] == 'PyTorchJob':
                assert int(env['V2V_GPUS_PER_POD']) == int(c['resources']['limits']['nvidia.com/gpu'])
    assert {(g, 'Job', 'v2v-train') for g in GPUS} <= seen and {(g, 'PyTorchJob', 'v2v-train-ddp') for g in GPUS} <= seen


def _torch_containers():
    "(where, container, pod kind) of every applied container that runs torch: everything but TensorBoard."
    for name, objs in APPLIED.items():
        for o in objs:
            for where, c in _containers(o):
                if 'tensorboard' not in c['command']: yield f"{name}:{o['kind']}/{o['metadata']['name']}{where}", c, o['kind']

def test_torch_threads_follow_the_cpu_allotment():
    "V2V_NUM_THREADS comes from this container's CPU limit (its request where it has none), OMP_NUM_THREADS from it."
    seen = 0
    for where, c, kind in _torch_containers():
        env = {e['name']: e for e in c.get('env', [])}
        ref = env['V2V_NUM_THREADS']['valueFrom']['resourceFieldRef']
        res = c['resources']
        wanted = 'limits.cpu' if 'cpu' in res.get('limits', {}) else 'requests.cpu'
        assert ref == {'containerName': c['name'], 'resource': wanted, 'divisor': '1'}, where
        assert 'cpu' in res[wanted.split('.')[0]], where
        if kind == 'PyTorchJob': assert 'OMP_NUM_THREADS' not in env, f"{where}: torchrun shares the CPUs out"
        else: assert env['OMP_NUM_THREADS']['value'] == '$(V2V_NUM_THREADS)', where
        seen += 1
    assert seen >= 8


def _one(name, kind, obj_name):
    return next(o for o in APPLIED[name] if _key(o) == (kind, obj_name))

@pytest.mark.parametrize('gpu', GPUS)
def test_training_job_policies(gpu):
    job = _one(f'overlays/{gpu}', 'Job', 'v2v-train')
    s, pod = job['spec'], job['spec']['template']['spec']
    assert 1 <= s['backoffLimit'] <= 10
    assert s['activeDeadlineSeconds'] >= 3 * 86400, "training runs for days"
    assert pod['restartPolicy'] == 'Never'
    assert {'action': 'Ignore', 'onPodConditions': [{'type': 'DisruptionTarget', 'status': 'True'}]} in s['podFailurePolicy']['rules']
    assert pod['terminationGracePeriodSeconds'] >= 120, "time for the SIGTERM checkpoint"
    assert pod['containers'][0]['resources']['limits']['nvidia.com/gpu'] == 1
    ddp = _one(f'overlays/{gpu}/ddp', 'PyTorchJob', 'v2v-train-ddp')
    assert ddp['spec']['runPolicy']['activeDeadlineSeconds'] >= 3 * 86400
    for rs in ddp['spec']['pytorchReplicaSpecs'].values():
        assert rs['template']['spec']['terminationGracePeriodSeconds'] >= 120


def test_tensorboard_service_reaches_deployment():
    objs = {_key(o): o for o in APPLIED['overlays/v100']}
    dep, svc = objs['Deployment', 'v2v-tensorboard'], objs['Service', 'v2v-tensorboard']
    labels = dep['spec']['template']['metadata']['labels']
    assert all(labels.get(k) == v for k, v in svc['spec']['selector'].items())
    assert dep['spec']['selector']['matchLabels'].items() <= labels.items()
    ports = {p['name'] for p in dep['spec']['template']['spec']['containers'][0]['ports']}
    assert all(p['targetPort'] in ports for p in svc['spec']['ports'])


# ---------------------------------------------------------------- commands in the containers
OPERATOR_ENV = {'WORLD_SIZE': '2', 'RANK': '0', 'MASTER_ADDR': 'v2v-train-ddp-master-0', 'MASTER_PORT': '23456'}

def _expand(tok: str, env: dict) -> str:
    tok = re.sub(r'\$\(date [^)]*\)', '20260101T000000Z', tok)
    def var(m):
        name = m.group(1) or m.group(2)
        assert name in env, f"${name} is not defined in the container"
        return env[name]
    return re.sub(r'\$\{(\w+)\}|\$(\w+)', var, tok)

def invocations(argv: list, env: dict) -> list:
    "Programs a container runs: [argv, ...] after unwrapping bash -c, exec, forward_sigterm.py and torchrun."
    if argv[:2] in (['bash', '-c'], ['sh', '-c']):
        env, out = dict(env), []
        for line in argv[2].replace('\\\n', ' ').splitlines():
            lex = shlex.shlex(line, posix=True, punctuation_chars=True)
            lex.whitespace_split, lex.commenters = True, ''
            seg, segs, toks = [], [], list(lex)
            it = iter(toks)
            for t in it:
                if t in (';', '&&', '||', '|', '&'): segs.append(seg); seg = []
                elif t in ('>', '>&', '>>', '<', '2>'): next(it, None)   # redirection target
                else: seg.append(t)
            segs.append(seg)
            for seg in segs:
                while seg and seg[0] in ('if', 'then', 'else', 'fi', 'do', 'done', '!', 'exec'): seg = seg[1:]
                if not seg: continue
                if re.fullmatch(r'\w+=.*', seg[0]) and len(seg) == 1:
                    k, v = seg[0].split('=', 1); env[k] = _expand(v, env); continue
                out += invocations([_expand(t, env) for t in seg], env)
        return out
    if argv[0] in ('python', 'python3') and argv[1].endswith('forward_sigterm.py'):
        return [argv[:2]] + invocations(argv[2:], env)
    if argv[0] == 'torchrun':
        from torch.distributed.run import get_args_parser
        a = get_args_parser().parse_args(argv[1:])
        assert a.no_python, "torchrun must start the console script with --no-python"
        return [argv] + invocations([a.training_script] + a.training_script_args, env)
    return [argv]

def _workload_commands():
    for name, objs in APPLIED.items():
        for o in objs:
            for where, c in _containers(o):
                env = {**_env(c), **(OPERATOR_ENV if o['kind'] == 'PyTorchJob' else {})}
                for argv in invocations(c['command'] + c.get('args', []), env):
                    yield f"{name}:{o['kind']}/{o['metadata']['name']}{'/' + where if where else ''}", argv

COMMANDS = list(_workload_commands())

def _console_scripts() -> dict:
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini')
    lines = [l.strip() for l in cfg['DEFAULT']['console_scripts'].splitlines() if l.strip()]
    return {n.strip(): t.strip() for n, t in (l.split('=', 1) for l in lines)}

def _repo_path(p: str) -> Path:
    assert p.startswith(IMAGE_DIR + '/'), p
    return ROOT / p[len(IMAGE_DIR) + 1:]

def _flags(argv) -> set: return {a.split('=')[0] for a in argv if a.startswith('-')}

def test_every_program_is_known():
    scripts = _console_scripts()
    progs = {argv[0] for _, argv in COMMANDS}
    for where, argv in COMMANDS:
        p = argv[0]
        assert (p in scripts or p in SHELL_BUILTINS or p in ('papermill', 'jupyter', 'torchrun', 'tensorboard')
                or (p in ('python', 'python3') and _repo_path(argv[1]).is_file())), f"{where}: unknown program {argv}"
    assert {'v2v-prepare', 'v2v-train', 'v2v-infer', 'papermill', 'jupyter', 'torchrun', 'tensorboard'} <= progs

def test_cli_flags_match_contract():
    for where, argv in COMMANDS:
        if argv[0].startswith('v2v-'):
            assert _flags(argv[1:]) <= CONTRACT_FLAGS[argv[0]], f"{where}: {argv}"

def _help_flags(func_path: str):
    import importlib
    mod_name, fn = func_path.split(':')
    try: mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e: pytest.skip(f"{mod_name} not written yet ({e}); flags checked against CONTRACT.md only")
    if not hasattr(mod, fn): pytest.skip(f"{mod_name}.{fn} not written yet; flags checked against CONTRACT.md only")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e: getattr(mod, fn)(['--help'])
    if e.value.code not in (0, None):      # e.g. a module the command needs is not exported yet
        pytest.skip(f"`{func_path} --help` exited with {e.value.code!r}: flags checked against CONTRACT.md only")
    return set(re.findall(r'(?<![\w-])(--?[A-Za-z][\w-]*)', buf.getvalue()))

@pytest.mark.parametrize('script', ['v2v-prepare', 'v2v-train', 'v2v-infer'])
def test_cli_flags_exist_in_argparse(script):
    used = [(w, argv) for w, argv in COMMANDS if argv[0] == script]
    assert used
    known = _help_flags(_console_scripts()[script])
    for where, argv in used:
        assert _flags(argv[1:]) <= known, f"{where}: {sorted(_flags(argv[1:]) - known)} not in `{script} --help`"

def _papermill_calls():
    from papermill.cli import papermill as cmd, _resolve_type
    for where, argv in COMMANDS:
        if argv[0] == 'papermill':
            ctx = cmd.make_context('papermill', argv[1:])      # click rejects unknown options
            params = {k: _resolve_type(v) for k, v in ctx.params['parameters']}
            for y in ctx.params['parameters_yaml']: params.update(yaml.safe_load(y))
            yield where, ctx.params, params

def _parameters_cell(nb_path: Path) -> dict:
    nb = json.loads(nb_path.read_text())
    cells = [c for c in nb['cells'] if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(cells) == 1, (
        f"{nb_path.name}: expected one cell tagged `parameters`, found {len(cells)}. Without the tag papermill injects "
        "the job's parameters at the top and the notebook's own assignments override them (the k8s jobs would run "
        "the defaults, e.g. preset 'tiny' on data_samples). nbdev_clean drops cell tags unless settings.ini has "
        "`allowed_cell_metadata_keys = tags`.")
    out = {}
    for node in ast.parse(''.join(cells[0]['source'])).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                try: out[t.id] = ast.literal_eval(node.value)
                except ValueError: out[t.id] = None
    return out

@pytest.mark.parametrize('nb', sorted(CONTRACT_NB_PARAMS))
def test_papermill_parameters(nb):
    calls = [(w, ctx, params) for w, ctx, params in _papermill_calls() if ctx['notebook_path'].endswith('/' + nb)]
    assert calls, f"no job runs {nb}"
    for where, ctx, params in calls:
        assert ctx['kernel'] == 'python3' and ctx['output_path'].startswith(RUNS + '/')
        assert set(params) <= CONTRACT_NB_PARAMS[nb], f"{where}: {set(params) - CONTRACT_NB_PARAMS[nb]}"
    path = _repo_path(calls[0][1]['notebook_path'])
    if not path.exists(): pytest.skip(f"nbs/{nb} not written yet: parameter names checked against CONTRACT.md only")
    cell = _parameters_cell(path)
    for where, ctx, params in calls:
        missing = set(params) - set(cell)
        assert not missing, f"{where}: papermill parameters {missing} not in the parameters cell of {nb}"
        for k, v in params.items():
            if cell[k] is not None: assert type(v) is type(cell[k]), f"{where}: {k}={v!r} vs default {cell[k]!r}"

def test_nbconvert_and_tensorboard_flags():
    from nbconvert.nbconvertapp import NbConvertApp
    from tensorboard import program
    n = 0
    for where, argv in COMMANDS:
        if argv[0] == 'jupyter':
            assert argv[1] == 'nbconvert'
            for f in _flags(argv[2:]):
                assert f.lstrip('-') in NbConvertApp.aliases or f.lstrip('-') in NbConvertApp.flags, f"{where}: {f}"
            assert argv[argv.index('--to') + 1] == 'html'
            assert argv[argv.index('--config') + 1] == f'{IMAGE_DIR}/k8s/bin/static_html.py', f"{where}: static HTML, no CDN"
            n += 1
        if argv[0] == 'tensorboard':
            program.TensorBoard().configure(argv=argv)            # argparse: SystemExit on an unknown flag
            assert argv[argv.index('--logdir') + 1] == RUNS
            n += 1
    assert n >= 2


def test_paths_agree_across_jobs():
    "Every path under the PVC is in data/, cache/ or runs/; files in the image exist in the repo; jobs agree."
    roots, caches = set(), set()
    for where, argv in COMMANDS:
        for i, a in enumerate(argv):
            for p in re.findall(r'(/workspace[^\s,"\']*|/opt/v2v[^\s,"\']*)', a):
                if p.startswith('/workspace'):
                    assert re.match(rf'{PVC_MOUNT}/(data|cache|runs)(/|$)', p), f"{where}: {p}"
                elif '.' in Path(p).name and Path(p).name not in CONTRACT_NB_PARAMS:  # those: test_papermill_parameters
                    assert _repo_path(p).is_file(), f"{where}: {p} not in the repo"
            prev = argv[i - 1] if i else ''
            if prev in ('--root', '--data-root', '--input') or prev == 'data_root': roots.add(a)
            if prev == '--cache-dir' or a.startswith('data.cache_dir='): caches.add(a.split('=')[-1])
    for _, _, params in _papermill_calls():
        roots.add(params['data_root'])
        caches.update(o.split('=', 1)[1] for o in params.get('overrides', []) if o.startswith('data.cache_dir='))
    assert roots == {DATA} and caches == {CACHE}

@pytest.mark.parametrize('gpu', GPUS)
def test_visualize_and_infer_read_the_training_run(gpu):
    train = _one(f'overlays/{gpu}', 'Job', 'v2v-train')
    calls = {w: p for w, c, p in _papermill_calls() if w.startswith(f'overlays/{gpu}:')}
    (out_dir,) = {p['output_dir'] for w, p in calls.items() if 'v2v-train' in w}
    assert out_dir == f'{RUNS}/{gpu}' and calls and all(p.get('resume', 'auto') == 'auto' for p in calls.values())
    ckpts = {p['checkpoint'] for w, p in calls.items() if 'v2v-visualize' in w}
    infer = [a for w, a in COMMANDS if w.startswith(f'overlays/{gpu}/infer:') and a[0] == 'v2v-infer']
    ckpts |= {a[a.index('--checkpoint') + 1] for a in infer}
    assert ckpts == {out_dir}
    ddp = [a for w, a in COMMANDS if w.startswith(f'overlays/{gpu}/ddp:') and a[0] == 'v2v-train']
    assert {a[a.index('--output-dir') + 1] for a in ddp} == {out_dir + '-ddp'}
    assert all(a[a.index('--resume') + 1] == 'auto' for a in ddp)
    assert train['spec']['template']['spec']['containers'][0]['command'][2].count('forward_sigterm.py') == 1


# ---------------------------------------------------------------- the SIGTERM relay used by the training pods
CHILD = r'''
import os, signal, subprocess, sys, time
if sys.argv[1] == 'launcher':      # like papermill: starts a worker in its own session and waits for it
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    p = subprocess.Popen([sys.executable, __file__, 'worker', sys.argv[2]], start_new_session=True)
    sys.exit(p.wait())
else:                              # like the kernel running train(): checkpoint on SIGTERM, then exit
    def on_term(*_):
        open(sys.argv[2], 'w').write('checkpoint'); sys.exit(1)
    signal.signal(signal.SIGTERM, on_term)
    open(sys.argv[2] + '.ready', 'w').close()
    time.sleep(60)
'''

def test_forward_sigterm_reaches_the_worker(tmp_path):
    script, marker = tmp_path / 'child.py', tmp_path / 'ckpt'
    script.write_text(CHILD)
    p = subprocess.Popen([sys.executable, str(K8S / 'bin' / 'forward_sigterm.py'), sys.executable, str(script), 'launcher', str(marker)])
    deadline = time.time() + 20
    while not Path(str(marker) + '.ready').exists():
        assert time.time() < deadline and p.poll() is None
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 143
    assert marker.read_text() == 'checkpoint'


def test_deploy_doc_commands_point_at_kustomizations():
    doc = (ROOT / 'docs' / 'DEPLOY.md').read_text()
    dirs = set(re.findall(r'kubectl (?:apply|delete|kustomize)[^\n]*?-k (k8s/[\w/.-]+)', doc))
    dirs |= set(re.findall(r'kubectl kustomize (k8s/[\w/.-]+)', doc))
    assert {'k8s/storage', 'k8s/prepare', 'k8s/overlays/v100', 'k8s/overlays/a100'} <= dirs
    for d in dirs: assert (ROOT / d / 'kustomization.yaml').is_file(), d
