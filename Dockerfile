# The Yandex ML Cup 2021 CV judge's environment, as far as the rules describe it:
# CPython 3.8 with torch 1.9, numpy 1.20, Pillow 8.3, sentencepiece 0.1.95 and
# OpenCV, and no onnxruntime. Nothing from this repository goes in: the judge
# (python -m contest.judge --docker, `make judge-docker`) copies the submission
# archive in at run time. Two ways to the same image (docs/judge.md, "The Docker judge"):
#   with a registry:  docker build -t zeroshot-judge - < Dockerfile
#   offline:          docker build --build-arg BASE=zeroshot-judge-base:<recipe hash> -t zeroshot-judge - < Dockerfile
# where the offline base is a Debian bookworm minbase root filesystem with CPython 3.8,
# made by contest/judge_base.sh (make judge-docker builds and caches it).
ARG BASE=python:3.8-slim
FROM ${BASE}

# torch 1.9.0 from PyPI is the CUDA 10.2 build (831 MB wheel, ~2 GB installed); it runs on
# the CPU. With access to download.pytorch.org, TORCH="torch==1.9.0+cpu -f
# https://download.pytorch.org/whl/torch_stable.html" gives the smaller CPU-only build.
ARG TORCH=torch==1.9.0

RUN command -v unzip >/dev/null \
    || (apt-get update && apt-get install -y --no-install-recommends unzip && rm -rf /var/lib/apt/lists/*)

RUN pip install --no-cache-dir --disable-pip-version-check \
        ${TORCH} \
        numpy==1.20.3 \
        Pillow==8.3.2 \
        sentencepiece==0.1.95 \
        opencv-python-headless==4.5.3.56 \
    && python3 -c "import importlib.util as u; assert u.find_spec('onnxruntime') is None" \
    && python3 -c "import cv2, numpy, PIL, sentencepiece, torch"

WORKDIR /submission
