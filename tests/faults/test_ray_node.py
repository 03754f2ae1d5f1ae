"""The Ray a run starts, on a machine that already ran Ray, and the CPUs it gives trials.

Each case failed before issue 25: a stale ``ray_current_cluster`` (a ``ray start`` cluster
that ended without ``ray stop``) made every run without ``--address`` a traceback ("num_cpus
and num_gpus must not be provided"), and a live one was joined unasked; an ``--address``
where nothing listens made ``ray.init`` retry for minutes, then a traceback; Ray was given
``os.cpu_count()`` CPUs under ``taskset -c 0``; and a 1-CPU trial ran 4 busy threads
(XLA's pool, one per core, whatever the XLA flags said).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from fault_helpers import FIG2, REPO, one_line_error, snapshot

from orchestrator.cli import main
from orchestrator.cpus import usable_cpus

N_CORES = len(os.sched_getaffinity(0))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def ray_tmp():
    """A short Ray temp dir of this test's own (``$RAY_TMPDIR``: Ray's unix socket paths must
    stay under 108 bytes, which pytest's tmp_path can exceed)."""
    d = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # noqa: S108 - short on purpose
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def _env(ray_tmp: Path, **kw: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "PYTHONPATH": str(REPO), "RAY_TMPDIR": str(ray_tmp), **kw}


# ====================================================================== which Ray
OWN_RAY = textwrap.dedent('''
    import json, os, sys
    if os.environ.get("PIN_ONE_CORE"):  # as `taskset -c N` (or SLURM, a container) would
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import ray
    from orchestrator.raynode import check_address, ensure_ray
    check_address(None)
    assert ensure_ray(None, None, {})
    print(json.dumps(ray.cluster_resources()))
    ray.shutdown()
''')


def _own_ray(ray_tmp: Path, **env: str) -> tuple[dict, str]:
    p = subprocess.run([sys.executable, "-c", OWN_RAY], env=_env(ray_tmp, **env),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


def test_stale_ray_start_record_does_not_stop_a_run(ray_tmp):
    """`ray start` recorded a cluster that is gone: the run starts a Ray of its own, silently
    (the record says nothing the user needs)."""
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_free_port()}")
    res, err = _own_ray(ray_tmp)
    assert res["CPU"] == usable_cpus()
    assert "ray start" not in err


@pytest.mark.skipif(N_CORES < 2, reason="needs two cores to restrict to one")
def test_embedded_ray_gets_the_cores_of_the_affinity_mask(ray_tmp):
    """Under `taskset -c 0` Ray advertised os.cpu_count() CPUs, and ran that many 1-CPU
    trials on one core."""
    res, _ = _own_ray(ray_tmp, PIN_ONE_CORE="1")
    assert res["CPU"] == 1


def test_live_foreign_cluster_is_not_joined(ray_tmp):
    """Someone's `ray start` cluster is alive on this machine: a run without --address starts
    a Ray of its own (the foreign node's resource is not in its cluster) and says so in one
    line naming the cluster."""
    import psutil

    port = _free_port()
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}",
         "--num-cpus=1", "--block", "--include-dashboard=false", "--disable-usage-stats",
         '--resources={"someone_elses_node": 1}'],
        env=_env(ray_tmp), start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    procs: list[psutil.Process] = []
    try:
        record = ray_tmp / "ray" / "ray_current_cluster"
        while not record.exists():  # `ray start` writes it once the head is up
            assert head.poll() is None, head.stderr.read()[-3000:]
            time.sleep(0.2)
        procs = psutil.Process(head.pid).children(recursive=True)
        res, err = _own_ray(ray_tmp)
        assert "someone_elses_node" not in res, res
        lines = [ln for ln in err.splitlines() if "ray start" in ln]
        assert len(lines) == 1 and record.read_text().strip() in lines[0], err[-2000:]
        assert "starts a Ray of its own" in lines[0] and "--address" in lines[0]
    finally:  # stop only the Ray this test started
        try:
            procs = [psutil.Process(head.pid), *psutil.Process(head.pid).children(
                recursive=True)]
        except psutil.Error:
            pass
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            p.kill()
        head.wait(timeout=30)


# ====================================================================== a dead --address
@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}", "auto",
                                     "nonsense"])
def test_dead_address_is_one_line_and_writes_nothing(tmp_path, ray_tmp, capsys, monkeypatch,
                                                      address):
    """Nothing listens there: one line naming the address and the fix, exit code 2, nothing
    written, no Ray started (``ray.init`` retried for minutes before)."""
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))  # no `ray start` record: auto finds none
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    address = address.format(port=_free_port())
    results = tmp_path / "res"
    results.mkdir()
    before = snapshot(results)
    assert main(["run", str(FIG2), "--preset", "smoke", "--results", str(results),
                 "--no-progress", "--no-report", "--address", address]) == 2
    needle = "not a Ray address" if address == "nonsense" else (
        "no running Ray cluster is recorded" if address == "auto" else "no Ray cluster answers")
    one_line_error(capsys, f"--address {address}", needle)
    assert snapshot(results) == before
    if "ray" in sys.modules:
        import ray

        assert not ray.is_initialized()


