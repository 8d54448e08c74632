"""multistream: spatial, temporal and audio video embeddings, fused for action recognition and anomalies.

Importing the package first makes torchvision (and so timm) importable beside a CPU-only torch build
(see `multistream.compat`, which prepares them when they are first imported); every other module can then
import them freely.
"""

from multistream import compat

compat.apply_on_import()

__version__ = "0.1.0"
