#!/usr/bin/env python3
"""Run a command and deliver the pod's SIGTERM to the processes that do the work.

Kubernetes sends SIGTERM to the container's PID 1 only, then SIGKILL after terminationGracePeriodSeconds.
Neither launcher we use passes it on in a way the trainer can use:
- `papermill` runs the notebook in a Jupyter kernel started in its own session; papermill itself dies on
  SIGTERM and the kernel, orphaned, exits without checkpointing;
- `torchrun` forwards it but escalates to SIGKILL after 30 s, which can be shorter than a checkpoint write.
So this wrapper (PID 1 in the training pods) starts the command, and on SIGTERM/SIGINT sends SIGTERM to the
command's children (the notebook kernel, the torchrun ranks), or to the command itself if it has none. The
launcher stays alive, sees the workers finish their checkpoint and exit, and writes its outputs (papermill
saves the executed notebook). The wrapper then exits 143 so that the Job counts the pod as terminated
rather than succeeded, and the next pod resumes (resume=auto).

Usage: python forward_sigterm.py COMMAND [ARG ...]
"""
import os, signal, subprocess, sys


def children(pid: int) -> list[int]:
    "PIDs whose parent is `pid` (Linux /proc)."
    out = []
    for d in os.listdir('/proc'):
        if not d.isdigit(): continue
        try:
            with open(f'/proc/{d}/stat') as f: stat = f.read()
        except OSError: continue
        # Fields after the command name, which is in parentheses and may hold spaces: state, ppid, ...
        fields = stat.rsplit(')', 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid: out.append(int(d))
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    child = subprocess.Popen(argv)
    stopping = []

    def relay(signum, frame):
        if stopping: return                      # once is enough; the grace period is running
        stopping.append(signum)
        targets = children(child.pid) or [child.pid]
        print(f"forward_sigterm: got signal {signum}; sending SIGTERM to {targets}", file=sys.stderr, flush=True)
        for pid in targets:
            try: os.kill(pid, signal.SIGTERM)
            except ProcessLookupError: pass

    signal.signal(signal.SIGTERM, relay)
    signal.signal(signal.SIGINT, relay)
    rc = child.wait()
    return 128 + signal.SIGTERM if stopping else (rc if rc >= 0 else 128 - rc)


if __name__ == '__main__':
    sys.exit(main())
