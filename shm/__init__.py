"""Shared memory: segments, the slab allocator, tensor descriptors and the worker wire format.

Tensor bytes live here once; everything else in Inferoxy moves descriptors that point into it.
"""
