"""`symsweep show TRIAL`'s report: one trial's config, every attempt (status, start step,
metrics, error, traceback, log), its metrics history, the end of its latest log and its
checkpoints on disk, as text. Read-only; the CLI only prints it (cli.py)."""

from __future__ import annotations

import sys

SHOW_LOG_LINES = 20  # `show`: the end of the latest attempt's log
_ROW_METRICS = ("best_test_acc", "test_acc", "test_mse", "val_acc", "train_acc",
                "best_train_acc", "eta0")


def _fmt(v: object) -> str:
    import datetime as dt

    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _diag_reg_lines(mets: dict, cfg: dict, prefix: str = "") -> list[str]:
    """`show`'s lines for a kernel cell that chose diag_reg on the validation split: the
    chosen value, the fixed-regulariser test accuracy beside it, and the validation curve
    (``prefix`` ``nngp_`` / ``ntk_``: the other kernel's, from metrics_json)."""
    import json

    from workers.regression import DEFAULT_DIAG_REG

    curve = json.loads(mets.get(f"{prefix}diag_reg_curve_json") or "null")
    if not curve:
        return []
    fixed = cfg.get("diag_reg", DEFAULT_DIAG_REG)
    chosen = mets.get(f"{prefix}chosen_diag_reg")
    who = f" ({prefix.rstrip('_')})" if prefix else ""
    out = [f"     diag_reg{who} chosen on the validation split: {_fmt(chosen)} x mean "
           f"train-kernel diagonal (test_acc {_fmt(mets.get(f'{prefix}test_acc'))}); at the "
           f"fixed diag_reg {_fmt(fixed)}: test_acc "
           f"{_fmt(mets.get(f'{prefix}fixed_reg_test_acc'))}, test_mse "
           f"{_fmt(mets.get(f'{prefix}fixed_reg_test_mse'))}",
           f"       {'diag_reg':>10}  {'val_acc':>9}  {'val_mse':>9}"]
    for reg, acc, err in zip(curve["diag_reg"], curve["val_acc"], curve["val_mse"],
                             strict=True):
        def cell(v: object) -> str:
            return "not PD" if v is None else f"{v:.4g}"

        mark = "  <- chosen" if reg == chosen else ""
        out.append(f"       {reg:>10.3g}  {cell(acc):>9}  {cell(err):>9}{mark}")
    return out


