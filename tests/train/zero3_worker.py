"""One rank of the ZeRO-3 construction test (started twice by test_zero3.py; not a test module).

argv: merged folder, output JSON path. Loads the folder under ZeRO-3 and writes, for this rank, the
parameters' full element count, the elements it holds right after construction, and the report totals.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main() -> None:
    folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    from parsit_train.compat import local_numel, numel
    from parsit_train.config import ModelConfig
    from parsit_train.model import load_model, parameter_report
    from parsit_train.train import setup_distributed

    rank, world, _ = setup_distributed()
    ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "train_batch_size": world,
          "zero_optimization": {"stage": 3}, "bf16": {"enabled": True}}
    mcfg = ModelConfig(init_from=folder, vision_feature_layer=-1)
    model, keep = load_model(folder, mcfg, torch.bfloat16, ds)
    params = list(model.parameters())
    report = parameter_report(model)
    json.dump({"rank": rank, "world": world, "full": sum(numel(p) for p in params),
               "local": sum(local_numel(p) for p in params), "materialised": sum(p.numel() for p in params),
               "partitioned": all(hasattr(p, "ds_numel") for p in params),
               "dtypes": sorted({str(p.ds_tensor.dtype) for p in params}),
               "report_total": sum(r.total for r in report)}, out.open("w"))
    torch.distributed.barrier()
    del keep


if __name__ == "__main__":
    main()
