import pytest

from multistream.config import CONFIG_DIR, Config, ConfigError, load_config


def test_demo_and_paper_configs_load():
    demo = load_config()
    paper = load_config(CONFIG_DIR / "ucf101.yaml")
    assert demo.spatial.model == "tf_efficientnet_lite0"
    assert paper.spatial.model == "inception_resnet_v2" and paper.spatial.image_size == 299
    assert paper.sampling.max_seq_len == 180 and paper.video.max_seconds == 36
    assert paper.flow.size == (320, 240) and paper.motion_cnn.stack_length == 10
    assert (paper.rnn.cell, paper.rnn.bidirectional, paper.rnn.layers, paper.rnn.hidden) == ("gru", True, 2, 512)
    assert paper.rnn.lr == 1e-2 and paper.rnn.min_lr == 1e-6 and paper.rnn.batch_size == 32
    assert paper.fusion.l2 == 1e-2


def test_overrides_are_typed():
    cfg = load_config(overrides=["flow.backend=farneback", "flow.size=[64, 48]", "rnn.bidirectional=false",
                                 "spatial.weights=null", "fusion.l2=0.5"])
    assert cfg.flow.backend == "farneback" and cfg.flow.size == (64, 48)
    assert cfg.rnn.bidirectional is False and cfg.spatial.weights is None and cfg.fusion.l2 == 0.5


def test_optional_section_can_be_set_or_left_out():
    assert load_config().ray.fused.min_actors == 2  # the demo fuses extraction stages (no GPU)
    assert load_config(overrides=["ray.fused=null"]).ray.fused is None
    assert load_config(overrides=["ray.fused.batch_size=4"]).ray.fused.batch_size == 4
    assert Config().ray.fused is None and load_config(overrides=["ray.fused=null", "ray.fused={num_cpus: 3}"]).ray.fused.num_cpus == 3
    with pytest.raises(ConfigError, match="^ray.fused.num_cpus"):
        load_config(overrides=["ray.fused.num_cpus=-1"])
    with pytest.raises(ConfigError, match="^ray.fused.speed"):
        load_config(overrides=["ray.fused={speed: 3}"])


@pytest.mark.parametrize("override, key", [
    ("flow.backend=flownet9", "flow.backend"),
    ("rnn.hidden=many", "rnn.hidden"),
    ("rnn.hiden=3", "rnn.hiden"),
    ("nosection.x=1", "nosection.x"),
    ("rnn.layers=0", "rnn.layers"),
    ("flow.size=[320]", "flow.size"),
    ("rnn.bidirectional=1", "rnn.bidirectional"),
    ("anomaly.target_fpr=1", "anomaly.target_fpr"),
    ("tune.cells=[gru, rnn]", "tune.cells"),
    ("ray.decode.num_gpus=-0.5", "ray.decode.num_gpus"),
    ("ray.decode={min_actors: 2, max_actors: 1}", "ray.decode.max_actors"),
    ("rnn.dropout=1.5", "rnn.dropout"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key}"):
        load_config(overrides=[override])


def test_bad_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("flow:\n  backend: dis\n  speed: 3\n")
    with pytest.raises(ConfigError, match="flow.speed: unknown key"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_config_is_frozen_and_replace_copies():
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.flow.backend = "x"  # type: ignore[misc]
    other = cfg.replace(**{"paths.output": "runs/x"})
    assert other.paths.output == "runs/x" and cfg.paths.output != "runs/x"
