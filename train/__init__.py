"""Making model folders for the runtime in zeroshot/: building the default, exporting, quantizing, vocabulary data.

train/ may import the runtime; the runtime never imports train/.
"""
