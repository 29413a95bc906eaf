"""Quantizer helpers shared by the built-in backends: integer ranges and MSE-clipped weight ranges."""
