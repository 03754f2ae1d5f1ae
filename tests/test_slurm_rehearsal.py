"""Rehearsal of cluster/slurm.sbatch on this machine (issue 29, item 4).

The batch script runs as SLURM would run it, with stand-ins for what only a SLURM cluster has:

* ``srun``: a multi-node step starts one local process per "node" with SLURM's per-task
  variables (SLURM_NODEID, SLURM_PROCID, SLURMD_NODENAME), waits for all of them and exits with
  the highest exit code, as srun does; a one-task step (``-w HEAD``) runs its command once.
* ``scontrol``: ``show hostnames`` names node0..node<N-1>; ``requeue`` is recorded in a file
  and sends SIGTERM to the batch script, as SLURM does to a job it requeues.
* ``ray`` (first on the tasks' PATH): Ray's real ``ray symmetric-run`` and ``ray start``, with
  three changes for one machine standing in for two: a "node" other than the first has none of
  the head's addresses (else both would start a head), other Rays on this machine are not on
  "this node" (a real node runs only ours), each node gets its own ports, and ``ray stop`` stops
  only this rehearsal's Ray processes (the real one stops every Ray of the user on the machine).

The sweep is test_stop.py's held sweep (the real SGD and kernel workers on 8x8 data, one CPU
each, one per node), held mid-way. SIGUSR1 to the batch shell, as ``--signal=B:USR1@600``
sends it before the wall time: the script runs `symsweep stop --wait` and requeues the job;
the driver exits 130 with both attempts recorded as interrupted. The "requeued" job (the same
script, SLURM_RESTART_COUNT=1) finishes the sweep: each trial has one interrupted and one
completed attempt, the SGD run continued from the checkpoint the stop wrote, and the rows equal
those of an uninterrupted run.

What only a real SLURM cluster confirms (README, "SLURM"): that SLURM delivers the signal at
the lead time, requeues and restarts the job, that the nodes reach the head on the address
``hostname -I`` gives first, node-local temp dirs, and GPUs per node.
"""

from __future__ import annotations

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
from faults.test_stop import METRICS, write_held_sweep

from orchestrator.store import Store

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SCRIPT = REPO / "cluster" / "slurm.sbatch"

SRUN = '''\
#!{python}
"""Stand-in srun: one local process per node, SLURM's per-task variables, the highest code."""
import os, signal, subprocess, sys

args, opts = sys.argv[1:], {{}}
while args and args[0].startswith("-"):
    a = args.pop(0)
    if "=" in a:
        k, v = a.split("=", 1)
    elif a in ("-w", "-N", "-n", "--nodelist"):
        k, v = a, args.pop(0)
    else:
        k, v = a, ""
    opts[k] = v
n = int(opts.get("--nodes", opts.get("-N", "1")))
if opts.get("--ntasks", opts.get("-n")) == "1":
    n = 1
procs = []
for node in range(n):
    env = dict(os.environ, SLURM_NODEID=str(node), SLURM_PROCID=str(node), SLURM_LOCALID="0",
               SLURMD_NODENAME=f"node{{node}}", SLURM_STEP_NUM_NODES=str(n),
               PATH=os.environ["REHEARSAL_SHIM"] + ":" + os.environ["PATH"])
    procs.append(subprocess.Popen(args, env=env))
for s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(s, lambda sig, frame: [p.send_signal(sig) for p in procs])
codes = [p.wait() for p in procs]
codes = [c if c >= 0 else 128 - c for c in codes]
for node, c in enumerate(codes):  # as srun reports a task that failed
    if c:
        print(f"srun: error: node{{node}}: task {{node}}: Exited with exit code {{c}}",
              file=sys.stderr, flush=True)
sys.exit(max(codes))
'''

SCONTROL = '''\
#!{python}
"""Stand-in scontrol: the allocation's host names, and a recorded requeue (then SIGTERM to
the batch script, as SLURM ends the job it requeues)."""
import os, signal, sys

a = sys.argv[1:]
if a[:2] == ["show", "hostnames"]:
    print("\\n".join(f"node{{i}}" for i in range(int(os.environ["SLURM_JOB_NUM_NODES"]))))
elif a[:1] == ["requeue"]:
    with open(os.path.join(os.environ["REHEARSAL_DIR"], "requeued"), "a") as f:
        f.write(a[1] + "\\n")
    os.kill(os.getppid(), signal.SIGTERM)
else:
    sys.exit(f"scontrol stand-in: {{a}} is not rehearsed")
'''

