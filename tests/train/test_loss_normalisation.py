"""Token-exact loss normalisation: a step's gradient does not depend on how its samples are split.

2 gloo ranks x 4 accumulation micro-batches of 1 give the same gradients (1e-6 relative) as 1 rank with
the same 8 samples (or packs) in one micro-batch, with a 2-supervised-token sample (the fewest a template
supervises: one answer token and <|im_end|>) and a 1,000-token one in the same step; padded and packed.
Gradients are read at the accumulation boundary through the trainer's own micro_step (grad_probe.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from train_helpers import TINY_LM, tiny_config, write_config
from train_helpers import free_port

from parsit_train.data import ResumableBatchSampler
from parsit_train.data.dataset import ShardDataset

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
PACK = 1100
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def build(tmp_path_factory, tok_path) -> Path:
    from parsit_data.build import build as run_build
    from parsit_data.config import BuildConfig

    root = tmp_path_factory.mktemp("norm")
    (root / "img").mkdir()
    recs = []
    for i in range(8):
        Image.new("RGB", (30 + i, 28), ((i * 40) % 256, 90, 200)).save(root / "img" / f"{i}.png")
        recs.append({"id": f"img-{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\nWhat is picture {i}?"},
            {"from": "gpt", "value": " ".join(["colour"] * (1 + i * 3))}]})
    recs.append({"id": "long", "conversations": [{"from": "human", "value": "Count."},
                                                 {"from": "gpt", "value": " ".join(str(k % 10) for k in range(500))}]})
    recs.append({"id": "short", "conversations": [{"from": "human", "value": "Yes or no?"},
                                                  {"from": "gpt", "value": "Yes"}]})
    src = root / "r.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = root / "build"
    run_build(BuildConfig(inputs=[str(src)], out=str(out), tokenizer=str(tok_path), image_root=str(root / "img"),
                          image_size=28, patch_size=14, shard_rows=4))
    return out


def _config(build: Path, out: Path, world: int, packed: bool, seed: int) -> dict:
    micro, gas = (1, 4) if world == 2 else (8, 1)
    data = {"builds": [str(build)], **({"pack_length": PACK, "max_images_per_pack": 1} if packed else {})}
    cfg = tiny_config(build, out, seed=seed, data=data,
                      optim={"micro_batch_size": micro, "gradient_accumulation_steps": gas, "max_steps": 1,
                             "max_grad_norm": 0.0},
                      deepspeed={"zero_stage": 2, "bf16": False})
    cfg["model"]["language_model"]["config"] = {**TINY_LM, "max_position_embeddings": 2048}
    return cfg


def _seed_with_extremes_in_step_one(build: Path, tok_path) -> tuple[int, dict[str, int]]:
    """A seed whose first step (8 samples; and 8 packs) holds both the 2-token and the 1,000-token sample."""
    ds = ShardDataset([build], tok_path)
    ids = [ds[i]["sample_id"] for i in range(len(ds))]
    sup = ds.supervised_tokens()
    want = {ids.index("long"), ids.index("short")}
    for seed in range(200):
        plain = ResumableBatchSampler([len(ds)], 1, world_size=2, seed=seed, supervised=sup)
        packed = ResumableBatchSampler([len(ds)], 1, world_size=2, seed=seed, supervised=sup, pack_length=PACK,
                                       max_images_per_pack=1, lengths=ds.lengths(), image_counts=ds.image_counts())
        if want <= set(plain.step_totals(0, 0, 4)[2]) and want <= set(packed.step_totals(0, 0, 4)[2]):
            return seed, {ids[i]: int(sup[i]) for i in want}
    raise AssertionError("no seed puts both extremes in the first step")


def _probe(configs: list[Path], world: int, out: Path) -> dict:
    from parsit_train.launch import worker_env

    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={world}", f"--master-port={free_port()}",
           str(HERE / "grad_probe.py"), *map(str, configs), str(out)]
    proc = subprocess.run(cmd, env=worker_env(), capture_output=True, text=True, timeout=200)
    lines = [x for x in proc.stderr.splitlines() if "Error" in x or "error" in x or "File" in x]
    assert proc.returncode == 0, "\n".join(lines)[-6000:]
    return torch.load(out, weights_only=False)


def test_two_ranks_four_micro_batches_equal_one_rank_one_micro_batch(build, tok_path, tmp_path):
    seed, extremes = _seed_with_extremes_in_step_one(build, tok_path)
    assert extremes["short"] == 2 and extremes["long"] >= 1000
    results = {}
    for world in (1, 2):
        paths = [write_config(tmp_path / f"{'packed' if packed else 'padded'}.yaml",
                              _config(build, tmp_path / f"out{world}{packed}", world, packed, seed))
                 for packed in (False, True)]
        results[world] = _probe(paths, world, tmp_path / f"grads{world}.pt")
    for name in ("padded", "packed"):
        one, two = results[1][name], results[2][name]
        assert sorted(one["samples"]) == sorted(two["samples"]), (name, one["samples"], two["samples"])
        assert {"long", "short"} <= set(one["samples"])
        assert one["denominator"] == two["denominator"] >= 1000
        assert one["grads"].keys() == two["grads"].keys()
        g1 = torch.cat([g.double().flatten() for g in one["grads"].values()])
        g2 = torch.cat([two["grads"][n].double().flatten() for n in one["grads"]])
        total = float(g1.norm())
        assert total > 0 and float((g2 - g1).norm()) <= 1e-6 * total, (name, float((g2 - g1).norm()) / total)
        # every tensor too, relative to itself; a tensor whose true gradient is zero (the attention's key
        # bias: softmax ignores a constant added to every score) holds only rounding noise, so the floor
        # is a millionth of the whole gradient's norm
        for n, a in one["grads"].items():
            diff = float((two["grads"][n] - a).double().norm())
            assert diff <= 1e-6 * float(a.double().norm()) + 1e-6 * total, (name, n, diff, float(a.norm()))
