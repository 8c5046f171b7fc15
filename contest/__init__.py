"""Contest tooling: vendoring wheels, packing the submission archive, the local judge and the benchmark.

contest/ may import the runtime (zeroshot/) and train/; neither imports contest/.
"""