def trial_report(results: str, trial_id: str, sweep: str | None = None) -> str:
    """The report of the one trial whose id starts with ``trial_id`` (`results.resolve_trial`:
    NoSuchTrial, a ConfigError, when none or several match) under ``results``."""
    import json

    import pyarrow.fs as pafs

    from orchestrator.checkpoints import TrialCheckpoints
    from orchestrator.results import resolve_trial
    from orchestrator.store import ManifestDamagedError, Store, parse_part_name

    name, tid = resolve_trial(trial_id, results, sweep)
    st = Store(results, name)
    try:
        m = st.read_manifest() or {}
    except ManifestDamagedError as ex:
        print(f"symsweep: warning: {ex}", file=sys.stderr)
        m = {}
    trial = next((t for t in m.get("trials", []) if t["trial_id"] == tid), None)
    all_rows, corrupt = st.read_trials_all()
    rows = sorted((r for r in all_rows.to_pylist() if r["trial_id"] == tid),
                  key=lambda r: r["attempt"])
    # this trial's parts that do not parse (by name: <trial_id>-a<attempt>-...)
    damaged = [(n, e) for n, e in corrupt
               if (info := parse_part_name(n)) is not None and info.trial_id == tid]
    cfg = trial["config"] if trial else json.loads(rows[-1]["config_json"] or "{}")
    kind = trial["kind"] if trial else rows[-1]["kind"]
    out = [f"trial {tid}  sweep {name} [{m.get('preset', '?')}]  {kind}: "
           f"{cfg.get('inference')} {cfg.get('arch')} {cfg.get('transform')} seed "
           f"{cfg.get('seed')}"]
    if trial is None:
        out.append("  (not in the last expansion of the sweep: a trial of an earlier run)")
    elif trial.get("derived_from"):
        out.append(f"  derived from {trial['derived_from']} (Theorem 4.1: an equal kernel cell, "
                   "not computed itself)")
    live = st.running_trials({tid: rows[-1]["attempt"] if rows else 0})
    if tid in live:
        r = live[tid]
        out.append(f"  RUNNING attempt {r.get('attempt')} since {r.get('started_at')} on "
                   f"{r.get('host')} (pid {r.get('pid')})")
    out.append("config:")
    out += [f"  {k} = {cfg[k]!r}" for k in sorted(cfg)]
    if trial:
        out.append("resources: " + ", ".join(f"{k}={_fmt(v)}" for k, v in
                                              sorted(trial["resources"].items())))
    out.append(f"attempts: {len(rows) or ('none readable' if damaged else 'none yet')}")
    out += [f"  DAMAGED part {st.trials_dir}/{n} ({e}): not read; delete it and `symsweep "
            f"resume {name}` re-runs that attempt" for n, e in damaged]
    last_log = None
    for r in rows:
        facts = [f"{label} {_fmt(r[k])}{unit}" for label, k, unit in (
            ("start_step", "start_step", ""), ("steps", "steps", ""),
            ("started", "started_at", ""), ("finished", "finished_at", ""),
            ("wall", "wall_s", " s"), ("host", "host", ""), ("code", "code_version", ""))
            if r.get(k) is not None]
        out.append(f"  #{r['attempt']} {r['status']}: {', '.join(facts)}")
        mets = {k: r[k] for k in _ROW_METRICS if r.get(k) is not None}
        extra = json.loads(r.get("metrics_json") or "{}")
        mets.update({k: v for k, v in extra.items() if k not in mets and v is not None
                     and k not in ("status", "error")})
        curves = {k: mets.pop(k) for k in list(mets) if k.endswith("diag_reg_curve_json")}
        if mets:
            out.append("     metrics: " + ", ".join(f"{k}={_fmt(v)}" for k, v in
                                                    sorted(mets.items())))
        for key in sorted(curves, key=len):  # the trial's own kernel first, then the other
            out += _diag_reg_lines({**mets, **curves}, cfg, key[:-len("diag_reg_curve_json")])
        if r.get("error"):
            out.append(f"     error: {r['error']}")
        if r.get("traceback"):
            out.append("     traceback:")
            out += [f"       {line}" for line in r["traceback"].rstrip().splitlines()]
        log_path = st.layout.log(tid, int(r["attempt"]))
        if st.fs.get_file_info(log_path).type == pafs.FileType.File:
            out.append(f"     log: {log_path}")
            last_log = log_path
    hist = st.read_history()[0]
    if hist.num_rows:
        import pyarrow.compute as pc

        h = hist.filter(pc.equal(hist["trial_id"], tid)).to_pylist()
        for a in sorted({x["attempt"] for x in h}):
            pts = [x for x in h if x["attempt"] == a]
            steps = sorted({x["step"] for x in pts})
            out.append(f"history of attempt {a}: {len(steps)} points, steps {steps[0]}.."
                       f"{steps[-1]}; {', '.join(sorted({x['metric'] for x in pts}))}")
    if last_log is not None:  # the latest attempt's own words: why it failed, what it skipped
        with st.fs.open_input_stream(last_log) as f:
            lines = f.read().decode("utf-8", errors="replace").rstrip().splitlines()
        out.append(f"log of the latest attempt ({len(lines)} lines; the last "
                   f"{min(len(lines), SHOW_LOG_LINES)}):")
        out += [f"  {line}" for line in lines[-SHOW_LOG_LINES:]]
    ck = TrialCheckpoints(st.layout, tid)
    entries = ck.entries()
    out.append(f"checkpoints on disk ({ck.dir}): {len(entries) or 'none'}")
    out += [f"  step {step}: {path}{'' if ok else ' (incomplete: no manifest, never loaded)'}"
            for step, path, ok in entries]
    return "\n".join(out)
