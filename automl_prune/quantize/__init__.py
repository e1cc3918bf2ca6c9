"""Quantization: fake-quantized layers, their size and BOPs, packed storage, int8 realisation."""
