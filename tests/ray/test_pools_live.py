"""The pool-fit check where the job runs it: `run_extract` on the test session's Ray (2 CPUs), before any work."""

import pytest

from multistream.config import ConfigError, load_config
from multistream.ray.extract import run_extract
from tests.support.helpers import write_test_video


def test_pools_that_do_not_fit_the_live_cluster_stop_the_job_before_any_video(ray_session, tmp_path):
    (tmp_path / "in" / "walk").mkdir(parents=True)
    write_test_video(tmp_path / "in" / "walk" / "a.mp4", frames=8)
    out = tmp_path / "run"
    cfg = load_config(overrides=[f"paths.input={tmp_path / 'in'}", "paths.demo=false", f"paths.output={out}",
                                 "ray.fused={num_cpus: 1, max_actors: 3}"])
    with pytest.raises(ConfigError, match=r"^ray: .* on the live cluster .*in all 2 CPUs, 0 GPUs: .*ray.fused 3 x"):
        run_extract(cfg)
    assert not (out / "videos").exists() or not any((out / "videos").iterdir())
