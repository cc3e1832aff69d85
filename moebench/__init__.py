"""moebench: benchmark and profile Mixture-of-Experts design choices."""

from moebench.layers import build_layer
from moebench.spec import LayerSpec

__version__ = "0.1.0"
__all__ = ["LayerSpec", "build_layer", "__version__"]
