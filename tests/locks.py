"A folder lock held by another process, for the tests of refused concurrent runs."
import contextlib, subprocess, sys

@contextlib.contextmanager
def lock_held_elsewhere(folder, what: str):
    "Hold `folder_lock(folder, what)` in a child process for the duration of the block."
    code = ("import sys\nfrom v2v_diffusion.checkpoint import folder_lock\n"
            f"with folder_lock({str(folder)!r}, {what!r}):\n    print('locked', flush=True)\n    sys.stdin.read()")
    p = subprocess.Popen([sys.executable, '-c', code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == 'locked'
        yield
    finally:
        p.communicate('')
