"""The cluster-launcher configs in cluster/: Ray's own validation, shell syntax, and the
security / storage / install promises README.md ("Running on a cluster") makes about them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
CONFIGS = {"gpu.yaml": "aws", "gcp-gpu.yaml": "gcp", "local.yaml": "local"}


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _prepared(name: str) -> dict:
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(_load(name))


def _commands(cfg: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    return [c for k in keys for c in cfg.get(k, [])]


def _exports(cfg: dict) -> dict[str, str]:
    text = " ".join(cfg["setup_commands"])
    return dict(re.findall(r"export (\w+)=([^'\s]+)", text))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ray_accepts_the_config(name):
    """The launcher's own path: prepare_config (defaults merged) then validate_config."""
    from ray.autoscaler._private.util import validate_config

    cfg = _prepared(name)
    validate_config(cfg)
    assert cfg["provider"]["type"] == CONFIGS[name]


def test_validation_is_not_vacuous():
    """The same validator rejects a config with a misspelt top-level key."""
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    cfg = _prepared("gpu.yaml")
    cfg["setup_comands"] = []
    with pytest.raises(jsonschema.ValidationError):
        validate_config(cfg)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_command_is_valid_bash(name):
    for cmd in _commands(_load(name)):
        r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert r.returncode == 0, f"{name}: bash rejects {cmd!r}: {r.stderr}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_nothing_public_and_no_secrets(name):
    raw = (CLUSTER / name).read_text()
    cfg = _load(name)
    cmds = _commands(cfg)
    # no credentials of any kind in the file
    assert not re.search(r"AKIA[0-9A-Z]{16}|BEGIN [A-Z ]*PRIVATE KEY|"
                         r"(secret|password|token|private_key_id)\w*\s*[:=]\s*['\"]?\w{12,}",
                         raw, re.I)
    assert "RAY_AUTH_TOKEN=" not in raw
    for forbidden in ("0.0.0.0", "--dashboard-host=0", "--host 0"):
        assert not any(forbidden in c for c in cmds), f"{name}: {forbidden} in a command"
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert re.search(r"mlflow server --host 127\.0\.0\.1 --port 5000", head_start)
    # every Ray node runs with token authentication, the token synced from the user's machine
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
              if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    assert cfg["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert _exports(cfg)["RAY_AUTH_MODE"] == "token"


def test_aws_security_group_opens_only_ssh():
    """Ray's AWS provider gives the group it creates two inbound rules, ssh (tcp 22) and
    traffic between the group's members, plus the config's IpPermissions: those must open
    nothing but port 22, and no node may bring its own groups."""
    cfg = _load("gpu.yaml")
    sg = cfg["provider"]["security_group"]
    assert sg["GroupName"]
    for rule in sg.get("IpPermissions", []):
        assert rule["FromPort"] == rule["ToPort"] == 22, rule
    for node in cfg["available_node_types"].values():
        assert "SecurityGroupIds" not in node["node_config"]


def test_gcp_nodes_use_the_ssh_only_network():
    cfg = _load("gcp-gpu.yaml")
    raw = (CLUSTER / "gcp-gpu.yaml").read_text()
    for node in cfg["available_node_types"].values():
        nets = [i["network"] for i in node["node_config"]["networkInterfaces"]]
        assert nets == ["global/networks/symsweep-net"]
    assert re.search(r"firewall-rules create symsweep-ssh --network symsweep-net\s*\\\s*#?\s*"
                     r"--allow tcp:22 ", raw)
    assert not re.search(r"firewall-rules create .*--allow (?!tcp:22 )[^\n]*"
                         r"--source-ranges 0\.0\.0\.0/0", raw)


@pytest.mark.parametrize("name,scheme", [("gpu.yaml", "s3://"), ("gcp-gpu.yaml", "gs://")])
def test_results_on_object_storage_and_mlflow_on_the_head(name, scheme):
    cfg = _load(name)
    env = _exports(cfg)
    assert env["SYMSWEEP_RESULTS"].startswith(scheme)
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert env["RAY_ADDRESS"] == "auto"
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert f"--artifacts-destination {scheme}" in head_start
    # the bucket the results go to is the bucket MLflow artifacts go to
    bucket = env["SYMSWEEP_RESULTS"][len(scheme):].split("/")[0]
    assert f"{scheme}{bucket}/" in head_start
    # pyarrow, which the results store uses, understands the scheme
    import pyarrow.fs as pafs

    fs_name = {"s3://": "S3FileSystem", "gs://": "GcsFileSystem"}[scheme]
    assert hasattr(pafs, fs_name)
    # MLflow's server needs the bucket's client library to store artifacts there, and the
    # trials need fsspec's backend for the scheme (gs:// / s3:// ImageNet): both come pinned,
    # with hashes, in the lock every node installs
    lock = (ROOT / "requirements" / "gpu.txt").read_text()
    for pkg in {"s3://": ("boto3", "s3fs"), "gs://": ("google-cloud-storage", "gcsfs")}[scheme]:
        assert re.search(rf"^{pkg}==[0-9][^ ]* \\\n\s+--hash=sha256:", lock, re.M), pkg


def test_both_locks_carry_the_cloud_extra():
    """gs:// / s3:// ImageNet is read on the nodes (gpu lock) and pre-flighted by the driver,
    which may be a workstation (dev lock): both locks pin the `cloud` extra, compiled by the
    one `make lock`."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    names = {re.split(r"[<>=\[ ]", d)[0] for d in extras["cloud"]}
    assert names == {"gcsfs", "s3fs", "boto3", "google-cloud-storage"}
    for lock in ("dev.txt", "gpu.txt"):
        text = (ROOT / "requirements" / lock).read_text()
        assert all(re.search(rf"^{n}==", text, re.M) for n in names), lock
    make = (ROOT / "Makefile").read_text()
    assert "--extra dev --extra cloud -o requirements/dev.txt" in make
    assert "--extra gpu --extra cloud -o requirements/gpu.txt" in make


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_nothing_is_installed_unlocked(name):
    """Every pip install on a node is the hash-checked lock or the project without its
    dependencies: an unpinned `pip install boto3` could move botocore under the locked
    aiobotocore (s3fs) on one node and not another."""
    for c in _commands(_load(name)):
        for call in re.findall(r"pip install[^&;|]*", c):
            assert ("--require-hashes -r requirements/gpu.txt" in call
                    or "--no-deps -e ." in call), (name, call)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_project_installed_from_the_gpu_lock_from_the_synced_tree(name):
    """Every node installs the locked GPU set (versions and hashes pinned), then the project
    without resolving anything, so two nodes never run different library versions."""
    cfg = _load(name)
    assert cfg["file_mounts"]["~/symsweep"] == "."
    assert ".gitignore" in cfg.get("rsync_filter", [])
    install = [c for c in cfg["setup_commands"] if "pip install" in c]
    assert len(install) == 1 and "cd ~/symsweep" in install[0]
    assert "--require-hashes -r requirements/gpu.txt" in install[0]
    assert "--no-deps -e ." in install[0]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any("jax[cuda" in d for d in extras["gpu"])
    lock = (ROOT / "requirements" / "gpu.txt").read_text()
    assert "jax-cuda12-plugin==" in lock and "--hash=sha256:" in lock


def test_locks_pin_ray_to_the_cluster_image():
    """The driver (dev lock, a laptop) and the nodes (gpu lock, the image) run one Ray."""
    import re

    tags = {re.search(r"rayproject/ray:([0-9.]+)-", (ROOT / "cluster" / n).read_text()).group(1)
            for n in ("gpu.yaml", "gcp-gpu.yaml")}
    assert len(tags) == 1
    for lock in ("dev.txt", "gpu.txt"):
        pins = re.findall(r"^ray==([0-9.]+)", (ROOT / "requirements" / lock).read_text(), re.M)
        assert pins == list(tags), (lock, pins, tags)


@pytest.mark.parametrize("name", ["gpu.yaml", "gcp-gpu.yaml"])
def test_cloud_layout(name):
    """CPU head that runs no trial, autoscaling GPU workers, the container's Ray = ours."""
    import ray

    cfg = _prepared(name)
    nodes = cfg["available_node_types"]
    head = nodes[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    workers = [n for k, n in nodes.items() if k != cfg["head_node_type"]]
    assert len(workers) == 2 and all(w["min_workers"] == 0 and w["max_workers"] >= 1
                                     for w in workers)
    # every node type declares what trials request (the autoscaler counts a missing key as 0)
    for w in workers:
        assert {"CPU", "GPU", "memory"} <= set(w["resources"]), w["resources"]
    assert sorted(w["resources"]["GPU"] for w in workers) == [4, 8]  # 8: the ImageNet trials
    image = cfg["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{ray.__version__}-py3")
    assert image.endswith("-gpu")
    py = re.search(r"-py3(\d+)-", image).group(1)
    assert int(py) >= 11


def test_sweep_file_takes_ray_submit_arguments():
    """`ray submit cfg sweeps/fig2.py -- --preset paper ...` runs `python fig2.py ...` on the
    head, with or without the `--`; the sweep file must accept both."""
    for sep in (["--"], []):
        r = subprocess.run([sys.executable, "sweeps/fig2.py", *sep, "--preset", "paper",
                            "--address", "auto", "--results", "s3://bucket/results",
                            "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "fig2 [paper]" in r.stdout
    r = subprocess.run([sys.executable, "sweeps/fig2.py", "--", "--preset", "papr",
                        "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "papr" in r.stderr


# ====================================================================== SLURM
SBATCH = CLUSTER / "slurm.sbatch"


def test_slurm_script_is_valid_bash_and_asks_for_a_signal_before_the_wall_time():
    """The wall-time signal leaves room for the driver's clean stop: the script waits
    STOP_WAIT_S for it, which covers the trials' grace (stopping.DEFAULT_GRACE_S). The whole
    run is rehearsed in test_slurm_rehearsal.py."""
    from orchestrator.stopping import DEFAULT_GRACE_S

    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    text = SBATCH.read_text()
    opts = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", text, re.M))
    lead = int(re.fullmatch(r"B:USR1@(\d+)", opts["signal"]).group(1))
    wait = int(re.search(r"STOP_WAIT_S=\$\{SYMSWEEP_STOP_WAIT_S:-(\d+)\}", text).group(1))
    assert DEFAULT_GRACE_S < wait < lead
    assert "requeue" in opts and "exclusive" in opts  # symmetric-run's `ray stop` at the end
    assert "export RAY_AUTH_MODE=token" in text and "secrets.token_hex" in text
    assert "trap 'on_signal USR1' USR1" in text and "trap 'on_signal TERM' TERM" in text
    # the traps come before the first command that can take time (the head lookup's srun)
    assert text.index("trap 'on_signal USR1' USR1") < text.index("srun --nodes=1")


def test_ray_accepts_the_slurm_scripts_symmetric_run_arguments():
    """The `ray symmetric-run` options of the script, as Ray's own parser reads them (it
    refuses --head, --port, --node-ip-address and --block, and needs `--`)."""
    from ray.scripts.symmetric_run import curate_and_validate_ray_start_args

    text = SBATCH.read_text().replace("\\\n", " ")
    line = re.search(r'ray symmetric-run (.*?) -- "\$\{@:3\}"', text).group(1)
    # as the bash on a node expands it: each node's own CPUs and GPUs
    for var, flag, n in (("SLURM_CPUS_ON_NODE", "--num-cpus", "32"),
                         ("SLURM_GPUS_ON_NODE", "--num-gpus", "8")):
        line = line.replace(f'${{{var}:+{flag} "${var}"}}', f"{flag} {n}")
    line = line.replace('"$0"', "10.0.0.1:6379").replace('"$1"', "2").replace('"$2"', "/tmp/r")
    args = line.replace('"', "").replace("${SYMSWEEP_RAY_START_ARGS:-}", "").split()
    start_args = curate_and_validate_ray_start_args(args)
    assert "--address" not in start_args and "--min-nodes" not in start_args
    assert {"--num-cpus", "--num-gpus", "--temp-dir"} <= set(start_args)
    # the node command gets the address, node count and temp dir, then `symsweep run ...`,
    # which the head runs inside the wrapper recording the driver's exit code for the job
    assert re.search(r'bash -c "\$node_cmd" "\$address" "\$nodes" "\$ray_tmp" +bash -c '
                     r'"\$driver_cmd" symsweep-driver +symsweep run', text)


@pytest.mark.parametrize("name", ["gpu.yaml", "gcp-gpu.yaml"])
def test_every_paper_bundle_can_start_a_node_by_rays_own_bin_packing(name, monkeypatch):
    """Every resource shape a paper sweep asks Ray for (each trial's placement-group bundle,
    memory as the driver requests it, and each GPU tile task), fed to the autoscaler's own
    bin-packing (`get_bin_pack_residual`), fits a node type the config can launch: before,
    2 of 11 shapes did on GCP (no `memory` on the node type, which the autoscaler counts as 0)
    and 6 on AWS (no 8-GPU type for the ImageNet trials). The driver caps memory requests at
    the largest node type (the launcher's config on the head), not at the head alive at
    start."""
    from ray.autoscaler._private.resource_demand_scheduler import get_bin_pack_residual

    from orchestrator import resources
    from orchestrator.spec import load_sweep

    cfg = _prepared(name)
    types = {k: t["resources"] for k, t in cfg["available_node_types"].items()
             if k != cfg["head_node_type"]}
    boot = Path(os.environ.get("TMPDIR", "/tmp")) / f"bootstrap-{os.getpid()}-{name}"
    boot.write_text(yaml.safe_dump(cfg))
    try:
        monkeypatch.setattr(resources, "BOOTSTRAP_CONFIG", str(boot))
        node_memory = max(resources.node_type_memory(str(boot)))
    finally:
        boot.unlink()
    assert node_memory == max(t["memory"] for t in types.values())
    shapes = set()
    for path in sorted((ROOT / "sweeps").glob("fig*.py")):
        sw = load_sweep(str(path))
        if "paper" not in sw.presets:
            continue
        for d in resources.memory_requests(sw.expand("paper"), node_memory):
            for b in [*resources.trial_bundles(d), resources.tile_task(d)]:
                if b is not None:
                    shapes.add(tuple(sorted(b.items())))
    assert len(shapes) >= 5
    stuck = [dict(s) for s in shapes
             if all(get_bin_pack_residual([dict(r)], [dict(s)])[0] for r in types.values())]
    assert not stuck, f"{len(stuck)} of {len(shapes)} shapes start no node: {stuck}"


def test_aws_workers_get_a_bucket_only_role_that_the_head_may_pass():
    """The GPU node types launch with the instance profile `symsweep-worker`; its policy reads
    and writes the results bucket of the config and nothing else; the head's extra policy is
    iam:PassRole on exactly that role, to EC2 (ray-project/ray issue 3190: Ray's head role
    lacks it, so the first worker launch failed with UnauthorizedOperation)."""
    import json

    cfg = _load("gpu.yaml")
    workers = [t for k, t in cfg["available_node_types"].items() if k != cfg["head_node_type"]]
    assert {w["node_config"]["IamInstanceProfile"]["Name"] for w in workers} == \
        {"symsweep-worker"}
    bucket = re.search(r"SYMSWEEP_RESULTS=s3://([^/']+)", " ".join(cfg["setup_commands"]))[1]
    aws = ROOT / "cluster" / "aws"
    worker = json.loads((aws / "worker-role-policy.json").read_text())["Statement"]
    assert {r for st in worker for r in [st["Resource"]]} == \
        {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    assert all(a.startswith("s3:") for st in worker for a in st["Action"])
    (pass_role,) = json.loads((aws / "head-pass-role-policy.json").read_text())["Statement"]
    assert pass_role["Action"] == "iam:PassRole"
    assert pass_role["Resource"].endswith(":role/symsweep-worker")
    assert pass_role["Condition"]["StringEquals"]["iam:PassedToService"] == "ec2.amazonaws.com"
    trust = json.loads((aws / "ec2-trust.json").read_text())["Statement"][0]
    assert trust["Principal"] == {"Service": "ec2.amazonaws.com"}
    readme = (ROOT / "cluster" / "README.md").read_text()
    for f in ("ec2-trust.json", "worker-role-policy.json", "head-pass-role-policy.json"):
        assert f"file://cluster/aws/{f}" in readme


@pytest.mark.parametrize("name", ["gpu.yaml", "gcp-gpu.yaml"])
def test_gpu_workers_request_the_nvidia_runtime_explicitly(name):
    """Ray's automatic runtime detection adds --runtime=nvidia only when nvidia-smi works at
    container start and otherwise starts a GPU-less container (a warning; jax then runs on the
    CPU); the configs turn it off and ask for the GPUs on the workers, never on the head."""
    d = _prepared(name)["docker"]
    assert d.get("disable_automatic_runtime_detection") is True
    assert "--gpus all" in d.get("worker_run_options", [])
    assert not any("gpus" in o for o in d.get("head_run_options", []) + d.get("run_options", []))
