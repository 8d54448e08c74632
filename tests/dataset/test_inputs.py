"""The demo dataset is written only where the demo belongs."""

import pytest

from multistream.config import load_config
from multistream.dataset.inputs import prepare_input
from multistream.store.preflight import JobRefused
from tests.support.helpers import write_test_video


def test_a_folder_of_the_user_s_own_files_is_refused_and_left_alone(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    write_test_video(archive / "mine.mp4", frames=5)
    cfg = load_config(None, [f"paths.input={archive}"])  # --set paths.input without --input: paths.demo stays on
    with pytest.raises(JobRefused, match="paths.demo"):
        prepare_input(cfg)
    assert sorted(p.name for p in archive.iterdir()) == ["mine.mp4"]


@pytest.mark.parametrize("exists", [False, True])
def test_the_demo_is_written_into_a_missing_or_empty_folder(tmp_path, exists):
    target = tmp_path / "demo"
    if exists:
        target.mkdir()
    prepare_input(load_config(None, [f"paths.input={target}"]))
    assert (target / "labels.csv").is_file() and len(list(target.glob("*/*"))) + len(list(target.glob("*.*"))) > 10
