"""Compression: calibrated mixed-precision quantization to GGUF block formats.

    blocks/      the block formats (our own encoders, byte-exact to ggml-common.h)
"""
