"""The pool-fit check (`multistream.ray.pools`) without Ray: cluster descriptions are lists of nodes."""

from pathlib import Path

import pytest

from multistream.config import CONFIG_DIR, ConfigError, load_config
from multistream.ray.pools import Cluster, Node, fit_pools, from_cluster_file, largest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[2]
NODE_8_GPUS = Node(96, 8)
# configs/ucf101.yaml's pools before they were fitted: 32 x 0.2 + 8 x 0.4 + 4 x 0.2 = 10.4 GPUs, fixed maxima
OLD_UCF101 = ["ray.fused=null", "ray.decode={num_cpus: 2, num_gpus: 0.2, min_actors: 2, max_actors: 32}",
              "ray.spatial={num_cpus: 2, num_gpus: 0.4, min_actors: 1, max_actors: 8, batch_size: 4}",
              "ray.audio={num_cpus: 1, num_gpus: 0.2, min_actors: 1, max_actors: 4, batch_size: 8}"]


def ucf101(*overrides: str):
    return load_config(CONFIG_DIR / "ucf101.yaml", list(overrides))


def nodes(count: int, node: Node = NODE_8_GPUS) -> Cluster:
    return Cluster((node,) * count, f"{count} node(s)")


def test_the_old_paper_pools_are_refused_on_an_8_gpu_node_in_one_message_naming_them():
    with pytest.raises(ConfigError) as refused:
        fit_pools(ucf101(*OLD_UCF101), nodes(1))
    message = str(refused.value)
    assert message.startswith("ray: the extraction's pools cannot all run at once") and "\n" not in message
    for ask in ("ray.decode 32 x (2 CPU, 0.2 GPU)", "ray.spatial 8 x (2 CPU, 0.4 GPU)",
                "ray.audio 4 x (1 CPU, 0.2 GPU)", "10.4 GPUs", "in all 96 CPUs, 8 GPUs"):
        assert ask in message, (ask, message)
    assert "max_actors: auto" in message  # the way out


def test_the_shipped_paper_config_fits_one_8_gpu_node_and_grows_with_a_second():
    one, line = fit_pools(ucf101(), nodes(1))
    assert one.ray.fused.max_actors == 16 and one.ray.fused.num_gpus == 0.5  # two a GPU, 8 GPUs
    assert "ray.fused 16 (auto)" in line and "8 GPUs at their maxima" in line
    two, _ = fit_pools(ucf101(), nodes(2))
    assert two.ray.fused.max_actors == 32
    assert ucf101().ray.fused.max_actors == "auto"  # the config itself is left as written


def test_the_paper_config_s_per_stage_pools_fit_and_grow_per_gpu_and_node():
    for count in (1, 2):
        cfg, _ = fit_pools(ucf101("ray.fused=null"), nodes(count))
        assert (cfg.ray.decode.max_actors, cfg.ray.spatial.max_actors, cfg.ray.audio.max_actors) == \
            (40 * count, 8 * count, count)


def test_demo_configs_fit_a_2_cpu_machine():
    laptop = nodes(1, Node(2, 0))
    for overrides in ([], ["ray.fused=null"]):
        cfg = load_config(overrides=overrides)
        assert fit_pools(cfg, laptop)[0] == cfg  # fixed numbers: kept as they are
    with pytest.raises(ConfigError, match=r"ray.fused 3 x \(1 CPU\).*1 of ray.fused's 3 would not be placed"):
        fit_pools(load_config(overrides=["ray.fused.max_actors=3"]), laptop)


def test_a_gpu_share_cannot_span_gpus_or_nodes_nor_cpus_nodes():
    # 3 x 0.6 GPU = 1.8 of 2 GPUs, but each GPU holds one
    with pytest.raises(ConfigError, match=r"1 of ray.fused's 3 would not be placed \(their sum is within"):
        fit_pools(load_config(overrides=["ray.fused={num_cpus: 1, num_gpus: 0.6, max_actors: 3}"]),
                  nodes(2, Node(8, 1)))
    with pytest.raises(ConfigError, match="would not be placed"):  # the same on one node of 2 GPUs
        fit_pools(load_config(overrides=["ray.fused={num_cpus: 1, num_gpus: 0.6, max_actors: 3}"]),
                  nodes(1, Node(8, 2)))
    with pytest.raises(ConfigError, match="within the totals"):  # 3 x 2.5 CPUs = 7.5 of 8, one a node
        fit_pools(load_config(overrides=["ray.fused={num_cpus: 2.5, max_actors: 3}"]), nodes(2, Node(4, 0)))
    cfg, _ = fit_pools(load_config(overrides=["ray.fused={num_cpus: 1, num_gpus: 0.4, max_actors: 4}"]),
                       nodes(1, Node(8, 2)))  # 2 + 2 a GPU
    assert cfg.ray.fused.max_actors == 4


