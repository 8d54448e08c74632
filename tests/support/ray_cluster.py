"""A Ray cluster of several nodes on this machine, each node its own raylet, for the fault tests.

    with MultiNodeCluster([{"num_cpus": 1}, {"num_cpus": 2}, {"num_cpus": 2}], env) as cluster:
        env = cluster.client_env(os.environ)                   # a job run with this env joins it
        cluster.kill_node_hosting("FusedStage")                 # SIGKILL of every process of that node

Ray's `cluster_utils.Cluster` runs in a child process of its own (`python -m tests.support.ray_cluster`), driven over
its stdin, so that the test process never hosts Ray's nodes beside its own local Ray. Every port is chosen
free, and the address file that `ray.init()` / `ray.init(address="auto")` of other processes read
(/tmp/ray/ray_current_cluster) is never written: the cluster is found only through its address. (Ray's
legacy `address="auto"` also scans the machine's raylet processes: a process that calls it while this
cluster runs may still find it.) Killing a node is what a lost spot instance does to Ray: its raylet, object
store and workers die at once, without warning.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class MultiNodeCluster:
    def __init__(self, nodes: list[dict], env: dict[str, str] | None = None, timeout_s: float = 180):
        self._temp = tempfile.mkdtemp(prefix="rayc-", dir="/tmp")  # Ray's socket paths must stay short
        # a loaded machine starts Python slowly: more time for the node agents and raylets to register
        env = {**(env or os.environ), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
               "PYTHONPATH": str(ROOT),
               "RAY_agent_register_timeout_ms": "180000", "RAY_raylet_start_wait_time_s": "180"}
        env.pop("RAY_ADDRESS", None)
        command = [sys.executable, "-m", "tests.support.ray_cluster", self._temp, json.dumps(nodes)]
        for attempt in range(3):  # a raylet that waited too long for its agents gives up: start again
            self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             text=True, env=env, cwd=ROOT)
            try:
                started = self._reply(timeout_s)
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        self.address = started["address"]

    def client_env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` with what a process needs to join this cluster as a driver.

        Ray turns a 127.0.0.1 address into the machine's routable IP before connecting, where these nodes do
        not listen; Ray's switch for single-machine clusters keeps the driver on the loopback address."""
        return {**base, "RAY_ADDRESS": self.address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}

    def _reply(self, timeout_s: float = 120) -> dict:
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the cluster process ended (exit {self._process.wait(timeout_s)})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def _ask(self, **command) -> dict:
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        return self._reply()

    def kill_node_hosting(self, process_name: str) -> int:
        """SIGKILL every process of a worker node that runs a process named like `process_name` (e.g. an actor
        class); returns that node's index (0 is the head, never killed)."""
        return self._ask(kill_hosting=process_name)["killed"]

    def add_node(self, **resources) -> int:
        return self._ask(add=resources)["added"]

    def alive_nodes(self) -> int:
        return self._ask(alive=True)["alive"]

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(60)
            except subprocess.TimeoutExpired:
                self._process.kill()
        import shutil

        shutil.rmtree(self._temp, ignore_errors=True)

    def __enter__(self) -> MultiNodeCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(temp: str, specs: list[dict]) -> None:
    import psutil
    import ray._private.utils
    from ray.cluster_utils import Cluster

    original = ray._private.utils.write_ray_address
    ray._private.utils.write_ray_address = lambda address, temp_dir=None: original(address, temp)
    get_node = ray._private.services.get_node

    def patient_get_node(*args, **kwargs):  # a node gets 30 s to register, too short on a loaded machine
        deadline = time.monotonic() + 90
        while True:
            try:
                return get_node(*args, **kwargs)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    ray._private.services.get_node = patient_get_node
    def common() -> dict:  # every port free: Ray's fixed defaults may be taken by other Rays on the machine
        ports = {name: free_port() for name in ("dashboard_agent_listen_port", "metrics_export_port",
                                                "metrics_agent_port", "runtime_env_agent_port")}
        return {"temp_dir": temp, "node_ip_address": "127.0.0.1", "object_store_memory": 100 * 1024**2,
                **ports}

    # a port of its own for the dashboard head too: Ray starts a minimal one even without the dashboard
    head = {**common(), "include_dashboard": False, "dashboard_host": "127.0.0.1",
            "dashboard_port": free_port(), "gcs_server_port": free_port(), **specs[0]}
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
    nodes = [cluster.head_node]
    for spec in specs[1:]:
        nodes.append(cluster.add_node(**common(), **spec))
    cluster.wait_for_nodes()
    print(json.dumps({"address": cluster.address}), flush=True)

    def raylet_pid(node) -> int:
        return node.all_processes["raylet"][0].process.pid

    for line in sys.stdin:
        command = json.loads(line)
        try:
            if "kill_hosting" in command:
                hosts = {psutil.Process(p.pid).ppid() for p in psutil.process_iter(["cmdline"])
                         if command["kill_hosting"] in " ".join(p.info["cmdline"] or [])}
                index = next(i for i, node in enumerate(nodes) if i and node in cluster.worker_nodes
                             and raylet_pid(node) in hosts)
                cluster.remove_node(nodes[index], allow_graceful=False)
                reply = {"killed": index}
            elif "add" in command:
                nodes.append(cluster.add_node(**common(), **command["add"]))
                reply = {"added": len(nodes) - 1}
            else:
                reply = {"alive": 1 + len(cluster.worker_nodes)}
        except Exception as error:  # noqa: BLE001 - reported to the test
            reply = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(reply), flush=True)
    cluster.shutdown()


if __name__ == "__main__":
    _serve(sys.argv[1], json.loads(sys.argv[2]))
