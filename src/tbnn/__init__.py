"""tbnn: accurate, compact binary CNNs with trained binarization."""
__version__ = "0.1.0"
