"""The cluster files launch as shipped: `ray up cluster/aws-gpu.yaml` and `kubectl apply` of cluster/kuberay/.

Read against the installed Ray's autoscaler (its own schema, defaults and AWS code) and against what KubeRay,
EKS and Docker do with the fields. No network, no cloud: each test reads files.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
AUTOSCALER = CLUSTER / "aws-gpu.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
README = CLUSTER / "README.md"
COSTS = CLUSTER / "COSTS.md"
IAM = CLUSTER / "iam"
MANIFESTS = [CLUSTER / "kuberay" / "raycluster.yaml", CLUSTER / "kuberay" / "rayjob.yaml"]

# The CUDA platforms Ray publishes for the rayproject/ray image, as ray-images.yaml of github.com/ray-project/ray
# lists them (cu11.7.1-cudnn8 … cu12.9.1-cudnn), each tagged by CUDA major and minor; "-gpu" is an alias of cu121.
RAY_IMAGE_CUDA_TAGS = {"cu117", "cu118", "cu121", "cu123", "cu124", "cu125", "cu126", "cu128", "cu129"}


def load(path: Path):
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def cfg() -> dict:
    return load(AUTOSCALER)


def base_image() -> str:
    match = re.search(r"^ARG RAY_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert match, "cluster/Dockerfile: no ARG RAY_IMAGE=... default"
    return match.group(1)


def project_image() -> str:
    """multistream:{package version}-ray{base image tag}, the tag cluster/README.md builds and pushes."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return f"multistream:{version}-ray{base_image().split(':', 1)[1]}"


# ---------------------------------------------------------------------------------------------------- autoscaler


def test_autoscaler_yaml_validates_against_the_installed_rays_schema(cfg):
    import jsonschema
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    validate_config(prepare_config(copy.deepcopy(cfg)))  # as `ray up` does, after merging Ray's AWS defaults


def test_every_node_type_pins_an_ubuntu_gpu_ami_named_with_its_region_and_source(cfg):
    from ray.autoscaler._private.aws.config import DEFAULT_AMI, _check_ami

    text = AUTOSCALER.read_text()
    lines = text.splitlines()
    region = cfg["provider"]["region"]
    ids = set()
    for name, node_type in cfg["available_node_types"].items():
        ami = node_type["node_config"].get("ImageId", "")
        assert re.fullmatch(r"ami-[0-9a-f]{17}", ami), f"{name}: no ImageId, Ray falls back to its Ubuntu 18.04 DLAMI"
        assert ami not in DEFAULT_AMI.values(), f"{name}: {ami} is Ray's deprecated default DLAMI"
        ids.add(ami)
    prepared = copy.deepcopy(cfg)
    _check_ami(prepared)  # Ray's own fallback leaves every pinned ImageId as it is
    assert {t["node_config"]["ImageId"] for t in prepared["available_node_types"].values()} == ids
    for ami in ids:
        first = next(i for i, line in enumerate(lines) if ami in line)
        comment = "\n".join(lines[max(0, first - 10):first + 1])
        name = re.search(r"Deep Learning Base OSS Nvidia Driver GPU AMI \(Ubuntu (22|24)\.04\) \d{8}", comment)
        assert name, f"{ami}: no AMI name and build date in the comment above it"
        assert region in comment, f"{ami}: the comment does not name its region {region}"
        ssm = f"/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-{name.group(1)}.04/latest/ami-id"
        assert ssm in comment, f"{ami}: the comment does not say how to look up the current one ({ssm})"
        assert ami in README.read_text() and ssm in README.read_text()


def policy(name: str) -> dict:
    return json.loads((IAM / name).read_text())


def allows(doc: dict, action: str, resource: str = "*") -> bool:
    for statement in doc["Statement"]:
        if statement["Effect"] != "Allow":
            continue
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions) and any(
                fnmatch.fnmatchcase(resource, r) for r in resources):
            return True
    return False


# How the installed Ray's AWS code reaches EC2, as IAM actions: client calls are their operation names; the
# boto3 resource calls are listed.
RESOURCE_CALLS = {
    r"\.instances\.filter\(": "ec2:DescribeInstances",
    r"\bnode\.terminate\(\)": "ec2:TerminateInstances",
    r"\bnode\.stop\(\)": "ec2:StopInstances",
    r"\.subnets\.(?:all|filter)\(": "ec2:DescribeSubnets",
    r"\.security_groups\.filter\(": "ec2:DescribeSecurityGroups",
    r"\.key_pairs\.filter\(": "ec2:DescribeKeyPairs",
}
CLIENT_CALL = re.compile(r"\.((?:describe|create|start|stop|terminate|run|modify|delete|import|authorize|attach|add)_[a-z_]+)\b")
SPECIAL = {"create_instances": "ec2:RunInstances", "authorize_ingress": "ec2:AuthorizeSecurityGroupIngress",
           "create_role": "iam:CreateRole", "create_instance_profile": "iam:CreateInstanceProfile",
           "attach_policy": "iam:AttachRolePolicy", "add_role": "iam:AddRoleToInstanceProfile"}


