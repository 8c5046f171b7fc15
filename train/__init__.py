"""Building, exporting, validating and quantizing models for the runtime in zeroshot/.

train/ may import the runtime; the runtime never imports train/.
"""
