"""Offline zero-shot image classification with class names from classes.json.

The runtime imports numpy, onnxruntime, Pillow, sentencepiece and tokenizers only; every
model-specific constant comes from the model folder's manifest.json.
"""

__version__ = "0.1.0"