def ray_aws_actions(module) -> set[str]:
    from ray.autoscaler.node_provider import NodeProvider

    source = Path(module.__file__).read_text()
    actions = {action for pattern, action in RESOURCE_CALLS.items() if re.search(pattern, source)}
    for call in set(CLIENT_CALL.findall(source)) - set(dir(NodeProvider)):
        actions.add(SPECIAL.get(call) or "ec2:" + "".join(part.title() for part in call.split("_")))
    return actions


def test_the_heads_profile_lets_the_autoscaler_start_and_stop_workers(cfg):
    from ray.autoscaler._private.aws import node_provider

    head = cfg["available_node_types"][cfg["head_node_type"]]["node_config"]
    workers = [t["node_config"] for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]]
    assert head["IamInstanceProfile"] == {"Name": "multistream-head"}, "a profile whose policy cluster/iam/ holds"
    doc = policy("head-policy.json")
    called = ray_aws_actions(node_provider)
    assert {"ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances"} <= called  # the scanner still sees them
    missing = sorted(action for action in called if not allows(doc, action))
    assert not missing, f"the autoscaler on the head calls {missing}, which head-policy.json does not allow"
    for worker in workers:
        role = worker["IamInstanceProfile"]["Name"]  # each role has an instance profile of its own name (README)
        assert (IAM / f"{role.removeprefix('multistream-')}-policy.json").exists()
        assert allows(doc, "iam:PassRole", f"arn:aws:iam::123456789012:role/{role}"), \
            f"the head may not pass {role} to the workers it launches: none would start"
    readme = README.read_text()
    for needed in ("ec2:RunInstances", "iam:PassRole", "head-policy.json", "worker-policy.json",
                   "create-instance-profile", "add-role-to-instance-profile", "put-role-policy", "L-DB2E81BA"):
        assert needed in readme, f"cluster/README.md does not name {needed}"


def test_the_launcher_policy_covers_ray_up_and_ray_down(cfg):
    from ray.autoscaler._private.aws import config as aws_config
    from ray.autoscaler._private.aws import node_provider

    head = cfg["available_node_types"][cfg["head_node_type"]]["node_config"]
    assert "IamInstanceProfile" in head  # so `ray up` creates no IAM role: Ray's _configure_iam_role returns early
    assert not any("LaunchTemplate" in t["node_config"] for t in cfg["available_node_types"].values())
    skipped = {"iam:CreateRole", "iam:CreateInstanceProfile", "iam:AttachRolePolicy",
               "iam:AddRoleToInstanceProfile", "ec2:DescribeLaunchTemplateVersions"}
    called = (ray_aws_actions(aws_config) | ray_aws_actions(node_provider)) - skipped
    doc = policy("launcher-policy.json")
    missing = sorted(action for action in called if not allows(doc, action))
    assert not missing, f"`ray up` calls {missing}, which launcher-policy.json does not allow"
    assert allows(doc, "iam:PassRole", f"arn:aws:iam::123456789012:role/{head['IamInstanceProfile']['Name']}")


def test_the_workers_reach_the_bucket_and_pull_the_image(cfg):
    region = cfg["provider"]["region"]
    for name in ("head-policy.json", "worker-policy.json"):
        doc = policy(name)
        assert allows(doc, "s3:ListBucket", "arn:aws:s3:::my-bucket")
        for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"):
            assert allows(doc, action, "arn:aws:s3:::my-bucket/runs/ucf101/flow/part-0.parquet"), (name, action)
        assert allows(doc, "ecr:GetAuthorizationToken")
        repository = f"arn:aws:ecr:{region}:123456789012:repository/multistream"
        for action in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"):
            assert allows(doc, action, repository), (name, action)


