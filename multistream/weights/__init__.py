"""Pretrained weights: named in the config, fetched once per node into a cache, verified, read safely.

    state = load_state_dict("timm", "spatial.weights", cfg.spatial)   # any weights spec (see .sources)
    cfg = resolve_all(cfg)                                             # on the driver, before any video

    python -m multistream.weights prepare --config configs/ucf101.yaml --to s3://bucket/weights/
    python -m multistream.weights verify s3://bucket/weights/
"""

from multistream.weights.fetch import WeightsError, cache_dir
from multistream.weights.files import parse_state_dict, read_state_dict
from multistream.weights.packaged import efficientnet_lite0_state_dict, map_efficientnet_lite_keys
from multistream.weights.sources import load_pca_params, load_state_dict, resolve_all, weight_keys

__all__ = ["WeightsError", "cache_dir", "efficientnet_lite0_state_dict", "load_pca_params", "load_state_dict",
           "map_efficientnet_lite_keys", "parse_state_dict", "read_state_dict", "resolve_all", "weight_keys"]