RAY = '''\
#!{python}
"""Stand-in ray: the real one, made to run two "nodes" on one machine (see the test)."""
import json, os, sys

REAL = {real!r}
args = sys.argv[1:]
node = os.environ.get("SLURM_NODEID", "0")
if args[:1] == ["stop"]:  # only this "node's" Ray of this job: never another's, nor an ancestor
    import psutil

    me = psutil.Process()
    keep = {{me.pid, *(p.pid for p in me.parents())}}
    for p in psutil.process_iter():
        try:
            e = p.environ()
            if p.pid not in keep and e.get("SLURM_NODEID") == node and \\
                    e.get("RAY_AUTH_TOKEN") == os.environ["RAY_AUTH_TOKEN"]:
                p.kill()
        except psutil.Error:
            pass
    sys.exit(0)
if args[:1] == ["start"]:  # every node its own ports (Ray's defaults collide on one machine)
    import socket

    extra = ["--resources", json.dumps({{f"node{{node}}": 1}}),
             "--object-store-memory", str(256 * 1024 ** 2)]
    for flag in ("--node-manager-port", "--object-manager-port", "--dashboard-agent-grpc-port",
                 "--dashboard-agent-listen-port", "--metrics-export-port",
                 "--runtime-env-agent-port"):
        with socket.socket() as s:
            s.bind(("", 0))
            extra += [flag, str(s.getsockname()[1])]
    os.execv(REAL, [REAL, *args, *extra])
if args[:1] == ["symmetric-run"]:
    import psutil
    import ray.scripts.symmetric_run as sr

    sr.check_ray_already_started = lambda: False  # other Rays here are not on "this node"
    if node != "0":  # a node that is not the head has none of its addresses
        psutil.net_if_addrs = lambda: {{}}
    sr.symmetric_run.main(args=args[1:], prog_name="ray symmetric-run")
os.execv(REAL, [REAL, *args])
'''


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    path.chmod(0o755)


def _kill_ours(rehearsal: str) -> None:
    """Every process this rehearsal started (they carry REHEARSAL_DIR in their environment)."""
    import psutil

    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get("REHEARSAL_DIR") == rehearsal:
                p.kill()
        except psutil.Error:
            pass


def _said(log: Path) -> str:
    """The job log without Ray's own lines (raylet / GCS logs, state dumps): what the script
    and the driver said, for a failure message."""
    noise = ("(raylet)", "(gcs_server)", "[state-dump]", "raylet.out", "gcs_server.out")
    lines = [ln for ln in log.read_text().splitlines()
             if ln.strip() and not any(n in ln for n in noise)]
    return "\n".join(lines[-80:])