def test_every_node_runs_the_projects_image_and_installs_nothing_at_boot(cfg):
    from ray.autoscaler._private.util import prepare_config

    image = project_image()
    assert cfg["docker"]["image"] == image, "the nodes must run cluster/Dockerfile's image, not Ray's plain one"
    assert cfg["docker"]["pull_before_run"] is False  # the image is tagged locally by initialization_commands
    pulls = " ".join(cfg["initialization_commands"])
    region = cfg["provider"]["region"]
    assert f".dkr.ecr.{region}.amazonaws.com" in pulls and f"--region {region}" in pulls
    tag = image.split(":", 1)[1]
    assert f"docker pull $REGISTRY/multistream:{tag}" in pulls
    assert f"docker tag $REGISTRY/multistream:{tag} {image}" in pulls
    prepared = prepare_config(copy.deepcopy(cfg))  # with Ray's AWS defaults merged in, as `ray up` runs them
    commands = [c for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                              "worker_setup_commands") for c in prepared.get(key, [])]
    assert not [c for c in commands if "pip install" in c], "a node would pip-install at boot"
    assert "boto3" in DOCKERFILE.read_text(), "the autoscaler in the head's container needs boto3"


@dataclass
class RsyncRule:
    pattern: str

    def excludes(self, path: str) -> bool:
        """rsync: a pattern without '/' matches a name at any depth; '**' crosses directories."""
        parts = path.split("/")
        if "/" not in self.pattern:
            return any(fnmatch.fnmatchcase(part, self.pattern) for part in parts)
        pattern = self.pattern.removeprefix("**/")
        return any(fnmatch.fnmatchcase("/".join(parts[i:j]), pattern)
                   for i in range(len(parts)) for j in range(i + 1, len(parts) + 1))


SYNCED = ["multistream/config.py", "multistream/ray/worker_env.py", "jobs/pipeline.py", "configs/ucf101.yaml",
          "pyproject.toml", "README.md", "cluster/aws-gpu.yaml"]
NOT_SYNCED = [".venv/lib/python3.11/site-packages/torch/lib/libtorch_cuda.so", ".venv-ci/bin/python",
              "runs/ucf101/flow/part-00000.parquet", ".git/objects/pack/pack-1.pack",
              "multistream/__pycache__/config.cpython-311.pyc", "multistream.egg-info/PKG-INFO"]


def test_file_mounts_leave_venvs_run_roots_and_git_behind(cfg, tmp_path):
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    assert "." in cfg["file_mounts"].values()  # the checkout is synced to every node, so it must be filtered
    excludes = cfg.get("rsync_exclude") or []
    rules = [RsyncRule(p) for p in excludes]
    for path in NOT_SYNCED:
        assert any(r.excludes(path) for r in rules), f"{path} would be synced to every node"
    for path in SYNCED:
        assert not any(r.excludes(path) for r in rules), f"{path} would not reach the nodes"
    args = SSHCommandRunner._create_rsync_filter_args(None, {"rsync_exclude": excludes,
                                                             "rsync_filter": cfg.get("rsync_filter")})
    if shutil.which("rsync"):  # the real thing, where installed
        src, dst = tmp_path / "src", tmp_path / "dst"
        for path in SYNCED + NOT_SYNCED:
            (src / path).parent.mkdir(parents=True, exist_ok=True)
            (src / path).write_text("x")
        out = subprocess.run(["rsync", "-a", "--dry-run", "--out-format=%n", *args, f"{src}/", str(dst)],
                             capture_output=True, text=True, check=True).stdout.split()
        assert set(SYNCED) <= set(out) and not set(NOT_SYNCED) & set(out)


def test_the_dashboard_is_reached_through_ray_dashboard_not_an_open_port(cfg):
    head_start = " ".join(cfg["head_start_ray_commands"])
    host = re.search(r"--dashboard-host[= ](\S+)", head_start)
    assert host is None or host.group(1) in ("127.0.0.1", "localhost"), "the dashboard listens beyond loopback"
    for rule in cfg["provider"].get("security_group", {}).get("IpPermissions", []):
        assert not rule.get("FromPort", 0) <= 8265 <= rule.get("ToPort", -1), "8265 opened in the security group"
    for path in (AUTOSCALER, README):
        text = path.read_text()
        assert "<head>" not in text, f"{path.name} sends the job to the head's address, blocked by its security group"
        assert "ray dashboard cluster/aws-gpu.yaml" in text and "--address http://localhost:8265" in text, path.name


def test_the_head_offers_no_cpus_to_tasks(cfg):
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the autoscaler would count the head's CPUs for Ray Data and Tune"
    assert "--num-cpus=0" in " ".join(cfg["head_start_ray_commands"]), "the head's raylet would offer its CPUs"


# ------------------------------------------------------------------------------------------------------ KubeRay


