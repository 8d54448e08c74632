import numpy as np
import pytest

from multistream.config import SamplingConfig
from multistream.extract.sampling import (
    adaptive_positions,
    frame_motion,
    sample_positions,
    sequence_budget,
    uniform_positions,
)


def _valid(positions: np.ndarray, n: int, max_len: int) -> None:
    assert positions.dtype == np.int64
    assert len(positions) == min(n, max_len)
    assert np.all(np.diff(positions) > 0)  # ascending, hence unique
    assert positions.size == 0 or (positions[0] >= 0 and positions[-1] < n)


def test_frame_motion_aligns_pairs_to_frames():
    np.testing.assert_array_equal(frame_motion(np.array([1.0, 2.0, 3.0])), [1.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(frame_motion(np.zeros(0)), [0.0])


@pytest.mark.parametrize("seed", range(25))
def test_adaptive_properties_on_random_motion(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 1000))
    max_len = int(rng.integers(1, 200))
    segments = int(rng.integers(1, 20))
    motion = rng.gamma(0.5, 2.0, n) * (rng.random(n) < 0.8)  # some frames exactly still
    positions = adaptive_positions(motion, max_len, segments)
    _valid(positions, n, max_len)
    np.testing.assert_array_equal(positions, adaptive_positions(motion.copy(), max_len, segments))
    # a segment with more mean motion never gets fewer positions than a calmer one, unless it is taken whole
    s = min(segments, n)
    bounds = np.arange(s + 1) * n // s
    counts = np.histogram(positions, bins=bounds)[0]
    means = np.array([motion[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    for i in range(s):
        for j in range(s):
            if means[i] > means[j]:
                assert counts[i] >= min(counts[j], bounds[i + 1] - bounds[i])


def test_more_positions_where_motion_is_higher():
    motion = np.concatenate([np.full(100, 0.5), np.full(100, 4.0), np.full(100, 1.0)])
    positions = adaptive_positions(motion, max_len=60, segments=3)
    counts = np.histogram(positions, bins=[0, 100, 200, 300])[0]
    # quotas 60 * (0.5, 4, 1) / 5.5 = (5.45, 43.64, 10.91): floors (5, 43, 10) + the 2 largest remainders
    np.testing.assert_array_equal(counts, [5, 44, 11])
    assert np.histogram(uniform_positions(300, 60), bins=[0, 100, 200, 300])[0].tolist() == [20, 20, 20]


def test_positions_are_evenly_spaced_inside_a_segment():
    positions = adaptive_positions(np.ones(100), max_len=10, segments=1)
    np.testing.assert_array_equal(positions, [5, 15, 25, 35, 45, 55, 65, 75, 85, 95])


def test_a_segment_never_gets_more_than_its_frames():
    # all motion in the last tenth: that segment is taken whole, the rest goes to the still segments by length
    motion = np.concatenate([np.zeros(90), np.ones(10)])
    positions = adaptive_positions(motion, max_len=40, segments=10)
    _valid(positions, 100, 40)
    np.testing.assert_array_equal(positions[-10:], np.arange(90, 100))
    assert np.all(np.histogram(positions[:-10], bins=np.arange(0, 91, 10))[0] >= 3)


def test_short_videos_keep_every_frame():
    motion = np.array([0.0, 3.0, 0.1, 0.0, 7.0])
    np.testing.assert_array_equal(adaptive_positions(motion, max_len=180, segments=12), np.arange(5))
    np.testing.assert_array_equal(uniform_positions(5, 180), np.arange(5))


def test_single_frame_and_empty():
    np.testing.assert_array_equal(adaptive_positions(frame_motion(np.zeros(0)), 180, 12), [0])
    assert adaptive_positions(np.zeros(0), 180, 12).size == 0
    assert uniform_positions(0, 180).size == 0


def test_zero_motion_is_uniform():
    np.testing.assert_array_equal(adaptive_positions(np.zeros(500), 40, 7), uniform_positions(500, 40))


@pytest.mark.parametrize("n,max_len", [(1000, 180), (181, 180), (37, 10), (10, 10)])
def test_uniform_positions(n, max_len):
    positions = uniform_positions(n, max_len)
    _valid(positions, n, max_len)
    steps = np.diff(positions)
    assert steps.max() - steps.min() <= 1


def test_sample_positions_follows_config():
    motion = np.concatenate([np.zeros(50), np.full(50, 2.0)])
    adaptive = sample_positions(motion, SamplingConfig(method="adaptive", max_seq_len=20, segments=2))
    uniform = sample_positions(motion, SamplingConfig(method="uniform", max_seq_len=20, segments=2))
    assert np.all(adaptive >= 50) and len(adaptive) == 20
    np.testing.assert_array_equal(uniform, uniform_positions(100, 20))


def test_rejects_invalid_motion():
    with pytest.raises(ValueError, match="non-negative"):
        adaptive_positions(np.array([1.0, -1.0]), 10, 2)
    with pytest.raises(ValueError, match="finite"):
        adaptive_positions(np.array([1.0, np.nan]), 10, 2)


def test_max_fraction_samples_short_clips_adaptively_too():
    """sampling.max_fraction: 1 keeps every frame of a clip shorter than max_seq_len; below 1 a clip keeps that
    share of its frames (rounded), where it moves, and a long video still at most max_seq_len."""
    motion = np.concatenate([np.zeros(60), np.full(60, 2.0)])  # a 120-frame clip, moving in its second half
    every = sample_positions(motion, SamplingConfig(max_seq_len=180, segments=4))
    np.testing.assert_array_equal(every, np.arange(120))
    half = SamplingConfig(max_seq_len=180, segments=4, max_fraction=0.5)
    chosen = sample_positions(motion, half)
    assert len(chosen) == sequence_budget(120, half) == 60 and np.all(chosen >= 60)
    assert sequence_budget(1000, half) == 180 and sequence_budget(1, half) == 1 and sequence_budget(3, half) == 2
    assert len(sample_positions(motion, SamplingConfig(method="uniform", max_seq_len=180, max_fraction=0.25))) == 30
