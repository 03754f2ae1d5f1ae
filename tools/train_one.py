"""Train one finite network from the command line, without Ray or MLflow: a config given as
KEY=VALUE pairs (values parsed as JSON where they parse, else kept as strings), merged over
`workers.train.DEFAULTS`; prints each evaluation record and the final metrics as JSON lines.

    .venv/bin/python tools/train_one.py arch=gap width=32 inference=nn_plus dataset=cifar10 \\
        data_dir=../shared/data image_size=32 train_size=2000 val_size=500 test_size=2000 \\
        max_steps=2000 eval_every=250 eta0_samples=64 eta0_inits=1

For debugging one cell of a sweep, or for a quick look at how a config trains.
"""

from __future__ import annotations

import json
import sys
import time

from workers.errors import UserError


def parse_pairs(pairs: list[str]) -> dict:
    """["width=32", "arch=gap", "flip=true"] -> {"width": 32, "arch": "gap", "flip": True}."""
    cfg = {}
    for item in pairs:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"expected KEY=VALUE, got {item!r} (e.g. width=32)")
        try:
            cfg[key] = json.loads(raw)
        except json.JSONDecodeError:
            cfg[key] = raw
    return cfg


def main(argv: list[str] | None = None) -> int:
    from workers.train import train

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        cfg = parse_pairs(args)
        t0 = time.time()
        res = train(cfg, report=lambda m, _ckpt: print(json.dumps(m), flush=True))
    except UserError as ex:
        print(f"train_one: {ex}", file=sys.stderr)
        return ex.exit_code
    res.pop("history", None)
    res.pop("predictions", None)
    print(json.dumps({"final": res, "config": cfg, "wall_s": round(time.time() - t0, 1)},
                     default=float), flush=True)
    return 0 if res["status"] == "completed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