@dataclass
class NodeType:
    """An EKS node's allocatable capacity, as the EKS-optimized AMIs set it (awslabs/amazon-eks-ami bootstrap.sh):
    kube-reserved CPU 6% of the first core, 1% of the second, 0.5% of the next two, 0.25% of the rest; memory
    11 MiB x max pods (eni-max-pods.txt) + 255 MiB; an eviction threshold of 100 MiB. The memory the kernel
    reports is taken as 92.5% of the nominal size (a g6.4xlarge, the g5.4xlarge's 16 vCPU / 64 GiB shape, was
    measured at 58981Mi allocatable on EKS, above this estimate's 57691Mi)."""

    vcpus: int
    memory_gib: int
    gpus: int
    max_pods: int

    @property
    def cpu_m(self) -> float:
        reserved = 60 + 10 + 5 * min(2, max(0, self.vcpus - 2)) + 2.5 * max(0, self.vcpus - 4)
        return self.vcpus * 1000 - reserved

    @property
    def memory_mi(self) -> float:
        return self.memory_gib * 1024 * 0.925 - (11 * self.max_pods + 255) - 100


NODE_TYPES = {"g5.4xlarge": NodeType(16, 64, 1, 234), "m6i.2xlarge": NodeType(8, 32, 0, 58)}
DAEMONSET_CPU_M, DAEMONSET_MEMORY_MI = 1000, 2048  # aws-node, kube-proxy, device plugin, log/metrics agents


