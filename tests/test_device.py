"""The one check of a CUDA model against the GPUs its pool is given, and the checks of every job that use it."""

import pytest

from multistream.config import ConfigError, load_config
from multistream.device import check_gpu_given


@pytest.mark.parametrize("overrides,model,key,message", [
    (["rnn.device=cuda"], "rnn", "ray.train.use_gpu",
     "rnn.device: cuda, but ray.train.use_gpu is false: its Train workers are given no GPU"),
    (["rnn.device=cuda"], "rnn", "tune.gpus_per_trial",
     "rnn.device: cuda, but tune.gpus_per_trial is 0: its trials are given no GPU"),
    (["motion_cnn.device=cuda", "ray.embed.num_gpus=0"], "motion_cnn", "ray.embed.num_gpus",
     "motion_cnn.device: cuda, but ray.embed.num_gpus is 0: its actors are given no GPU"),
])
def test_cuda_without_a_gpu_is_refused_naming_both_keys(overrides, model, key, message):
    with pytest.raises(ConfigError) as refused:
        check_gpu_given(load_config(overrides=overrides), model, key)
    assert str(refused.value) == message


def test_a_gpu_given_or_a_device_that_needs_none_passes():
    check_gpu_given(load_config(overrides=["rnn.device=cuda", "ray.embed.num_gpus=0.5"]), "rnn", "ray.embed.num_gpus")
    check_gpu_given(load_config(overrides=["rnn.device=cuda", "ray.train.use_gpu=true"]), "rnn", "ray.train.use_gpu")
    for device in ("auto", "cpu"):
        check_gpu_given(load_config(overrides=[f"anomaly.device={device}"]), "anomaly", "ray.write.num_gpus")


def test_every_jobs_check_refuses_with_the_same_error():
    from multistream.extract.processor import check_gpu_placement
    from multistream.predict.batch import check_predict_devices
    from multistream.train.motion.recipe import check_motion_resources
    from multistream.train.rnn.heads import check_rnn_devices

    no_gpus = ["ray.fused=null", "ray.embed.num_gpus=0", "ray.write.num_gpus=0", "ray.train.use_gpu=false"]
    for check, key in ((check_gpu_placement, "audio"), (check_predict_devices, "anomaly"),
                       (check_motion_resources, "motion_cnn"), (check_rnn_devices, "rnn")):
        with pytest.raises(ConfigError, match=rf"^{key}.device: cuda, but \S+ is (0|false): its .* are given no GPU$"):
            check(load_config(overrides=[*no_gpus, f"{key}.device=cuda"]))
