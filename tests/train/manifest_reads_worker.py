"""One rank of the manifest-read count (started twice by test_data_path.py; not a test module).

argv: training config (YAML), output JSON path. Counts every read of a ``manifest.json`` file by this rank
process (``Path.read_text`` / ``read_bytes`` / ``open``: whatever reads the file goes through one of them),
runs the real training (data, model, steps, export), and writes ``{manifest path: reads}`` and the builds
this rank hashed (``verify_shards`` calls).
"""

from __future__ import annotations

import builtins
import collections
import json
import pathlib
import sys


def main() -> None:
    config, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    reads: collections.Counter = collections.Counter()

    def counted(fn):
        def wrapper(self, *a, **kw):
            if self.name == "manifest.json":
                reads[str(self.resolve())] += 1
            return fn(self, *a, **kw)
        return wrapper

    pathlib.Path.read_text = counted(pathlib.Path.read_text)
    pathlib.Path.read_bytes = counted(pathlib.Path.read_bytes)
    real_open = builtins.open

    def open_counted(file, *a, **kw):
        if isinstance(file, (str, pathlib.Path)) and pathlib.Path(file).name == "manifest.json":
            reads[str(pathlib.Path(file).resolve())] += 1
        return real_open(file, *a, **kw)

    builtins.open = open_counted
    import parsit_train.train as train_module
    from parsit_train.config import load_config
    from parsit_train.train import train

    hashed = []
    verify = train_module.verify_shards
    train_module.verify_shards = lambda view: hashed.append(len(view.builds)) or verify(view)

    cfg = load_config(config)  # reads the YAML only
    before = dict(reads)
    result = train(cfg)
    builtins.open = real_open
    import torch

    rank = torch.distributed.get_rank()
    json.dump({"rank": rank, "steps": result.steps, "before_train": before, "reads": dict(reads), "hashed": hashed},
              real_open(out, "w"))


if __name__ == "__main__":
    main()
