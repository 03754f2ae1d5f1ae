"""Benchmark: kernel cells on a multi-node Ray cluster on this machine (issue 23, item 6).

    .venv/bin/python benchmarks/cluster_kernels.py           # 3 GPU nodes x 4, 12x12 images
    .venv/bin/python benchmarks/cluster_kernels.py --quick   # 2 GPU nodes x 2, 8x8: about a minute

The cluster (`ray.cluster_utils.Cluster`, real Ray processes: a GCS, a raylet and an object
store per node) has a head with CPUs only, where the driver and the trials run, and ``--nodes``
worker nodes with no CPU resource and ``--gpus`` *logical* GPUs each: Ray schedules by the
count and gives every tile task its own CUDA_VISIBLE_DEVICES, while the tiles compute with
JAX on this machine's CPUs. So the schedule, the placement, the object store and the claims
are Ray's and symsweep's own; only the speed of a tile is not a GPU's.

The sweep: the NNGP cells gap, lap4, lap8 (one full-covariance propagation group) and vec
(its own) of one transform on synthetic images, started by `run_sweep` as `symsweep run` does,
with a small ``tile_side`` so each cell has many tiles, and kernel resources cpu=1, tile_gpu=1,
tile_cpu=0, tile_inflight=``--inflight``. Half-way (once a third of the tiles are cached), one
worker node is removed (SIGKILL of its processes, as a lost instance): its tiles in flight are
retried elsewhere.

Printed: one row per cell (tiles computed, waited for, peak bytes its references pinned in the
object store, the cell's input bytes), tiles per node, then the last line, one JSON object:
nodes, nodes_used, groups, propagations (groups whose tiles were computed: one each),
tiles_computed_twice (computed tiles minus distinct tiles), peak_object_store_bytes (largest
over cells), cell_input_bytes, plan_wall_s (the planner's schedule, orchestrator.plan.model
wall_time, fed with the tile seconds measured here), measured_wall_s (the sweep's wall time),
killed_node_tiles_lost (distinct tiles missing from the cache at the end), load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=3, help="worker nodes with GPUs")
    ap.add_argument("--gpus", type=int, default=4, help="logical GPUs per worker node")
    ap.add_argument("--inflight", type=int, default=4, help="tile_inflight per cell")
    ap.add_argument("--image-size", type=int, default=12)
    ap.add_argument("--train", type=int, default=64, help="training images per cell")
    ap.add_argument("--test", type=int, default=32)
    ap.add_argument("--tile-side", type=int, default=8)
    ap.add_argument("--no-kill", action="store_true", help="keep every node")
    ap.add_argument("--quick", action="store_true",
                    help="2 nodes x 2 GPUs, 8x8 images, 32 / 16 images: about a minute")
    a = ap.parse_args()
    if a.quick:
        a.nodes, a.gpus, a.inflight, a.image_size, a.train, a.test = 2, 2, 2, 8, 32, 16
    if a.nodes < 2 and not a.no_kill:
        ap.error("--nodes must be >= 2 to remove one half-way (or pass --no-kill)")

    import ray
    from ray.cluster_utils import Cluster

    from orchestrator.plan.model import TrialCost, wall_time
    from orchestrator.runner import run_sweep
    from orchestrator.spec import Preset, Sweep
    from orchestrator.store import Store
    from workers.devices import CPU_REHEARSAL

    work = Path(tempfile.mkdtemp(prefix="symsweep-cluster-kernels-"))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # the nodes' GPUs are Ray's logical ones: the tiles compute on JAX's CPU backend, which a
    # GPU tile otherwise refuses (workers/devices.py); the nodes inherit this environment
    os.environ[CPU_REHEARSAL] = "1"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 4, "num_gpus": 0, "object_store_memory": 100 * 2 ** 20,
        "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=0, num_gpus=a.gpus,
                                object_store_memory=100 * 2 ** 20) for _ in range(a.nodes)]
    cluster.wait_for_nodes()
    cfg = dict(dataset="synthetic", image_size=a.image_size, train_size=a.train, val_size=0,
               test_size=a.test, depth=2, tile_side=a.tile_side, w_var=2.0, b_var=0.01)
    sweep = Sweep(name="ck", axes=dict(inference=["nngp"], arch=["gap", "lap4", "lap8", "vec"],
                                       transform=["identity"]),
                  presets=dict(smoke=Preset(config=cfg, seeds=(0,), resources=dict(
                      kernel=dict(cpu=1, tile_cpu=0, tile_gpu=1, tile_inflight=a.inflight)))))
    res = work / "res"
    tiles_dir = res / "tiles"
    killed: list[str] = []

    def kill_half_way(total_guess: int) -> None:
        while not killed:
            n = len(list(tiles_dir.glob("*.npz"))) if tiles_dir.exists() else 0
            if n >= max(1, total_guess // 3):
                cluster.remove_node(workers[-1], allow_graceful=False)
                killed.append(f"node removed after {n} tiles were cached")
                return
            time.sleep(0.05)

    # tiles per group: the symmetric train block (upper triangle) and the test x train block
    blocks = -(-a.train // a.tile_side)
    per_group = blocks * (blocks + 1) // 2 + -(-a.test // a.tile_side) * blocks
    killer = None
    if not a.no_kill:
        killer = threading.Thread(target=kill_half_way, args=(2 * per_group,), daemon=True)
        killer.start()
    try:
        t0 = time.perf_counter()
        s = run_sweep(sweep, "smoke", results=str(res), address=cluster.address,
                      progress=False, tracking=False)
        wall = time.perf_counter() - t0
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    if s.failed or s.completed + s.diverged != 4:
        print(f"the sweep did not finish: {s}", file=sys.stderr)
        return 1
    rows = Store(str(res), "ck").read_trials_all()[0].to_pandas()
    rows = rows[rows["status"] == "completed"].sort_values("trial_id")
    stats = {r.arch: json.loads(r.metrics_json) for r in rows.itertuples()}
    distinct = len(list(tiles_dir.glob("*.npz")))
    computed = sum(int(m.get("tiles_computed", 0)) for m in stats.values())
    by_node: dict[str, int] = {}
    for m in stats.values():
        for node, n in json.loads(m.get("tiles_nodes_json") or "{}").items():
            by_node[node] = by_node.get(node, 0) + n
    x_bytes = (a.train + a.test) * a.image_size ** 2 * 3 * 4  # float32 images of one cell
    print("| cell | tiles computed | waited for | peak held bytes | cell input bytes |")
    print("|---|---|---|---|---|")
    for arch, m in stats.items():
        print(f"| {arch} | {m.get('tiles_computed', 0)} | {m.get('tiles_waited', 0)} | "
              f"{int(m.get('tiles_peak_held_bytes', 0))} | {x_bytes} |")
    print("tiles per node: " + ", ".join(f"{k[:8]} {v}" for k, v in sorted(by_node.items())))
    # the planner's schedule of the same work: each group priced once (its first cell), over
    # the cells' tile_inflight GPUs together (tile claims), on all the cluster's GPUs
    groups = {"full": ["gap", "lap4", "lap8"], "diag": ["vec"]}
    costs = []
    for g, archs in groups.items():
        secs = sum(float(stats[x].get("tiles_tile_s", 0.0)) for x in archs)
        costs.append(TrialCost(g, "kernel", "nngp", archs[0], False, secs, 0.0,
                               max(1, per_group), {}, spread=a.inflight * len(archs)))
    plan = wall_time(costs, a.nodes * a.gpus, 1.0)
    out = {"nodes": a.nodes, "gpus_per_node": a.gpus, "tile_inflight": a.inflight,
           "nodes_used": len(by_node), "groups": len(groups),
           "propagations": sum(1 for archs in groups.values()
                               if sum(int(stats[x].get("tiles_computed", 0)) for x in archs)),
           "tiles_distinct": distinct, "tiles_expected": 2 * per_group,
           "tiles_computed_twice": computed - distinct,
           "peak_object_store_bytes": max(int(m.get("tiles_peak_held_bytes", 0))
                                          for m in stats.values()),
           "cell_input_bytes": x_bytes,
           "plan_wall_s": round(plan["wall_s"], 2), "measured_wall_s": round(wall, 2),
           "killed": killed[0] if killed else None,
           "killed_node_tiles_lost": 2 * per_group - distinct,
           "loadavg": [round(x, 2) for x in os.getloadavg()]}
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