def test_whole_gpus_and_auto_beside_fixed_pools():
    cfg, _ = fit_pools(load_config(overrides=["ray.fused={num_cpus: 1, num_gpus: 2, max_actors: auto}"]),
                       nodes(2, Node(16, 3)))
    assert cfg.ray.fused.max_actors == 2  # one pair of GPUs a node, the third GPU of each left over
    staged = ["ray.fused=null", "ray.decode={num_cpus: 1, num_gpus: 0.25, max_actors: auto}",
              "ray.spatial={num_cpus: 1, num_gpus: 0.5, max_actors: 2}", "ray.audio={num_cpus: 1, max_actors: 1}",
              "ray.write={num_cpus: 0.5, max_actors: 2}"]
    cfg, _ = fit_pools(load_config(overrides=staged), nodes(1, Node(32, 2)))
    assert cfg.ray.decode.max_actors == 4  # the spatial pair holds one GPU, four quarters fill the other
    with pytest.raises(ConfigError, match=r"1 of ray.fused's 1 would not be placed"):  # not even min_actors
        fit_pools(load_config(overrides=["ray.fused={num_cpus: 4, num_gpus: 0.5, max_actors: auto}"]),
                  nodes(1, Node(2, 0)))


def test_autoscaling_clusters_are_judged_at_their_largest():
    aws = from_cluster_file(ROOT / "cluster" / "aws-gpu.yaml")
    assert (aws.gpus, len(aws.nodes)) == (16, 17) and "can grow to (max_workers 16)" in aws.describe()
    cfg, line = fit_pools(ucf101(), aws)
    assert cfg.ray.fused.max_actors == 32 and "16 x g5.4xlarge (16 CPU, 1 GPU)" in line
    for manifest in ("raycluster.yaml", "rayjob.yaml"):
        kuberay = from_cluster_file(ROOT / "cluster" / "kuberay" / manifest)
        assert {(n.cpus, n.gpus) for n in kuberay.nodes} == {(0, 0), (14, 1)} and kuberay.gpus == 16
        assert fit_pools(ucf101(), kuberay)[0].ray.fused.max_actors == 32
        assert fit_pools(ucf101("ray.fused=null"), kuberay)[0].ray.decode.max_actors == 80
    with pytest.raises(ConfigError, match=r"cluster/aws-gpu.yaml can grow to \(max_workers 16\).*33 x"):
        fit_pools(ucf101("ray.fused.max_actors=33"), aws)


def test_live_nodes_grow_to_their_groups_maxima_and_unbounded_groups_refuse_auto():
    head, gpu = Node(0, 0), Node(16, 1, "gpu")
    grown = largest([(gpu, 4)], live=[head, Node(16, 1)], what="grown")
    assert sorted((n.cpus, n.gpus) for n in grown.nodes) == [(0, 0)] + [(16, 1)] * 4
    unbounded = largest([(gpu, -1)], live=[head], what="kuberay without maxReplicas")
    assert unbounded.unbounded
    with pytest.raises(ConfigError, match="^ray.fused.max_actors: auto grows with the cluster"):
        fit_pools(ucf101(), unbounded)
    cfg, _ = fit_pools(ucf101("ray.fused.max_actors=40"), unbounded)  # each actor fits a node of the group
    assert cfg.ray.fused.max_actors == 40
    with pytest.raises(ConfigError, match="would not be placed"):
        fit_pools(ucf101("ray.fused={num_cpus: 32, num_gpus: 0.5, max_actors: 2}"), unbounded)


@pytest.mark.parametrize("override, key", [
    ("ray.fused.max_actors=many", "ray.fused.max_actors"),
    ("ray.decode.max_actors=0/gpu", "ray.decode.max_actors"),
    ("ray.write.max_actors=auto", "ray.write.max_actors"),
    ("ray.embed.max_actors=2/gpu", "ray.embed.max_actors"),
    ("ray.spatial.num_gpus=1.5", "ray.spatial.num_gpus"),
])
def test_bad_pool_sizes_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key}"):
        load_config(overrides=[override])


def test_job_cluster_reads_the_live_nodes_and_the_autoscaler_s_groups(monkeypatch, tmp_path):
    from multistream.ray import session

    live = [{"Alive": True, "Resources": {"CPU": 0.0}}, {"Alive": True, "Resources": {"CPU": 16.0, "GPU": 1.0}},
            {"Alive": False, "Resources": {"CPU": 16.0, "GPU": 1.0}}]
    monkeypatch.setattr(session.ray, "nodes", lambda: live)
    monkeypatch.setattr(session, "BOOTSTRAP_CONFIG", str(tmp_path / "none.yaml"))
    monkeypatch.setattr(session, "_autoscaler_groups", lambda: None)
    cfg = load_config()
    cluster = session.job_cluster(cfg)
    assert (cluster.cpus, cluster.gpus) == (16, 1) and "ray.cluster" in cluster.what
    monkeypatch.setattr(session, "_autoscaler_groups", lambda: [(Node(16, 1, "gpu"), 8)])
    assert session.job_cluster(cfg).gpus == 8
    monkeypatch.setattr(session, "_autoscaler_groups", lambda: None)
    (tmp_path / "none.yaml").write_text((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    assert session.job_cluster(cfg).gpus == 16  # a `ray up` head's autoscaler config
    named = cfg.replace(**{"ray.cluster": str(ROOT / "cluster" / "kuberay" / "rayjob.yaml")})
    assert session.job_cluster(named).cpus == 16 * 14