def _batch(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(SCRIPT)], cwd=REPO, env=env, stdout=log.open("a"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def test_wall_time_signal_stops_the_sweep_and_the_requeued_job_finishes_it(tmp_path):
    ips = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    if not ips:
        pytest.skip("this machine has no non-loopback address for the head")
    d = tmp_path
    for name, text in (("bin/srun", SRUN), ("bin/scontrol", SCONTROL),
                       ("shim/ray", RAY)):
        _write(d / name, text.format(python=sys.executable, real=str(VENV_BIN / "ray")))
    ray_root = tempfile.mkdtemp(prefix="ssr-", dir="/tmp")  # short: Ray's unix socket paths
    job = str(90000 + os.getpid() % 10000)
    sweep_file, hold = write_held_sweep(d)
    res = d / "res"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SLURM"))}
    env.update(PATH=f"{d / 'bin'}:{os.environ['PATH']}", SLURM_JOB_ID=job,
               SLURM_JOB_NUM_NODES="2", SLURM_NNODES="2", SLURM_JOB_NODELIST="node[0-1]",
               SLURM_CPUS_ON_NODE="1", SLURM_GPUS_ON_NODE="0", SLURM_TMPDIR=ray_root,
               SWEEP_FILE=str(sweep_file), PRESET="smoke", SYMSWEEP_RESULTS=str(res),
               SYMSWEEP_VENV=str(VENV_BIN.parent), REHEARSAL_DIR=str(d),
               REHEARSAL_SHIM=str(d / "shim"),
               # a node's raylet gives up on a stopped head after this (Ray's default: 60 s;
               # shorter here, so that srun, which waits for every node, ends sooner)
               RAY_gcs_rpc_server_reconnect_timeout_s="5", PYTHONUNBUFFERED="1")
    log = d / "job.log"
    try:
        # ---- the first job: held mid-way, then the wall-time signal
        hold.write_text("hold")
        proc = _batch(env, log)
        reached = [Path(f"{hold}.train.reached"), Path(f"{hold}.kernel.reached")]
        t0 = time.monotonic()
        while not all(r.exists() for r in reached):
            assert proc.poll() is None, _said(log)
            assert time.monotonic() - t0 < 300, _said(log)
            time.sleep(0.2)
        proc.send_signal(signal.SIGUSR1)  # --signal=B:USR1@600: to the batch shell only
        code = proc.wait(timeout=300)
        text = log.read_text()
        assert code == 130, _said(log)
        assert "SIGUSR1: stopping sweep held cleanly" in text and "the driver has stopped" in text
        assert (d / "requeued").read_text().split() == [job]
        # requeued only once the step (driver and Ray) had ended; SLURM's SIGTERM that
        # follows a requeue ends the script with the step's code, saying so
        assert text.index("srun ended with exit code 130") < text.index("requeueing job")
        assert "SIGTERM after the requeue" in text
        st = Store(str(res), "held")
        first = st.read_trials_all()[0].to_pandas()
        assert sorted(first["status"]) == ["interrupted", "interrupted"], _said(log)
        assert first["node"].nunique() == 2  # one trial on each node
        assert not (res / "held" / "driver.lock").exists()

        # ---- the requeued job: the same script continues the sweep
        hold.unlink()
        proc = _batch(dict(env, SLURM_RESTART_COUNT="1"), log)
        code = proc.wait(timeout=300)
        text = log.read_text()
        assert code == 0, _said(log)
        assert "(restart 1)" in text
    finally:
        _kill_ours(str(d))
        shutil.rmtree(ray_root, ignore_errors=True)
    rows = st.read_trials_all()[0].to_pandas().sort_values("attempt")
    assert rows.groupby("kind")["status"].agg(list).to_dict() == {
        "kernel": ["interrupted", "completed"], "train": ["interrupted", "completed"]}
    df = st.latest()[0].set_index("kind")
    assert df.loc["train", "start_step"] == 20  # the checkpoint the stop wrote
    assert st.done_ids() == set(df["trial_id"])  # each counted once

    # the same sweep uninterrupted (an embedded Ray, the same trial environment)
    from orchestrator.runner import run_sweep
    from orchestrator.spec import load_sweep

    ref_dir = d / "ref"
    ref_dir.mkdir()
    ref_file, _ = write_held_sweep(ref_dir)
    s = run_sweep(load_sweep(str(ref_file)), "smoke", results=str(ref_dir / "res"),
                  progress=False, tracking=False, num_cpus=2)
    assert s.completed == 2
    ref = Store(str(ref_dir / "res"), "held").latest()[0].set_index("kind")
    for m in METRICS:
        assert df.loc["train", m] == ref.loc["train", m], m
    for m in ("test_acc", "test_mse"):
        assert df.loc["kernel", m] == ref.loc["kernel", m], m


@pytest.mark.parametrize("stand_in, says", [
    # srun cannot start the lookup on the head (e.g. the venv is not on a shared file system)
    (("bin/srun", "#!/bin/sh\necho 'srun: error: Unable to create step' >&2\nexit 1\n"),
     "could not look up the head node node0 (srun failed)"),
    # the head has no non-loopback address: 127.0.0.1 would strand the other node
    (("bin/hostname", "#!/bin/sh\nexit 0\n"), "has no non-loopback address"),
])
def test_a_head_that_cannot_be_found_stops_the_job_with_one_line(tmp_path, stand_in, says):
    d = tmp_path
    for name, text in (("bin/srun", SRUN), ("bin/scontrol", SCONTROL), ("shim/ray", RAY)):
        _write(d / name, text.format(python=sys.executable, real=str(VENV_BIN / "ray")))
    _write(d / stand_in[0], stand_in[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SLURM"))}
    env.update(PATH=f"{d / 'bin'}:{os.environ['PATH']}", SLURM_JOB_ID="1",
               SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="node[0-1]",
               SYMSWEEP_VENV=str(VENV_BIN.parent), REHEARSAL_DIR=str(d),
               REHEARSAL_SHIM=str(d / "shim"), SYMSWEEP_RESULTS=str(d / "res"))
    out = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("symsweep:")]
    assert len(lines) == 1 and says in lines[0], out.stderr
    assert not (d / "res").exists() and not (d / "requeued").exists()  # nothing started


FAKE_SRUN = '''\
#!{python}
"""Stand-in srun for the signal paths: a one-task step (the head lookup) runs its command; the
sweep's step runs FAKE_STEP in a shell instead of Ray and the driver."""
import os, subprocess, sys

args = sys.argv[1:]
if "--ntasks=1" in args:
    while args[0].startswith("-"):
        args = args[2:] if args[0] == "-w" else args[1:]
    sys.exit(subprocess.call(args))
sys.exit(subprocess.call(["bash", "-c", os.environ["FAKE_STEP"]]))
'''


def _signal_env(d: Path, step: str, stop_rc: int) -> dict[str, str]:
    """Stand-ins: srun (FAKE_SRUN), scontrol, and a venv whose `symsweep` records its
    arguments and exits ``stop_rc`` (as `symsweep stop` would) and whose `python` is ours."""
    _write(d / "bin/srun", FAKE_SRUN.format(python=sys.executable))
    _write(d / "bin/scontrol", SCONTROL.format(python=sys.executable))
    _write(d / "venv/bin/python", f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    _write(d / "venv/bin/symsweep", f'#!/bin/sh\necho "$@" >> {d}/stop-calls\nexit {stop_rc}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SLURM"))}
    env.update(PATH=f"{d / 'bin'}:{os.environ['PATH']}", SLURM_JOB_ID="5",
               SLURM_JOB_NUM_NODES="1", SLURM_JOB_NODELIST="node0", SYMSWEEP_VENV=str(d / "venv"),
               REHEARSAL_DIR=str(d), SYMSWEEP_RESULTS=str(d / "res"), SYMSWEEP_END_WAIT_S="2",
               FAKE_STEP=step, SWEEP_FILE=str(REPO / "sweeps" / "fig2.py"))
    return env


def _usr1_once_the_step_runs(env: dict[str, str], d: Path) -> subprocess.CompletedProcess:
    log = d / "job.log"  # a file: a step left running would hold a pipe open
    with log.open("w") as f:
        proc = subprocess.Popen(["bash", str(SCRIPT)], cwd=REPO, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t_end = time.monotonic() + 60
        while not (d / "step").exists():
            assert proc.poll() is None and time.monotonic() < t_end, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)
        proc.wait(timeout=120)
    finally:
        _kill_ours(str(d))
    return subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text())


def test_the_wall_time_signal_after_the_driver_finished_does_not_requeue(tmp_path):
    """SIGUSR1 while Ray winds down after a finished sweep (`symsweep stop`: no driver, exit
    2): the step is left to end by itself, the job ends with its code 0, and no requeue
    runs a finished sweep again."""
    d = tmp_path
    out = _usr1_once_the_step_runs(_signal_env(d, f"touch {d}/step; sleep 1; exit 0", 2), d)
    assert out.returncode == 0, out.stdout
    assert "srun ended with exit code 0" in out.stdout and "ending the step" not in out.stdout
    assert not (d / "requeued").exists()
    assert (d / "stop-calls").read_text().split()[:2] == ["stop", "fig2"]


@pytest.mark.parametrize("step, code, says", [
    # the sweep finished (driver 0); Ray's symmetric-run on the head then exited 1 as its
    # `ray stop` ended the raylet it was still connected to (seen in CI, Ray 2.60)
    ('echo 0 > "$SYMSWEEP_DRIVER_RC"; exit 1', 0, "the driver ended with exit code 0"),
    # the driver never ran (Ray did not start): srun's code stands
    ("exit 1", 1, None),
])
def test_the_job_ends_with_the_drivers_exit_code_not_srun_s(tmp_path, step, code, says):
    env = _signal_env(tmp_path, step, 0)
    env["SLURM_TMPDIR"] = str(tmp_path)
    out = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == code, out.stdout + out.stderr
    assert "srun ended with exit code 1" in out.stdout
    assert (says in out.stdout) if says else "the driver ended" not in out.stdout
    assert not list(tmp_path.glob("*.driver-rc"))  # read and removed
    assert not (tmp_path / "requeued").exists()


def test_a_driver_that_does_not_stop_gets_sigterm_itself_then_the_job_is_requeued(tmp_path):
    """`symsweep stop --wait` times out (exit 1): the driver named by the lock (here a
    stand-in process on this host) gets SIGTERM to its own pid, never through srun (which
    would SIGKILL it); a step still running END_WAIT_S later no longer holds the requeue up."""
    d = tmp_path
    driver = subprocess.Popen(["sleep", "300"], env=dict(os.environ, REHEARSAL_DIR=str(d)))
    (d / "res" / "fig2").mkdir(parents=True)
    (d / "res" / "fig2" / "driver.lock").write_text(
        f'{{"host": "{socket.gethostname()}", "pid": {driver.pid}, "token": "t"}}')
    out = _usr1_once_the_step_runs(_signal_env(d, f"touch {d}/step; sleep 300", 1), d)
    assert driver.wait(timeout=10) == -signal.SIGTERM
    assert f"SIGTERM to it (pid {driver.pid})" in out.stdout
    assert "the step still runs after 2 s: requeueing now" in out.stdout
    assert (d / "requeued").read_text().split() == ["5"] and out.returncode == 1


@pytest.mark.parametrize("extra, env_over, says", [
    (["--results", "/elsewhere"], {}, "pass the results root as SYMSWEEP_RESULTS"),
    ([], {"SWEEP_FILE": "sweeps/no_such.py"}, "SWEEP_FILE=sweeps/no_such.py:"),
])
def test_bad_input_to_the_script_is_one_line_exit_2(tmp_path, extra, env_over, says):
    env = {**_signal_env(tmp_path, "exit 0", 0), **env_over}
    out = subprocess.run(["bash", str(SCRIPT), *extra], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1 and says in lines[0], out.stderr
