"""moebench: benchmark and profile Mixture-of-Experts design choices."""

from moebench.layers import build_layer
from moebench.spec import LayerSpec
from moebench.store import load_results

__version__ = "0.1.0"
__all__ = ["LayerSpec", "build_layer", "load_results", "__version__"]
