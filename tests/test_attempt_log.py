"""orchestrator/attempt_log.py: each attempt's log kept under the results root, bounded, and
shown by `symsweep show` (issue 24, item 6)."""

from __future__ import annotations

import logging

import pytest

from orchestrator.attempt_log import AttemptLog, BoundedText
from orchestrator.cli import main
from orchestrator.context import RunContext
from orchestrator.layout import ResultsLayout
from orchestrator.spec import Trial
from orchestrator.store import Store
from orchestrator.trial import execute_trial


def test_bounded_text_keeps_its_head_and_tail_and_says_what_it_cut():
    b = BoundedText(head=10, tail=20)
    whole = "".join(f"{i:03d}\n" for i in range(100))  # 400 characters, written line by line
    for line in whole.splitlines(keepends=True):
        b.write(line)
    text = b.text()
    head, mid, tail = text[:10], text[10:-20], text[-20:]
    assert head == whole[:10] and tail == whole[-20:]
    assert b.cut == 400 - 10 - 20 and f"[... {b.cut} characters" in mid
    small = BoundedText(head=10, tail=20)
    small.write("abc")
    assert small.text() == "abc" and small.cut == 0


def test_the_log_captures_logging_and_prints_and_restores_the_streams(capsys):
    import sys

    out, err = sys.stdout, sys.stderr
    with AttemptLog() as alog:
        logging.getLogger("workers.something").warning("a worker's warning")
        logging.getLogger("symsweep").info("symsweep's note")
        print("a print")
        print("to stderr", file=sys.stderr)
    assert sys.stdout is out and sys.stderr is err
    logging.getLogger("workers.something").warning("after: not kept")
    text = alog.buf.text()
    for said in ("WARNING workers.something: a worker's warning",
                 "INFO symsweep: symsweep's note", "a print", "to stderr"):
        assert said in text
    assert "not kept" not in text
    assert "a print" in capsys.readouterr().out  # still printed where it always was


def _chatty(cfg, report):
    logging.getLogger("workers.train").warning("eta0 estimate unstable, halving it")
    print("step 1 done")
    report({"step": 1, "train_acc": 0.5})
    if cfg.get("crash"):
        raise RuntimeError("the node went away")
    return {"status": "completed", "best_test_acc": 0.4, "train_acc": 1.0}


def test_every_attempt_keeps_its_log_and_show_prints_the_latest(tmp_path, capsys):
    root = str(tmp_path)
    ctx = RunContext(sweep="s", preset="smoke", results=root, code_version="x")
    cfg = {"arch": "fcn", "inference": "nn", "transform": "identity", "seed": 0}
    tid = "abcd0123ef456789"
    st = Store(root, "s")
    st.write_manifest({"sweep": "s", "preset": "smoke", "trials": [
        {"trial_id": tid, "kind": "train", "config": cfg, "resources": {"cpu": 1},
         "derived_from": None}]})
    with pytest.raises(RuntimeError, match="went away"):
        execute_trial(Trial(tid, "train", {**cfg, "crash": True}, {"cpu": 1}), ctx, _chatty)
    execute_trial(Trial(tid, "train", cfg, {"cpu": 1}), ctx, _chatty)
    lay = ResultsLayout(root, "s")
    first = (tmp_path / "s" / "logs" / f"{tid}-a1.log").read_text()
    assert first == open(lay.log(tid, 1)).read()
    assert "eta0 estimate unstable" in first and "step 1 done" in first
    assert "eta0 estimate unstable" in open(lay.log(tid, 2)).read()
    rows = st.read_trials_all()[0].to_pandas().sort_values("attempt")
    assert list(rows["status"]) == ["failed", "completed"]
    assert main(["show", tid, "--results", root]) == 0
    shown = capsys.readouterr().out
    assert f"     log: {lay.log(tid, 1)}" in shown and f"     log: {lay.log(tid, 2)}" in shown
    tail = shown.split("log of the latest attempt", 1)[1]
    assert "  step 1 done" in tail and "eta0 estimate unstable" in tail