# ====================================================================== CPU quotas
def _fake_cgroup(tmp: Path, proc_lines: str, files: dict[str, str]) -> tuple[str, str]:
    (tmp / "proc" / "self").mkdir(parents=True)
    (tmp / "proc" / "self" / "cgroup").write_text(proc_lines)
    for rel, text in files.items():
        f = tmp / "cg" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return str(tmp / "proc"), str(tmp / "cg")


@pytest.mark.parametrize("proc_lines,files,expect", [
    # cgroup v2, docker --cpus=1.5 on the container's own cgroup: floor(1.5) = 1
    ("0::/job\n", {"job/cpu.max": "150000 100000\n"}, 1),
    # v2, the quota on the parent binds the child
    ("0::/slurm/job7/step0\n", {"slurm/job7/cpu.max": "100000 100000\n",
                                "slurm/job7/step0/cpu.max": "max 100000\n"}, 1),
    # v2 without a quota: the affinity mask decides
    ("0::/user\n", {"user/cpu.max": "max 100000\n"}, None),
    # cgroup v1, cpu,cpuacct controller, 1 CPU quota
    ("4:cpu,cpuacct:/docker/abc\n1:memory:/docker/abc\n",
     {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000\n",
      "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"}, 1),
    # v1 inside a container: the host's path in /proc, only the container's cgroup mounted
    ("3:cpu:/kubepods/pod1/c1\n", {"cpu/cpu.cfs_quota_us": "50000\n",
                                   "cpu/cpu.cfs_period_us": "100000\n"}, 1),
    # v1, no quota (-1)
    ("3:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
     None),
])
def test_usable_cpus_obey_the_cgroup_quota(tmp_path, proc_lines, files, expect):
    proc, cg = _fake_cgroup(tmp_path, proc_lines, files)
    assert usable_cpus(proc=proc, cgroup=cg) == (expect or N_CORES)


# ====================================================================== one thread per CPU
THREAD_SWEEP = textwrap.dedent('''
    import json, os
    from orchestrator.spec import Preset, Sweep

    def _ticks():
        out = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                stat = open(f"/proc/self/task/{tid}/stat").read()
            except OSError:
                continue
            f = stat.rsplit(")", 1)[1].split()
            out[tid] = int(f[11]) + int(f[12])  # utime + stime, clock ticks
        return out

    def tile_mask(i):
        return sorted(os.sched_getaffinity(0))

    def train(config, report=None):
        import jax, jax.numpy as jnp
        from orchestrator.tiles import TileMapper
        # a CPU kernel tile: a Ray task of its own, on the trial's cores
        (tile_allowed,) = TileMapper(cache=None)(tile_mask, [{"i": config["seed"]}])
        x = jnp.ones((384, 384))
        step = jax.jit(lambda a: jnp.tanh(a @ a) / 384.0)
        step(x).block_until_ready()
        before = _ticks()
        total = 0
        while total < 100:  # an amount of CPU work (1 s of one core), not a duration
            for _ in range(50):
                x = step(x)
            x.block_until_ready()
            after = _ticks()
            total = sum(after[t] - before.get(t, 0) for t in after)
        used = [after[t] - before.get(t, 0) for t in after]
        allowed = sorted(os.sched_getaffinity(0))
        with open(os.path.join(os.environ["THREADS_OUT"], f"s{config['seed']}.json"), "w") as f:
            json.dump({"busy": sorted((u for u in used if u >= 0.1 * total), reverse=True),
                       "allowed": allowed, "tile_allowed": tile_allowed}, f)
        return {"status": "completed", "test_acc": 0.5, "train_acc": 1.0}

    SWEEP = Sweep(name="thr", axes=dict(inference=["nn"], arch=["vec"], transform=["identity"]),
                  presets=dict(smoke=Preset(config=dict(dataset="synthetic", max_steps=1),
                                            width=dict(vec=4), seeds=(0, 1),
                                            resources=dict(train=dict(cpu=1)))),
                  workers=dict(train=train))
''')
THREAD_DRIVER = textwrap.dedent('''
    import sys
    from orchestrator.runner import run_sweep
    from orchestrator.spec import load_sweep
    s = run_sweep(load_sweep(sys.argv[1]), "smoke", results=sys.argv[2], progress=False,
                  tracking=False)
    assert s.completed == 2, s
''')


@pytest.mark.skipif(N_CORES < 2, reason="one core: nothing to oversubscribe")
def test_one_cpu_trial_runs_one_busy_thread(tmp_path, ray_tmp):
    """Two 1-CPU trials on this machine: each is pinned to one core of its own and JAX runs
    one busy thread in it (measured from /proc/self/task: threads holding at least 10% of the
    trial's CPU time), where it ran one per core before (4 here); its CPU kernel tiles (Ray
    tasks in other processes) run on the same core."""
    (tmp_path / "thr.py").write_text(THREAD_SWEEP)
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.run([sys.executable, "-c", THREAD_DRIVER, str(tmp_path / "thr.py"),
                        str(tmp_path / "res")], env=_env(ray_tmp, THREADS_OUT=str(out)),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    got = {f.stem: json.loads(f.read_text()) for f in out.glob("s*.json")}
    assert set(got) == {"s0", "s1"}
    for seed, m in got.items():
        assert len(m["allowed"]) == 1, (seed, m)
        assert len(m["busy"]) == 1, (seed, m)
        assert m["tile_allowed"] == m["allowed"], (seed, m)
