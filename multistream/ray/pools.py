"""Whether the extraction's actor pools fit the cluster, checked before any work; `max_actors` that grow with it.

No Ray here: a cluster is a list of nodes (CPUs, GPUs each), read from the live cluster at run time
(`multistream.ray.session.job_cluster`) or from a cluster file's node types (`from_cluster_file`, a static check).

    cfg, line = fit_pools(cfg, Cluster((Node(96, 8),), "one node"))   # ConfigError naming the pools if they cannot

Every pool's actors must be able to run at once (else a stage waits for the previous one to finish the whole
dataset), packed node by node: an actor's CPUs are one node's, and a GPU share below 1 is held on ONE GPU of one
node, so 0.4 + 0.4 + 0.4 needs two GPUs. The packing is first-fit decreasing, tight or spread: a
packing it does not find counts as none.

`max_actors` of an extraction pool is a number (kept), or grows with the cluster the job runs on:
    auto      as many as fit beside the other pools at their maxima (several auto pools take turns)
    N/gpu     N per GPU of the cluster (rounded down), e.g. 5/gpu;   N/node: N per node that can hold one
An autoscaling cluster is judged at the largest size it can grow to (its node groups' max counts).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from multistream.config import Config, StageResources
from multistream.config_loader import ConfigError

UNIT = 10_000  # Ray counts CPUs and GPUs in 1/10,000ths: sums of shares are exact in these units
MAX_AUTO = 100_000  # actors one auto pool may resolve to
MAX_NODES = 10_000  # a node group allowed more is taken as unbounded (KubeRay's default maxReplicas is 2^31 - 1)
GROWS = re.compile(r"^(\d+(?:\.\d+)?)/(gpu|node)$")
# Node types of the shipped cluster files whose resources Ray detects (`resources: {}`): (vCPUs, GPUs)
INSTANCE_TYPES = {"g5.4xlarge": (16, 1), "m6i.2xlarge": (8, 0), "g5.12xlarge": (48, 4), "g5.48xlarge": (192, 8),
                  "p5.48xlarge": (192, 8), "g6.4xlarge": (16, 1)}


@dataclass(frozen=True)
class Node:
    cpus: float
    gpus: int = 0
    name: str = ""  # a node type or group, for messages


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[Node, ...]
    what: str  # where the description comes from, e.g. "the live cluster"
    unbounded: bool = False  # a node group without a maximum: fixed pools are judged per node, auto is refused

    @property
    def cpus(self) -> float:
        return sum(node.cpus for node in self.nodes)

    @property
    def gpus(self) -> int:
        return sum(node.gpus for node in self.nodes)

    def describe(self) -> str:
        shapes = Counter((node.name, node.cpus, node.gpus) for node in self.nodes)
        parts = [f"{count} x {name + ' ' if name else ''}({_amount(cpus)} CPU, {gpus} GPU)"
                 for (name, cpus, gpus), count in shapes.items()]
        unbounded = ", growing without limit" if self.unbounded else ""
        return (f"{self.what}: {' + '.join(parts) or 'no node'}{unbounded}, in all {_amount(self.cpus)} CPUs, "
                f"{self.gpus} GPUs")


def _amount(x: float) -> str:
    return f"{x:g}"


def _units(x: float) -> int:
    return round(x * UNIT)


def extraction_pools(cfg: Config, also: tuple[str, ...] = ()) -> dict[str, StageResources]:
    """The pools an extraction runs, by config key: ray.fused, or ray.decode/spatial/audio and the commit tasks
    (ray.write: up to max_actors in flight; beside the fused pool they ask for no CPU); and the pools `also`
    names, `beside` them (e.g. "ray.embed": predict's RNN heads, in the same dataset)."""
    ray = cfg.ray
    if ray.fused is not None:
        pools = {"ray.fused": ray.fused}
    else:
        pools = {"ray.decode": ray.decode, "ray.spatial": ray.spatial, "ray.audio": ray.audio, "ray.write": ray.write}
    return pools | {key: beside(getattr(ray, key.removeprefix("ray."))) for key in also}


def beside(pool: StageResources) -> StageResources:
    """A pool that runs beside the extraction's actors, which hold the CPUs, as the commit tasks do: a small
    model's pool that asks for its GPU share only, no CPU (predict's RNN heads)."""
    return dataclasses.replace(pool, num_cpus=0)


class _Packing:
    """Free CPUs per node and free share per GPU, in UNITs; actors placed one at a time where they fit tightest
    (`spread` False) or loosest (True); CPU-only actors on nodes without GPUs first, as Ray schedules them."""

    def __init__(self, nodes: Iterable[Node], spread: bool = False):
        nodes = list(nodes)
        self.cpus = [_units(node.cpus) for node in nodes]
        self.gpus = [[UNIT] * int(node.gpus) for node in nodes]
        self.sign = -1 if spread else 1

    def place(self, pool: StageResources) -> bool:
        cpus, gpus, sign = _units(pool.num_cpus), _units(pool.num_gpus), self.sign
        best = None  # (key, node, GPU indices)
        for n, free in enumerate(self.cpus):
            if free < cpus:
                continue
            if gpus == 0:
                key, taken = (len(self.gpus[n]) > 0, sign * free), ()
            elif gpus < UNIT:
                fits = [(sign * share, g) for g, share in enumerate(self.gpus[n]) if share >= gpus]
                if not fits:
                    continue
                share, g = min(fits)
                key, taken = (share, sign * free), (g,)
            else:
                whole = [g for g, share in enumerate(self.gpus[n]) if share == UNIT]
                if len(whole) < gpus // UNIT:
                    continue
                key, taken = (sign * len(whole), sign * free), tuple(whole[:gpus // UNIT])
            if best is None or key < best[0]:
                best = key, n, taken
        if best is None:
            return False
        _, n, taken = best
        self.cpus[n] -= cpus
        for g in taken:
            self.gpus[n][g] -= min(gpus, UNIT)
        return True


def _pack(pools: dict[str, StageResources], counts: dict[str, int], autos: list[str], nodes: list[Node],
          spread: bool) -> tuple[Counter, dict[str, int]]:
    """(actors left unplaced by pool, auto pools' counts) of one packing: the fixed pools first fit decreasing
    (the largest GPU shares first), then the auto pools taking turns, one actor each, until none fits."""
    packing, left = _Packing(nodes, spread), Counter()
    for _, _, key in sorted(((pools[key].num_gpus, pools[key].num_cpus, key) for key in counts), reverse=True):
        left[key] = sum(not packing.place(pools[key]) for _ in range(counts[key]))
    grown, growing = dict.fromkeys(autos, 0), list(autos)
    while growing:
        for key in list(growing):
            if grown[key] < MAX_AUTO and packing.place(pools[key]):
                grown[key] += 1
            else:
                growing.remove(key)
    for key in autos:
        left[key] = max(0, pools[key].min_actors - grown[key])
    return +left, grown


def _grown(key: str, pool: StageResources, cluster: Cluster) -> int | None:
    """The number an N/gpu or N/node max_actors stands for on `cluster` (None: a number or auto)."""
    match = GROWS.match(str(pool.max_actors))
    if match is None:
        return None
    per, unit = float(match.group(1)), match.group(2)
    if unit == "gpu":
        count = cluster.gpus
    else:
        count = sum(1 for node in cluster.nodes if _Packing([node]).place(pool))
    return max(pool.min_actors, math.floor(per * count + 1e-9))


def fit_pools(cfg: Config, cluster: Cluster, also: tuple[str, ...] = ()) -> tuple[Config, str]:
    """`cfg` with every extraction pool's max_actors (`extraction_pools`, with `also`) a number for `cluster`, and
    a line saying what they hold; ConfigError (one message naming every pool, its ask and the cluster) where they
    cannot all run at once."""
    pools = extraction_pools(cfg, also)
    grows = {key: pool for key, pool in pools.items() if not isinstance(pool.max_actors, int)}
    if grows and cluster.unbounded:
        raise ConfigError(f"{next(iter(grows))}.max_actors: {next(iter(grows.values())).max_actors} grows with "
                          f"the cluster, but {cluster.describe()}: give a number, or the node group a maximum")
    counts = {key: pool.max_actors for key, pool in pools.items() if isinstance(pool.max_actors, int)}
    counts |= {key: n for key, pool in grows.items() if (n := _grown(key, pool, cluster)) is not None}
    autos = [key for key in pools if key not in counts]
    nodes = list(cluster.nodes)
    if cluster.unbounded:  # as many nodes of each shape as there are actors: only each actor's shape matters
        nodes *= max(1, sum(counts.values()))
    # a packing that places every actor and the most auto ones, tight (pack) or loose (spread) fits
    left, grown = min((_pack(pools, counts, autos, nodes, spread) for spread in (False, True)),
                      key=lambda packed: (sum(packed[0].values()), -sum(packed[1].values())))
    for key in autos:
        counts[key] = max(grown[key], pools[key].min_actors)
    asks = "; ".join(_ask(key, pools[key], counts[key]) for key in pools)
    cpus = sum(counts[key] * pools[key].num_cpus for key in pools)
    gpus = sum(counts[key] * pools[key].num_gpus for key in pools)
    total = f"{_amount(cpus)} CPUs, {round(gpus, 4):g} GPUs"
    if left:
        short = ", ".join(f"{left[key]} of {key}'s {counts[key]}" for key in pools if left[key])
        within = cpus <= cluster.cpus + 1e-9 and gpus <= cluster.gpus + 1e-9
        why = (" (their sum is within the totals, but an actor's CPUs are one node's and a GPU share is held on "
               "one GPU of one node)" if within else "")
        raise ConfigError(f"ray: the extraction's pools cannot all run at once on {cluster.describe()}: at their "
                          f"max_actors they ask for {total} ({asks}); {short} would not be placed{why}. Lower "
                          "their max_actors, or let them grow with the cluster: max_actors: auto, N/gpu or N/node")
    resolved = {key.removeprefix("ray."): dataclasses.replace(pools[key], max_actors=counts[key]) for key in grows}
    line = f"extraction pools on {cluster.describe()}: {asks}; {total} at their maxima"
    return (cfg.replace(**{f"ray.{name}": dataclasses.asdict(pool) for name, pool in resolved.items()})
            if resolved else cfg), line


def _ask(key: str, pool: StageResources, count: int) -> str:
    gpus = f", {pool.num_gpus:g} GPU" if pool.num_gpus else ""
    form = "" if isinstance(pool.max_actors, int) else f" ({pool.max_actors})"
    what = " commit tasks" if key == "ray.write" else ""
    return f"{key} {count}{form}{what} x ({pool.num_cpus:g} CPU{gpus})"


# ---------------------------------------------------------------------------------------------- cluster files


def largest(groups: Iterable[tuple[Node, int]], live: Iterable[Node] = (), what: str = "") -> Cluster:
    """The largest cluster node groups (a node shape and its max count, -1: no maximum) can grow to: each group
    at its maximum, or at its live count where more of its shape run; live nodes of no group (the head) kept."""
    live = Counter((node.cpus, node.gpus) for node in live)
    nodes, unbounded = [], False
    for node, most in groups:
        if most < 0 or most > MAX_NODES:
            unbounded, most = True, 1
        count = max(most, live.pop((node.cpus, node.gpus), 0))
        nodes += [node] * count
    for (cpus, gpus), count in live.items():
        nodes += [Node(cpus, int(gpus))] * count
    return Cluster(tuple(nodes), what, unbounded)


def from_cluster_file(path: str | Path) -> Cluster:
    """The largest cluster a `ray up` YAML (available_node_types, max_workers) or a KubeRay RayCluster/RayJob
    (headGroupSpec, workerGroupSpecs' maxReplicas) can grow to."""
    path = Path(path)
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict):
        raise ConfigError(f"ray.cluster: {path} is not a cluster file")
    if doc.get("kind") in ("RayCluster", "RayJob"):
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        head = [(_pod_node(spec["headGroupSpec"], "head"), 1)]
        workers = [(_pod_node(group, group.get("groupName", "worker")), int(group.get("maxReplicas", -1)))
                   for group in spec.get("workerGroupSpecs", [])]
        return largest(head + workers, what=f"the largest cluster {path} can grow to (each group's maxReplicas)")
    types = doc.get("available_node_types")
    if not isinstance(types, dict):
        raise ConfigError(f"ray.cluster: {path} names no available_node_types (a `ray up` YAML) and is no "
                          "KubeRay RayCluster or RayJob")
    budget, groups = int(doc.get("max_workers", 2)), []  # Ray's default cluster-wide max_workers is 2
    head_type = doc.get("head_node_type")
    for name, node_type in types.items():
        node = _typed_node(name, node_type, path)
        if name == head_type:
            groups.insert(0, (node, 1))
            continue
        most = min(int(node_type.get("max_workers", budget)), budget)
        budget -= most
        groups.append((node, most))
    return largest(groups, what=f"the largest cluster {path} can grow to (max_workers {doc.get('max_workers', 2)})")


def _typed_node(name: str, node_type: dict, path: Path) -> Node:
    resources = dict(node_type.get("resources") or {})
    instance = (node_type.get("node_config") or {}).get("InstanceType", "")
    detected = INSTANCE_TYPES.get(instance)
    if ("CPU" not in resources or "GPU" not in resources) and detected is None:
        raise ConfigError(f"ray.cluster: {path}: node type {name} ({instance or 'no InstanceType'}) names no "
                          f"CPU and GPU resources, and its instance type is not one of {sorted(INSTANCE_TYPES)}")
    cpus = resources.get("CPU", detected[0] if detected else 0)
    gpus = resources.get("GPU", detected[1] if detected else 0)
    return Node(float(cpus), int(gpus), instance or name)


def _pod_node(group: dict, name: str) -> Node:
    """A KubeRay group's Ray resources: rayStartParams num-cpus/num-gpus, else the ray container's limits."""
    params = group.get("rayStartParams") or {}
    container = group["template"]["spec"]["containers"][0]
    limits = (container.get("resources") or {}).get("limits") or {}
    cpus = params.get("num-cpus", limits.get("cpu", 0))
    cpus = float(cpus[:-1]) / 1000 if isinstance(cpus, str) and cpus.endswith("m") else float(cpus)
    gpus = int(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
    return Node(math.floor(cpus), gpus, name)  # Ray rounds a pod's fractional CPU limit down


def main(argv: list[str] | None = None) -> int:
    """python -m multistream.ray.pools --config configs/ucf101.yaml --cluster cluster/aws-gpu.yaml"""
    import argparse

    from multistream.config import load_config

    parser = argparse.ArgumentParser(description="Whether a config's extraction pools fit a cluster file's "
                                     "largest cluster, and what max_actors: auto / N/gpu / N/node become there")
    parser.add_argument("--config", default=None)
    parser.add_argument("--cluster", required=True, help="a `ray up` YAML or a KubeRay RayCluster / RayJob")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        _, line = fit_pools(load_config(args.config, args.set), from_cluster_file(args.cluster))
    except ConfigError as error:
        print(error)
        return 1
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
