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


def test_the_paper_config_is_the_paper_where_it_states_a_value():
    """configs/ucf101.yaml: every key the paper sets has the paper's value, but the flow (FlowNet 2.0 cannot be
    had); the demo departs where it shrinks the paper, and each departure says why."""
    from multistream.report.paper import PAPER, explain

    paper = load_config(CONFIG_DIR / "ucf101.yaml")
    assert [d.key for d in PAPER if d.departs(paper)] == ["flow.backend"]
    mc, rnn, tune = paper.motion_cnn, paper.rnn, paper.tune
    assert (mc.batch_size, mc.epochs, mc.patience, mc.norm, mc.sync_bn, mc.lr) == (32, None, 10, "paper", True, 1e-3)
    assert (rnn.batch_size, rnn.epochs, rnn.patience, tune.scheduler, tune.epochs) == (32, None, 10, "none", None)
    assert paper.tune.gpus_per_trial > 0 and paper.fusion.C is None and paper.fusion.l2 == 0.01
    text = explain(paper)
    assert "flow.backend = raft_small   paper (§IV.B): FlowNet 2.0" in text and "precomputed" in text
    demo = [d for d in PAPER if d.departs(load_config())]
    assert {"motion_cnn.norm", "motion_cnn.epochs", "tune.scheduler", "spatial.model"} <= {d.key for d in demo}
    assert all(d.why for d in PAPER if d.key)  # every departure and every choice says why
    for d in PAPER:  # every key of the registry is one of the config's
        if d.key:
            d.value(paper)


def test_explain_from_the_command_line_and_docs_paper_md_is_its_table():
    import subprocess
    import sys

    from multistream.report.paper import markdown

    done = subprocess.run([sys.executable, "-m", "multistream.config", "--explain", str(CONFIG_DIR / "ucf101.yaml"),
                           "--set", "motion_cnn.batch_size=64"], capture_output=True, text=True, check=True)
    assert "motion_cnn.batch_size = 64   paper (§V.D): 32" in done.stdout
    assert "Not stated by the paper, the project's choice" in done.stdout and "RuntimeWarning" not in done.stderr
    table = markdown(load_config(CONFIG_DIR / "ucf101.yaml"))
    assert table in (CONFIG_DIR.parent / "docs" / "paper.md").read_text()


def test_the_switches_default_to_the_demo_s_behaviour():
    mc = load_config().motion_cnn
    assert (mc.norm, mc.sync_bn, mc.amp, mc.epoch) == ("cnn_m", False, True, "stacks_per_video")
    demo = load_config()
    assert demo.sampling.max_fraction == 1.0 and demo.tune.scheduler == "asha" and demo.fusion.C is None
    assert demo.flow.backend == "dis" and demo.validation.fraction == 0.15


@pytest.mark.parametrize("override, value", [
    ("fusion.C=auto", "auto"), ("fusion.C=0.5", 0.5), ("fusion.C=1e-2", 0.01), ("fusion.C=null", None),
    ("motion_cnn.amp=auto", "auto"), ("motion_cnn.amp=false", False), ("motion_cnn.epochs=null", None),
])
def test_union_keys_take_each_of_their_kinds(override, value):
    key, _ = override.split("=")
    section, leaf = key.split(".")
    assert getattr(getattr(load_config(overrides=[override]), section), leaf) == value


@pytest.mark.parametrize("override, message", [
    ("fusion.C=-1", "fusion.C: must be positive"), ("fusion.C=big", "is not one of auto"),
    ("motion_cnn.amp=fp8", "motion_cnn.amp"), ("tune.epochs=null", "ASHA needs an epoch budget"),
    ("tune.epochs=4", "at least grace_period"),
    ("sampling.max_fraction=0", "sampling.max_fraction"), ("motion_cnn.norm=lrn", "motion_cnn.norm"),
])
def test_bad_switches_name_their_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])
