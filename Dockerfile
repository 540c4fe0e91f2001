# syntax=docker/dockerfile:1
# v2v-diffusion GPU image: the committed, exported library (v2v_diffusion/) installed with its dependencies
# from settings.ini, plus the notebooks and k8s helpers at /opt/v2v. See docs/DEPLOY.md.
#
# The image ships the exported package as committed (CI's `make sync-check` guarantees it matches nbs/);
# it does not run nbdev_export, so nbdev is not needed in the image.
#
# Base: PyTorch 2.9.1 built for CUDA 12.6, the newest CUDA line whose PyTorch builds still include Volta
# (sm_70, V100); it runs on A100/H100 too. Its torch satisfies settings.ini's `torch>=2.4`; the install
# pins it with a constraint, so pip keeps it (checked below). Node driver: >= 560 (CUDA 12.6), or >= 525 with
# minor-version compatibility. To pin by digest:
#   docker buildx imagetools inspect pytorch/pytorch:2.9.1-cuda12.6-cudnn9-runtime
ARG BASE_IMAGE=pytorch/pytorch:2.9.1-cuda12.6-cudnn9-runtime
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="v2v-diffusion" \
      org.opencontainers.image.description="Thick-slice to thin-slice CT with latent video diffusion" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg

# Non-root user; uid/gid 1000 match runAsUser/fsGroup in k8s/ (an existing uid/gid 1000, e.g. Ubuntu 24.04's
# `ubuntu`, is replaced).
RUN set -eux; \
    old_user="$(getent passwd 1000 | cut -d: -f1)"; if [ -n "$old_user" ]; then userdel "$old_user"; fi; \
    old_group="$(getent group 1000 | cut -d: -f1)"; if [ -n "$old_group" ]; then groupdel "$old_group"; fi; \
    groupadd --gid 1000 v2v; \
    useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash v2v

WORKDIR /opt/v2v

# Dependencies first, from settings.ini alone: this layer is rebuilt only when settings.ini changes, not on every
# commit. torch is pinned to the base image's build (a constraint), so pip can never swap in another torch.
COPY settings.ini ./
RUN set -eux; \
    python -c 'import torch; print(f"torch=={torch.__version__}")' > /tmp/constraints.txt; \
    python -c 'import configparser, shlex; c = configparser.ConfigParser(delimiters=["="]); c.read("settings.ini"); \
               print("\n".join(shlex.split(c["DEFAULT"]["requirements"])))' > /tmp/requirements.txt; \
    pip install --no-cache-dir -c /tmp/constraints.txt -r /tmp/requirements.txt; \
    rm /tmp/requirements.txt

# The package itself (changes with every commit): no dependency left to fetch.
COPY setup.py pyproject.toml README.md ./
COPY v2v_diffusion/ v2v_diffusion/
RUN set -eux; \
    pip install --no-cache-dir --no-deps -c /tmp/constraints.txt .; \
    python -c 'import sys, torch; b = open("/tmp/constraints.txt").read().strip().split("==")[1]; \
               sys.exit(0 if torch.__version__ == b else f"pip replaced torch {b} by {torch.__version__}")'; \
    python -c 'import v2v_diffusion, v2v_diffusion.config, v2v_diffusion.cli'; \
    pip freeze > /opt/v2v/image-requirements.txt; \
    rm -rf build ./*.egg-info /tmp/constraints.txt

# The rest of the repo (notebooks for papermill, k8s/bin helpers, data_samples for the demo); .dockerignore
# keeps out .git, .venv, runs, caches and anything secret-looking.
COPY . /opt/v2v/

USER 1000:1000
ENV HOME=/home/v2v

# Smoke test on a GPU node: docker run --rm --gpus all IMAGE  (tiny phantom demo, a minute or two)
CMD ["v2v-demo", "--out", "/tmp/v2v-demo"]
