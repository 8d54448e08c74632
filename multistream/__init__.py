"""multistream: spatial, temporal and audio video embeddings, fused for action recognition and anomalies.

Importing the package first makes torchvision/timm/torchaudio importable on CPU-only torch builds
(see `multistream.compat`); every other module can then import them freely.
"""

from multistream import compat

compat.apply()

__version__ = "0.1.0"
