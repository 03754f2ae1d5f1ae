"""The `symsweep` command.

Sub-commands live in small modules and are registered here; `main` turns every
`workers.errors.UserError` into one line on stderr and its exit code (2), so bad input never
ends in a traceback.
"""

from __future__ import annotations

import sys

import typer

from orchestrator.data_cli import app as data_app
from orchestrator.plan import plan as plan_cmd
from workers.errors import ConfigError, UserError

app = typer.Typer(
    name="symsweep",
    help="Sweeps for 'Synergy and Symmetry in Deep Learning' on Ray: run, watch, resume, query.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
app.command("plan")(plan_cmd)

RESULTS_HELP = "Results root: a directory or a pyarrow URI (s3://, gs://)."
_ONLY_OPT = typer.Option(None, help="Restrict to FIELD=V1,V2 (repeatable), e.g. --only "
                         "inference=ntk")
_SWEEPS_OPT = typer.Option(None, help="Only these sweeps (default: all)")


def _parse_only(only: list[str] | None) -> dict[str, list[str]] | None:
    """``["arch=vec,gap", "inference=ntk"]`` -> {"arch": ["vec", "gap"], "inference": ["ntk"]}."""
    if not only:
        return None
    out: dict[str, list[str]] = {}
    for item in only:
        if "=" not in item:
            raise ConfigError(f"--only {item!r}: expected FIELD=VALUE[,VALUE...], e.g. "
                              "inference=ntk")
        k, v = item.split("=", 1)
        out.setdefault(k.strip(), []).extend(x.strip() for x in v.split(",") if x.strip())
    return out


def _print_summary(summary, console) -> None:
    console.print(
        f"[bold]{summary.total}[/] trials: {summary.skipped} already finished, "
        f"{summary.launched} launched ({summary.completed} completed, {summary.diverged} "
        f"diverged, {summary.failed} failed, {summary.retries} retries), "
        f"{summary.derived_written} derived rows written; kernel cells {summary.kernel_cells}, "
        f"computed {summary.kernel_computations}; wall {summary.wall_s:.1f} s")
    for n in summary.notes:
        console.print(f"note: {n}")


def _run(sweep, preset: str, results: str, address: str | None, mlflow_uri: str | None,
         dedupe: bool, max_failures: int | None, data_dir: str | None, cache_dir: str | None,
         only: dict | None, num_cpus: int | None, progress: bool, report: bool = True) -> int:
    from rich.console import Console

    from orchestrator.runner import run_sweep

    console = Console(stderr=True)
    summary = run_sweep(sweep, preset, results=results, address=address, mlflow_uri=mlflow_uri,
                        dedupe=dedupe, max_failures=max_failures, data_dir=data_dir,
                        cache_dir=cache_dir, only=only, num_cpus=num_cpus,
                        progress=progress and console.is_terminal, console=console)
    _print_summary(summary, console)
    # Tune stops on Ctrl-C (or SIGTERM) and returns normally: trials it had not finished
    # have no row, so say so and fail, rather than print a partial table as if it were all
    unfinished = summary.launched - summary.completed - summary.diverged - summary.failed
    if unfinished > 0:
        console.print(f"{unfinished} of {summary.launched} launched trials did not finish "
                      f"(interrupted?); `symsweep resume {sweep.name} --results {results}` "
                      "runs only those")
    if report:
        try:
            table(sweep.name, results, "best_test_acc", "text")
            plot(sweep.name, results, None, "best_test_acc")
        except ConfigError as ex:  # e.g. nothing finished
            console.print(f"no table: {ex}")
    return 0 if summary.failed == 0 and unfinished <= 0 else 1


@app.command()
def run(
    sweep_file: str = typer.Argument(..., help="Sweep file, e.g. sweeps/fig2.py"),
    preset: str = typer.Option("smoke", help="smoke | cpu | paper"),
    results: str = typer.Option("results", envvar="SYMSWEEP_RESULTS", help=RESULTS_HELP),
    address: str = typer.Option(None, envvar="RAY_ADDRESS",
                                help="Ray address ('auto' on a cluster); default: "
                                "start Ray on this machine"),
    mlflow_uri: str = typer.Option(None, envvar="MLFLOW_TRACKING_URI",
                                   help="MLflow tracking URI (default "
                                   "sqlite:///<results>/mlflow.db)"),
    no_dedupe: bool = typer.Option(False, "--no-dedupe", help="Compute every kernel cell, "
                                   "even those Theorem 4.1 makes equal"),
    max_failures: int = typer.Option(None, help="Retries per trial (default: the preset's)"),
    data_dir: str = typer.Option(None, help="CIFAR-10 directory (cpu / paper presets)"),
    cache_dir: str = typer.Option(None, help="Dataset cache directory"),
    only: list[str] = _ONLY_OPT,
    num_cpus: int = typer.Option(None, help="CPUs for embedded Ray (default: all)"),
    progress: bool = typer.Option(True, help="Live progress view"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and list, run nothing"),
    report: bool = typer.Option(True, help="Print the table and write the plot at the end"),
) -> None:
    """Run a sweep (or the unfinished part of it) as Ray Tune trials."""
    from orchestrator.spec import count_kernel_computations, load_sweep

    sweep = load_sweep(sweep_file)
    sweep.preset(preset)
    if dry_run:
        trials = sweep.expand(preset, dedupe=not no_dedupe)
        cells, comps = count_kernel_computations(trials)
        kinds = {k: sum(t.kind == k for t in trials) for k in ("kernel", "train")}
        print(f"{sweep.name} [{preset}]: {len(trials)} trials ({kinds['kernel']} kernel cells, "
              f"{kinds['train']} finite runs); kernel computations {comps} of {cells}")
        raise typer.Exit(0)
    code = _run(sweep, preset, results, address, mlflow_uri, not no_dedupe, max_failures,
                data_dir, cache_dir, _parse_only(only), num_cpus, progress, report)
    raise typer.Exit(code)


@app.command()
def resume(
    sweep: str = typer.Argument(..., help="Sweep name, e.g. fig2"),
    results: str = typer.Option("results", envvar="SYMSWEEP_RESULTS", help=RESULTS_HELP),
    address: str = typer.Option(None, envvar="RAY_ADDRESS",
                                help="Ray address ('auto' on a cluster)"),
    mlflow_uri: str = typer.Option(None, envvar="MLFLOW_TRACKING_URI",
                                   help="MLflow tracking URI"),
    max_failures: int = typer.Option(None, help="Retries per trial"),
    num_cpus: int = typer.Option(None, help="CPUs for embedded Ray"),
    progress: bool = typer.Option(True, help="Live progress view"),
    report: bool = typer.Option(True, help="Print the table and write the plot at the end"),
) -> None:
    """Re-run only the trials of the last `run` of SWEEP that have no finished attempt."""
    from orchestrator.spec import load_sweep
    from orchestrator.store import Store

    m = Store(results, sweep).read_manifest()
    if m is None:
        raise ConfigError(f"no sweep '{sweep}' under {results}; start it with `symsweep run "
                          f"sweeps/{sweep}.py`")
    sw = load_sweep(m["source"])
    code = _run(sw, m["preset"], results, address, mlflow_uri, bool(m.get("dedupe", True)),
                max_failures, m.get("data_dir"), m.get("cache_dir"), m.get("only"), num_cpus,
                progress, report)
    raise typer.Exit(code)


def _manifest_or_fail(results: str, sweep: str) -> dict:
    from orchestrator.store import Store

    m = Store(results, sweep).read_manifest()
    if m is None:
        raise ConfigError(f"no sweep '{sweep}' under {results}; run it first or pass --results")
    return m


@app.command()
def status(
    sweep: str = typer.Argument(..., help="Sweep name, e.g. fig2"),
    results: str = typer.Option("results", envvar="SYMSWEEP_RESULTS", help=RESULTS_HELP),
) -> None:
    """Done / failed / missing trials of SWEEP, corrupt part files, the live driver."""
    from rich.console import Console
    from rich.table import Table

    from orchestrator.store import Store, _lock_is_live

    m = _manifest_or_fail(results, sweep)
    store = Store(results, sweep)
    df, corrupt = store.latest()
    by_id = {r["trial_id"]: r for r in df.to_dict("records")}
    counts = {"completed": 0, "diverged": 0, "failed": 0, "missing": 0}
    per_kind: dict[str, dict[str, int]] = {}
    derived = 0
    for t in m["trials"]:
        st = by_id.get(t["trial_id"], {}).get("status", "missing")
        counts[st] = counts.get(st, 0) + 1
        per_kind.setdefault(t["kind"], {}).setdefault(st, 0)
        per_kind[t["kind"]][st] += 1
        derived += bool(t.get("derived_from"))
    con = Console()
    tab = Table(title=f"{sweep} [{m['preset']}] under {results}")
    for c in ("kind", *counts, "total"):
        tab.add_column(c, justify="right")
    for kind, c in sorted(per_kind.items()):
        tab.add_row(kind, *(str(c.get(k, 0)) for k in counts), str(sum(c.values())))
    tab.add_row("all", *(str(v) for v in counts.values()), str(len(m["trials"])))
    con.print(tab)
    con.print(f"{derived} trials are copies of an equal kernel cell (derived_from)")
    extra = set(by_id) - {t["trial_id"] for t in m["trials"]}
    if extra:
        con.print(f"{len(extra)} trials in the store are not in the last expansion")
    lock = store.read_lock()
    if lock:
        live = _lock_is_live(lock, 600.0)
        con.print(f"driver lock: pid {lock.get('pid')} on {lock.get('host')}, started "
                  f"{lock.get('started_at')} ({'LIVE' if live else 'stale: dead driver'})")
    failed = df[df["status"] == "failed"]
    for r in failed.head(10).itertuples():
        con.print(f"failed {r.trial_id} ({r.inference} {r.arch} {r.transform} s{r.seed}) "
                  f"attempt {r.attempt}: {r.error}")
    if corrupt:
        print(f"{len(corrupt)} CORRUPT part file(s), not read (delete them and run "
              f"`symsweep resume {sweep}` to recompute):")
        for name, err in corrupt:
            print(f"  {store.trials_dir}/{name}: {err}")
        raise typer.Exit(1)


@app.command()
def query(
    sql: str = typer.Argument(..., help="SQL over views trials (latest attempt per trial), "
                              "trials_all, history"),
    results: str = typer.Option("results", envvar="SYMSWEEP_RESULTS", help=RESULTS_HELP),
    sweep: list[str] = _SWEEPS_OPT,
    fmt: str = typer.Option("table", "--format", help="table | csv | json"),
) -> None:
    """Run SQL with DuckDB over the results."""
    import duckdb

    from orchestrator.store import connect

    con, corrupt = connect(results, sweep or None)
    for name, err in corrupt:
        print(f"symsweep: warning: corrupt part file {name} skipped ({err})", file=sys.stderr)
    try:
        df = con.execute(sql).df()
    except duckdb.Error as ex:
        raise ConfigError(f"query failed: {str(ex).splitlines()[0]}") from ex
    if fmt == "csv":
        print(df.to_csv(index=False), end="")
    elif fmt == "json":
        print(df.to_json(orient="records", date_format="iso"))
    elif fmt == "table":
        import pandas as pd

        with pd.option_context("display.max_rows", 500, "display.max_columns", 50,
                               "display.width", 200):
            print(df.to_string(index=False))
    else:
        raise ConfigError(f"--format {fmt!r}: choose table, csv or json")


def _cells(results: str, sweep: str, metric: str):
    from orchestrator.analysis import fig2_cells, success_threshold
    from orchestrator.store import Store

    m = _manifest_or_fail(results, sweep)
    df, corrupt = Store(results, sweep).latest()
    for name, err in corrupt:
        print(f"symsweep: warning: corrupt part file {name} skipped ({err})", file=sys.stderr)
    if df.empty:
        raise ConfigError(f"sweep '{sweep}' has no finished trials under {results} yet")
    return fig2_cells(df, success_threshold(m), metric), m


_FIT_FIRST_OPT = typer.Option(None, help="Learning curves (fig4, figS6): points in the first "
                              "power-law segment (default: the sweep file's)")
_FIT_LAST_OPT = typer.Option(None, help="Learning curves: points in the last segment")


def _fit_opts(first: object, last: object) -> dict:
    """Segment lengths given on the command line (ints; anything else, e.g. when a command is
    called as a function with its defaults, means 'the sweep file's default')."""
    return {k: v for k, v in (("first", first), ("last", last)) if isinstance(v, int)}


@app.command()
def table(
    sweep: str = typer.Argument("fig2", help="Sweep name"),
    results: str = typer.Option("results", envvar="SYMSWEEP_RESULTS", help=RESULTS_HELP),
    metric: str = typer.Option("best_test_acc", help="Column to aggregate"),
    fmt: str = typer.Option("text", "--format", help="text | csv"),
    fit_first: int = _FIT_FIRST_OPT,
    fit_last: int = _FIT_LAST_OPT,
) -> None:
    """Fig. 2 table: mean ± std of the metric over successful seeds (in %), with counts.
    Other figures (fig3, fig4, figS1, figS5, figS6) print their own tables (figures.py)."""
    from orchestrator.analysis import fig2_layout
    from orchestrator.figures import FIGURES, figure_table

    if sweep in FIGURES:
        print(figure_table(sweep, results, fmt=fmt, **_fit_opts(fit_first, fit_last)), end="")
        return
    cells, m = _cells(results, sweep, metric)
    if fmt == "csv":
        print(cells.to_csv(index=False), end="")
        return
    lay = fig2_layout(cells)
    print(f"{sweep} [{m['preset']}]: {metric} in %, mean ± std over successful runs "
          f"(successful/finished; success = completed, finite nets with train acc >= "
          f"{m.get('success_train_acc')})")
    import pandas as pd

    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(lay.to_string())


@app.command()
def plot(
    sweep: str = typer.Argument("fig2", help="Sweep name"),
    results: str = typer.Option("results", envvar="SYMSWEEP_RESULTS", help=RESULTS_HELP),
    out: str = typer.Option(None, help="PNG path (default <results>/<sweep>/<sweep>.png)"),
    metric: str = typer.Option("best_test_acc", help="Column to plot"),
    fit_first: int = _FIT_FIRST_OPT,
    fit_last: int = _FIT_LAST_OPT,
) -> None:
    """Fig. 2 figure: panels NTK, NN, NN+; bars per arch and transform. Other figures
    (fig3, fig4, figS1, figS5, figS6) draw their own plots (figures.py)."""
    from orchestrator.analysis import plot_fig2
    from orchestrator.figures import FIGURES, figure_plot

    if sweep in FIGURES:
        print(f"wrote {figure_plot(sweep, results, out, **_fit_opts(fit_first, fit_last))}")
        return
    cells, m = _cells(results, sweep, metric)
    path = out or f"{results.rstrip('/')}/{sweep}/{sweep}.png"
    p = plot_fig2(cells, path, title=f"{sweep} [{m['preset']}]: {metric}")
    print(f"wrote {p}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    try:
        rv = app(args=argv, standalone_mode=False)
    except UserError as err:
        print(f"symsweep: error: {err}", file=sys.stderr)
        return err.exit_code
    except typer.Exit as ex:
        return ex.exit_code
    except SystemExit as ex:  # click's usage errors
        return int(ex.code or 0)
    except Exception as ex:  # click.ClickException (bad flags) prints itself
        import click

        if isinstance(ex, click.ClickException):
            ex.show()
            return ex.exit_code
        if isinstance(ex, click.exceptions.Abort):
            print("Aborted.", file=sys.stderr)
            return 130
        raise
    # with standalone_mode=False click returns the code of a `typer.Exit(code)` instead of
    # raising it
    return rv if isinstance(rv, int) else 0


def console() -> None:
    """Console-script wrapper: exit with `main`'s status."""
    sys.exit(main())


if __name__ == "__main__":
    console()
