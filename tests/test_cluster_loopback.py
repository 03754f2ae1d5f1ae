"""A real multi-node Ray cluster on this machine: the path `ray submit` takes, with a node lost.

Three Ray nodes (`ray start --head` and two `ray start --address` workers, one CPU and one custom
resource each, in their own temp dir, on free ports, with token authentication and a random
token) run the smoke Fig. 2 sweep (the finite-width NN and NN+ cells of fcn on the identity
data: 10 trials) through the entry point `ray submit cluster/gpu.yaml sweeps/fig2.py -- ...`
runs on a head node: ``python sweeps/fig2.py -- --preset smoke --address auto`` with the
cluster's address in RAY_ADDRESS. As soon as a trial is running on the second worker node, that
node is killed (its `ray start` process, raylet, agents and trial worker: SIGKILL, no clean
shutdown). Asserted from the results store:

* every trial of the sweep has a completed row (nothing lost), none failed;
* the driver reports at least one retry (the trial on the dead node was run again elsewhere);
* the rows' ``node`` column names more than one Ray node (the work was spread out).

Heavy (about 1-2 minutes on 2 cores): skipped unless SYMSWEEP_TEST_CLUSTER=1; run it with
``make test-cluster``. Teardown kills only processes this test started (found by their process
tree and by the random auth token in their environment); it never calls ``ray stop``, which
would stop every Ray instance of the user on the machine.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(os.environ.get("SYMSWEEP_TEST_CLUSTER") != "1",
                       reason="multi-node loopback Ray cluster; run `make test-cluster`"),
]

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopbackCluster:
    """Ray nodes started with ``ray start --block`` as child processes of this test.

    Every node gets its own free ports (Ray's fixed defaults would collide between nodes on one
    machine), ``--num-cpus 1`` and a custom resource named after it. Fast node-death detection
    (GCS health checks every 0.5 s) keeps the kill test short.
    """

    def __init__(self) -> None:
        import psutil  # noqa: F401  (ray depends on it; fail early if missing)

        self.tmp = tempfile.mkdtemp(prefix="ssc-", dir="/tmp")  # short: unix socket paths
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.token = secrets.token_hex(32)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("RAY_", "SYMSWEEP_CRASH"))}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                        RAY_USAGE_STATS_ENABLED="0", RAY_health_check_period_ms="500",
                        RAY_health_check_timeout_ms="1000",
                        RAY_health_check_failure_threshold="4")
        self.nodes: dict[str, subprocess.Popen] = {}

    def log(self, name: str) -> str:
        p = Path(self.tmp) / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def start(self, name: str, *, head: bool = False, timeout: float = 90.0) -> None:
        ports = {flag: _free_port() for flag in (
            "--node-manager-port", "--object-manager-port", "--dashboard-agent-grpc-port",
            "--dashboard-agent-listen-port", "--metrics-export-port", "--runtime-env-agent-port")}
        cmd = [RAY, "start", "--block", "--num-cpus", "1", "--resources", json.dumps({name: 1}),
               "--temp-dir", self.tmp, "--disable-usage-stats",
               "--object-store-memory", str(256 * 1024**2)]
        for flag, port in ports.items():
            cmd += [flag, str(port)]
        if head:
            cmd += ["--head", "--port", str(self.port), "--include-dashboard", "false"]
        else:
            cmd += ["--address", self.address]
        with open(Path(self.tmp) / f"{name}.log", "w") as log:
            self.nodes[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                env=self.env, start_new_session=True)
        t0 = time.time()
        while "Ray runtime started" not in self.log(name):
            if self.nodes[name].poll() is not None or time.time() - t0 > timeout:
                raise RuntimeError(f"ray node {name} did not start:\n{self.log(name)[-3000:]}")
            time.sleep(0.3)

    def tree(self, name: str) -> list:
        """The node's `ray start` process and all its descendants (raylet, agents, workers)."""
        import psutil

        try:
            root = psutil.Process(self.nodes[name].pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def busy(self, name: str) -> bool:
        """True while a Tune trial (a ``ray::ImplicitFunc`` actor) runs on the node."""
        import psutil

        for p in self.tree(name):
            try:
                if "ImplicitFunc" in " ".join(p.cmdline()):
                    return True
            except psutil.Error:
                pass
        return False

    def kill(self, name: str) -> int:
        """SIGKILL every process of the node at once (a machine lost, no clean shutdown)."""
        import psutil

        procs = self.tree(name)
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        self.nodes[name].wait(timeout=30)
        return len(procs)

    def _ours(self) -> list:
        """Processes carrying this cluster's random token (also orphans of killed parents)."""
        import psutil

        out = []
        for p in psutil.process_iter():
            try:
                if p.pid != os.getpid() and p.environ().get("RAY_AUTH_TOKEN") == self.token:
                    out.append(p)
            except psutil.Error:
                pass
        return out

    def shutdown(self) -> None:
        import psutil

        for name in reversed(list(self.nodes)):
            for p in self.tree(name):
                try:
                    p.send_signal(signal.SIGTERM)
                except psutil.Error:
                    pass
        deadline = time.time() + 15
        while time.time() < deadline and self._ours():
            time.sleep(0.5)
        for p in self._ours():
            try:
                p.kill()
            except psutil.Error:
                pass
        for proc in self.nodes.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def cluster():
    c = LoopbackCluster()
    try:
        c.start("node_head", head=True)
        c.start("node_w1")
        c.start("node_w2")
        yield c
    finally:
        c.shutdown()


def test_sweep_spreads_over_nodes_and_survives_a_lost_node(cluster, tmp_path):
    from orchestrator.store import Store

    results = tmp_path / "results"
    killed: dict[str, float] = {}
    done = threading.Event()

    def killer() -> None:
        while not done.is_set():
            if cluster.busy("node_w2"):
                killed["t"] = time.time()
                killed["procs"] = cluster.kill("node_w2")
                return
            time.sleep(0.2)

    env = dict(cluster.env, RAY_ADDRESS=cluster.address, PYTHONPATH=str(ROOT))
    # exactly what `ray submit cluster/gpu.yaml sweeps/fig2.py -- --preset smoke ...` runs on
    # the head node (ray submit keeps or drops the `--`; the sweep file accepts both)
    cmd = [sys.executable, "sweeps/fig2.py", "--", "--preset", "smoke", "--address", "auto",
           "--results", str(results), "--only", "inference=nn,nn_plus", "--only", "arch=fcn",
           "--only", "transform=identity", "--no-progress"]
    th = threading.Thread(target=killer, daemon=True)
    th.start()
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=240)
    finally:
        done.set()
        th.join(timeout=5)
    wall = time.time() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"sweep failed (rc {proc.returncode}):\n{out[-6000:]}"
    assert "t" in killed, "no trial was ever seen running on node_w2, nothing was killed"
    assert killed["t"] - t0 < wall, "the node was killed after the sweep ended"
    assert cluster.nodes["node_w2"].poll() is not None, "node_w2 still alive"

    m = re.search(r"(\d+) trials: .*?\((\d+) completed, (\d+) diverged, (\d+) failed, "
                  r"(\d+) retries\)", " ".join(out.split()))
    assert m, f"no run summary in the driver output:\n{out[-3000:]}"
    total, completed, _, failed, retries = (int(g) for g in m.groups())
    assert total == 10 and failed == 0
    assert retries >= 1, f"the trial on the killed node was not retried:\n{out[-3000:]}"

    store = Store(str(results), "fig2")
    manifest = store.read_manifest()
    ids = {t["trial_id"] for t in manifest["trials"]}
    assert len(ids) == 10
    df, corrupt = store.latest()
    assert not corrupt
    latest = df.set_index("trial_id")
    assert set(latest.index) == ids, "a trial of the sweep has no row: result lost"
    assert (latest["status"] == "completed").all(), latest["status"].value_counts()
    assert latest["best_test_acc"].notna().all()
    nodes = set(latest["node"].dropna())
    assert len(nodes) >= 2, f"all trials ran on one node: {nodes}"
    print(f"\nloopback cluster: {total} trials, {completed} completed, {retries} retries after "
          f"killing node_w2 ({killed['procs']} processes) {killed['t'] - t0:.1f} s into the "
          f"sweep; rows from {len(nodes)} nodes; driver wall {wall:.1f} s")
