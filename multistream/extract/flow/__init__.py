"""Dense optical flow: the backends' registry (`registry`), the interface they implement (`base`), OpenCV's
CPU backends (`opencv`), RAFT (`raft`), flow computed elsewhere (`precomputed`), and flow's uint8 storage form
(`codec`)."""

from multistream.extract.flow.registry import (
    BACKENDS,
    FlowBackend,
    flow_backend,
    make_flow_estimator,
    register,
)

__all__ = ["BACKENDS", "FlowBackend", "flow_backend", "make_flow_estimator", "register"]
