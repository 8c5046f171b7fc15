# The Yandex ML Cup 2021 CV judge's environment, as far as the rules describe it:
# CPython 3.8 with torch 1.9 (CPU), numpy 1.20, Pillow 8.3, sentencepiece 0.1.95 and
# OpenCV, and no onnxruntime. Nothing from this repository goes in: the submission
# archive is mounted at run time (see the README, "Checking the archive in Docker").
#   docker build -t zeroshot-judge - < Dockerfile
# Our machines have no Docker engine; CI runs the local judge (contest/judge.py) instead.
FROM python:3.8-slim-bullseye

RUN apt-get update \
    && apt-get install -y --no-install-recommends unzip \
    && rm -rf /var/lib/apt/lists/*

RUN pip install --no-cache-dir --disable-pip-version-check \
        -f https://download.pytorch.org/whl/torch_stable.html \
        torch==1.9.0+cpu \
        numpy==1.20.3 \
        Pillow==8.3.2 \
        sentencepiece==0.1.95 \
        opencv-python-headless==4.5.3.56 \
    && python -c "import importlib.util as u; assert u.find_spec('onnxruntime') is None"

WORKDIR /submission
