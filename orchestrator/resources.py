"""What a trial asks Ray for, and whether Ray can ever give it.

A trial's placement-group bundles (`trial_bundles`, `trial_resources`: CPU, GPU, ``memory``),
what each of its GPU kernel tiles asks for outside that group (`tile_task`), the memory each
trial requests (`memory_requests`: the preset's value or the estimate, capped at the largest
node this Ray can have, `node_memory`), and the check that every such request fits some node
before Tune waits on it for ever (`unschedulable`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from orchestrator.spec import Trial

log = logging.getLogger("symsweep")


def trial_bundles(trial: Mapping[str, Any]) -> list[dict[str, float]]:
    """The resource bundles of one trial (a Trial dict): CPU, GPU and ``memory`` (bytes, from
    `memory_requests`) in one bundle. A kernel trial with tile GPUs holds only its CPU and
    memory: its tiles are Ray tasks outside its placement group (`tile_task`)."""
    r = trial["resources"]
    if trial["kind"] == "kernel" and r.get("tile_gpu", 0) > 0:
        first = {"CPU": max(r.get("cpu", 1), 0.01)}
        if r.get("memory", 0) > 0:
            first["memory"] = r["memory"]
        return [first]
    bundle = {"CPU": r.get("cpu", 1)}
    if r.get("gpu", 0) > 0:
        bundle["GPU"] = r["gpu"]
    if r.get("memory", 0) > 0:  # bytes of host RAM (see memory_requests)
        bundle["memory"] = r["memory"]
    return [bundle]


def tile_task(trial: Mapping[str, Any]) -> dict[str, float] | None:
    """What each GPU kernel tile of a trial asks Ray for (CPU, GPU), None for CPU tiles (they
    run in the trial's own bundle)."""
    r = trial["resources"]
    if trial["kind"] == "kernel" and r.get("tile_gpu", 0) > 0:
        return {"CPU": r.get("tile_cpu", 1), "GPU": r["tile_gpu"]}
    return None


def trial_resources(config: dict) -> Any:
    """Tune's resource request of one trial (config = {"trial": Trial dict, ...}): a
    placement group of its `trial_bundles`."""
    from ray import tune

    return tune.PlacementGroupFactory(trial_bundles(config["trial"]))


def resources_text(res: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v / 1e9:.1f} GB" if k == "memory" else f"{k} {v:g}"
                     for k, v in res.items())


def unschedulable(trials: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> str | None:
    """None when each resource bundle of every trial (Trial dicts, `trial_bundles`) and each
    of its GPU tile tasks (`tile_task`) fits on some alive node of ``nodes`` (``ray.nodes()``
    entries: "Alive", "Resources"); else one line naming how many trials cannot be placed,
    the first of them, what it asks for, the most any node has, and the fixes. Such a
    trial's placement group stays pending: Tune only warns about it once a minute and waits
    for an autoscaler (ray-project/ray issue 24259; docs/faults.md), so without one the sweep
    would hang."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]

    def fits(bundle: Mapping[str, float]) -> bool:
        return any(all(res.get(k, 0.0) >= v * (1 - 1e-9) for k, v in bundle.items())
                   for res in alive)

    bad = [(t, b) for t in trials for b in [*trial_bundles(t), tile_task(t)]
           if b is not None and not fits(b)]
    if not bad:
        return None
    n = len({t["trial_id"] for t, _ in bad})
    t, bundle = bad[0]
    most = {k: max((res.get(k, 0.0) for res in alive), default=0.0)
            for k in ("CPU", "GPU", "memory")}
    return (f"{n} trial(s) ask Ray for more than any node of this Ray has, so Ray Tune would "
            f"wait on them for ever: trial {t['trial_id']} ({t['kind']} "
            f"{t.get('config', {}).get('arch')}) asks Ray for {resources_text(bundle)}, "
            f"the nodes have at most {resources_text(most)}; lower the preset's resources, "
            f"give Ray more CPUs (--num-cpus) or run on a cluster with such nodes (--address)")


BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # the cluster launcher's, on the head


def may_autoscale() -> bool:
    """True on a Ray cluster started by the cluster launcher, whose autoscaler may still add
    the nodes a pending trial needs: the test Ray Tune itself makes
    (ray.tune.execution.cluster_info: the launcher's bootstrap config exists)."""
    return os.path.exists(os.path.expanduser(BOOTSTRAP_CONFIG))


def node_type_memory(config_path: str) -> list[float]:
    """The ``memory`` (bytes) each node type of a cluster-launcher config declares (its
    ``available_node_types``); [] when it declares none or cannot be read."""
    import yaml

    try:
        with open(os.path.expanduser(config_path)) as f:
            cfg = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as ex:
        log.warning("could not read the cluster config %s (%s); memory requests are capped at "
                    "the nodes alive now", config_path, ex)
        return []
    types = cfg.get("available_node_types") or {}
    return [float((t.get("resources") or {}).get("memory", 0)) for t in types.values()
            if isinstance(t, dict) and float((t.get("resources") or {}).get("memory", 0)) > 0]


def node_memory() -> float | None:
    """Largest ``memory`` resource (bytes) of a node this Ray can have, None when none says.
    On a cluster the launcher started, of the node types it may launch (at driver start only
    the head is up: capping at it would pack kernel cells that need 41 GB several to a node);
    elsewhere of the alive nodes."""
    import ray

    sizes = node_type_memory(BOOTSTRAP_CONFIG) if may_autoscale() else []
    sizes += [float(n.get("Resources", {}).get("memory", 0)) for n in ray.nodes()
              if n.get("Alive")]
    return max(sizes) if sizes and max(sizes) > 0 else None


def memory_requests(trials: list[Trial], node_memory: float | None) -> list[dict[str, Any]]:
    """Trial dicts whose resources carry ``memory`` (bytes): the preset's value if it sets
    one, else the estimated peak (`orchestrator.plan.trial_memory`). A request above the
    largest node (node_memory) would never be scheduled, so it is capped to that node's
    memory with a warning naming the trial (it then runs alone there and may still run out)."""
    from orchestrator.plan import trial_memory

    out = []
    for t in trials:
        d = t.to_dict()
        need = float(t.resources.get("memory") or trial_memory(t))
        if node_memory is not None and need > node_memory:
            log.warning("trial %s (%s %s) needs about %.1f GB of memory by estimate, more than "
                        "the largest Ray node's %.1f GB; requesting %.1f GB, so it runs alone "
                        "and may run out of memory (use a larger node or fewer images)",
                        t.trial_id, t.kind, t.config.get("arch"), need / 1e9,
                        node_memory / 1e9, node_memory / 1e9)
            need = node_memory
        d["resources"]["memory"] = need
        out.append(d)
    return out