def quantity(value) -> float:
    """CPU in millicores or memory in MiB."""
    text = str(value)
    units = {"m": 1, "Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024**2, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    for unit, scale in sorted(units.items(), key=lambda u: -len(u[0])):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text) * 1000  # plain CPUs


def cluster_spec(manifest: dict) -> dict:
    return manifest["spec"] if manifest["kind"] == "RayCluster" else manifest["spec"]["rayClusterSpec"]


def groups(manifest: dict):
    spec = cluster_spec(manifest)
    yield "head", spec["headGroupSpec"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kuberay_pods_fit_the_node_type_they_name(path):
    for name, group in groups(load(path)):
        pod = group["template"]["spec"]
        node = pod.get("nodeSelector", {}).get("node.kubernetes.io/instance-type")
        assert node in NODE_TYPES, f"{name}: no node type to size the pod against"
        for container in pod["containers"]:
            resources = container["resources"]
            requests = {**resources.get("limits", {}), **resources.get("requests", {})}  # requests default to limits
            cpu, memory = quantity(requests["cpu"]), quantity(requests["memory"])
            assert cpu <= NODE_TYPES[node].cpu_m - DAEMONSET_CPU_M, \
                f"{name}: {requests['cpu']} CPUs stay Pending on a {node} ({NODE_TYPES[node].cpu_m:.0f}m allocatable)"
            assert memory <= NODE_TYPES[node].memory_mi - DAEMONSET_MEMORY_MI, \
                f"{name}: {requests['memory']} stays Pending on a {node} ({NODE_TYPES[node].memory_mi:.0f}Mi allocatable)"
            assert int(requests.get("nvidia.com/gpu", 0)) <= NODE_TYPES[node].gpus


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kuberay_workers_have_shm_and_tolerate_gpu_taints_and_the_head_does_no_work(path):
    manifest = load(path)
    spec = cluster_spec(manifest)
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", "the head offers its CPUs to tasks"
    for name, group in groups(manifest):
        if name == "head":
            continue
        pod = group["template"]["spec"]
        shm = [v["name"] for v in pod.get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"]
        for container in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/dev/shm") in shm, f"{name}: no memory-backed /dev/shm (Docker's default is 64 MB)"
            gpus = {**container["resources"].get("limits", {}), **container["resources"].get("requests", {})}
            if int(gpus.get("nvidia.com/gpu", 0)):
                assert any(t.get("key") == "nvidia.com/gpu" and t.get("effect") in (None, "NoSchedule")
                           and t.get("operator") in ("Exists", "Equal") for t in pod.get("tolerations", [])), \
                    f"{name}: no toleration of the nvidia.com/gpu taint of GPU node groups"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kuberay_runs_the_projects_image_at_its_ray_version(path):
    manifest = load(path)
    assert cluster_spec(manifest)["rayVersion"] == base_image().split(":", 1)[1].split("-", 1)[0]
    for name, group in groups(manifest):
        for container in group["template"]["spec"]["containers"]:
            assert container["image"] == project_image(), f"{name}: {container['image']}"


# ------------------------------------------------------------------------------------------------------- image


def test_the_dockerfile_builds_on_a_published_ray_image_of_the_ray_and_python_the_project_runs_on():
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(cu\d{3})", base_image())
    assert match, f"{base_image()}: not a rayproject/ray:{{version}}-py3XX-cuXYZ tag"
    version, major, minor, cuda = match.groups()
    pyproject = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"ray\[[^\]]*\]>=([\d.]+)"', pyproject).group(1)
    assert version == floor, f"the image runs Ray {version}, the project is run on (and floored at) Ray {floor}"
    python = re.search(r'requires-python = ">=3\.(\d+)"', pyproject).group(1)
    assert int(major) == 3 and int(minor) >= int(python)
    assert cuda in RAY_IMAGE_CUDA_TAGS, f"-{cuda} is no platform Ray publishes"
    assert "FROM ${RAY_IMAGE}" in DOCKERFILE.read_text()
    readme = README.read_text()
    assert f"docker build -f cluster/Dockerfile -t {project_image()} ." in readme
    assert f"docker push $REGISTRY/{project_image()}" in readme


def dockerignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: patterns are anchored at the context root, '**' crosses directories, '!' re-includes;
    a directory that matches takes its contents with it."""
    def regex(pattern: str) -> re.Pattern:
        out = re.escape(pattern.strip("/")).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        return re.compile(out.replace(r"\*", "[^/]*").replace(r"\?", "[^/]") + "(?:/.*)?")

    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if regex(pattern.lstrip("!")).fullmatch(path):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_git_venvs_and_run_roots_out_of_the_image():
    assert DOCKERIGNORE.exists(), "without .dockerignore the whole checkout (.git, venvs, runs/) enters the image"
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in NOT_SYNCED + [".venv/bin/python", "tests/data/clips/a.avi"]:
        assert dockerignored(patterns, path), f"{path} would be copied into the image"
    package = [p.relative_to(ROOT).as_posix() for p in (ROOT / "multistream").rglob("*.py")
               if "__pycache__" not in p.parts]
    for path in package + ["pyproject.toml", "README.md", "jobs/pipeline.py", "configs/ucf101.yaml"]:
        assert not dockerignored(patterns, path), f"{path} is needed by pip install or the jobs"


# --------------------------------------------------------------------------------------------- what cluster/ says


def cluster_texts() -> dict[Path, str]:
    files = [p for p in CLUSTER.rglob("*") if p.is_file()] + [p for p in [DOCKERIGNORE] if p.exists()]
    return {p: p.read_text() for p in files}


def test_nothing_in_cluster_names_a_placeholder_or_an_unsourced_image_or_ami():
    placeholders = re.compile(r"my-registry|<head>|cu12x|:latest\b|TODO|CHANGEME|XXXX|<(?!https?://)[A-Za-z][^>\n]*>")
    images = {project_image(), base_image()}
    amis = set(re.findall(r"ami-[0-9a-f]{8,17}", AUTOSCALER.read_text()))
    for path, text in cluster_texts().items():
        found = placeholders.findall(text)
        assert not found, f"{path.relative_to(ROOT)} names placeholders: {found}"
        for image in re.findall(r"\b(?:rayproject/ray(?:-ml)?|multistream):[\w.-]+", text):
            assert image in images, f"{path.relative_to(ROOT)}: {image} is not the image cluster/Dockerfile sources"
        for ami in re.findall(r"ami-[0-9a-f]{8,17}", text):
            assert ami in amis, f"{path.relative_to(ROOT)}: {ami} is not the AMI whose source aws-gpu.yaml gives"


def test_costs_are_priced_for_the_shipped_node_types_and_count_the_pools_caps(cfg):
    costs = COSTS.read_text()
    types = {t["node_config"]["InstanceType"] for t in cfg["available_node_types"].values()}
    types |= {g["template"]["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"]
              for path in MANIFESTS for _, g in groups(load(path))}
    for node in types:
        assert re.search(rf"{re.escape(node)}[^\n]*\$\d", costs), f"COSTS.md gives no price for {node}"
    assert "A10G" in costs
    # the paper config's pools fitted to the largest cluster aws-gpu.yaml can grow to (multistream.ray.pools),
    # fused as shipped and per stage
    from multistream.config import load_config
    from multistream.ray.pools import extraction_pools, fit_pools, from_cluster_file

    assert "max_actors" in costs
    for overrides in ([], ["ray.fused=null"]):
        fitted, _ = fit_pools(load_config(ROOT / "configs" / "ucf101.yaml", overrides), from_cluster_file(AUTOSCALER))
        pools = {key: pool.max_actors * pool.num_gpus for key, pool in extraction_pools(fitted).items()}
        for held in (max(pools.values()), sum(pools.values())):
            assert f"**{held:.1f}**" in costs, f"COSTS.md does not count the GPUs the pools can hold ({held:.1f})"
    assert str(cfg["max_workers"]) in costs
