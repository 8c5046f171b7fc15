"""Bring your own CLIP-family checkpoint: ``python -m train.export`` (train/export/cli.py).

sources.py loads a checkpoint through its own API; onnx_text.py / onnx_image.py
export a torch tower and prove parity; build.py writes and validates the model
folder; variants.py, trim.py and plan.py make smaller copies, trim the
vocabulary and project size and time against the judge's limits.
"""
