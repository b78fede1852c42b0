"""The model registry, a leaf module: the model files register into it without importing the
package that imports them (``tbnn.models`` re-exports it)."""
from ..binarize.registry import Registry

MODELS = Registry("model")
