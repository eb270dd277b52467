"""A ZeRO-3 run resumed with another number of ranks (1 -> 2 and 2 -> 1, real gloo ranks) continues with
each optimizer group's own hyper-parameters and each Adam state's own step count.

DeepSpeed 0.19.8's stage-3 universal loader gives every group group 0's ``lr``/``weight_decay``/``part``
and one shared ``step`` tensor to every sub-group (parsit_train.compat.repair_zero3_universal_load undoes
both). So the parts get distinct learning rates and weight decay > 0 here, and the resumed run is compared
with an uninterrupted 2-rank run on: every step's loss and per-part learning rates, and the final
checkpoint's Adam state (per-parameter exp_avg, exp_avg_sq and fp32 weights, each state's step, each
group's hyper-parameters), both sides converted to DeepSpeed's universal form to compare across world sizes.

Tolerance: the runs differ only by float32 summation order (gloo's reduction vs one rank's accumulation).
Measured on this tiny model: learning rates equal, losses equal or 2.7e-8 relative apart, Adam moments and
weights within 4.6e-7 (2 -> 1) and 1.6e-6 (1 -> 2) of the largest element of each tensor; 1e-5 relative
to each tensor's scale leaves 6x room at least. Without the repair the test fails at step 2 (one
``lr`` key left, the vision tower's 1e-3, instead of three). Not
compared: the vision attention's key biases (``k_proj.bias``): softmax is invariant to them, their exact
gradient is 0 and the float one rounding noise (exp_avg ~1e-12), which Adam turns into updates that
depend on the summation order (measured 8% of their 3e-6 size). The fault is far outside the tolerance
(step-3 loss 7e-4 relative, moments scaled by the wrong learning rates, steps counted 6 per step).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_build, tiny_config, write_config  # noqa: E402
from train_helpers import free_port, read_metrics  # noqa: E402

from parsit_train.launch import LaunchSpec, launch  # noqa: E402

pytestmark = pytest.mark.slow
STEPS, STOP, PACK = 3, 1, 96
TIMEOUT = 240
ACCUMULATION = {2: 2, 1: 4}  # the same 4 packs per optimizer step at either world size
LRS = {"projector": 3e-3, "vision_tower": 1e-3, "language_model": 2e-3}
REL = 1e-5


def _run(cfg: Path, nproc: int, stop_after: int | None = None) -> int:
    return launch(LaunchSpec(config=cfg, nproc=nproc, master_port=free_port(), timeout_s=TIMEOUT, stop_after=stop_after,
                             overrides=(f"optim.gradient_accumulation_steps={ACCUMULATION[nproc]}",)))


def _tensor(saved) -> torch.Tensor:
    return saved["param"] if isinstance(saved, dict) else saved  # ZeRO-1/2 wrap it, ZeRO-3 does not


def _adam_state(out: Path) -> tuple[dict, list, dict]:
    """The final checkpoint in universal form: ({param: {fp32, exp_avg, exp_avg_sq}}, [group hyper-parameters],
    {state index: step})."""
    from parsit_train.checkpoint import to_universal

    uni = to_universal(out / "checkpoints" / f"step-{STEPS:08d}") / "zero"
    tensors = {}
    for folder in sorted(p for p in uni.iterdir() if p.is_dir()):
        tensors[folder.name] = {k: _tensor(torch.load(folder / f"{k}.pt", weights_only=False))
                                for k in ("fp32", "exp_avg", "exp_avg_sq")}
    sd = torch.load(uni / "optimizer_state.pt", weights_only=False)["optimizer_state_dict"]
    groups = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
    steps = {i: float(s["step"]) for i, s in sd["state"].items()}
    return tensors, groups, steps


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reshard3")
    build = make_build(root / "data", n=12, n_text=6)
    cfg = tiny_config(build, root / "ref", data={"builds": [str(build)], "pack_length": PACK, "max_images_per_pack": 2},
                      optim={"micro_batch_size": 1, "gradient_accumulation_steps": 2, "max_steps": STEPS,
                             "schedule": "constant", "weight_decay": 0.1, "lr": LRS},
                      deepspeed={"zero_stage": 3, "bf16": False},
                      checkpoint={"export_hf": False, "every_steps": 1, "keep_last": STEPS})
    assert _run(write_config(root / "ref.yaml", cfg), 2) == 0
    return root, cfg, read_metrics(root / "ref"), _adam_state(root / "ref")


@pytest.mark.timeout(400)
@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)])
def test_zero3_resume_with_another_world_size_keeps_groups_and_adam_state(setup, tmp_path, before, after):
    root, cfg, ref, (ref_tensors, ref_groups, ref_steps) = setup
    out = tmp_path / "out"
    if before == 2:  # the reference run, cut back to its checkpoint at STOP (as if it had died after it)
        shutil.copytree(root / "ref", out)
        for later in range(STOP + 1, STEPS + 1):
            shutil.rmtree(out / "checkpoints" / f"step-{later:08d}")
    else:
        assert _run(write_config(tmp_path / "stop.yaml", {**cfg, "output_dir": str(out)}), before, stop_after=STOP) == 0
    assert _run(write_config(tmp_path / "resume.yaml", {**cfg, "output_dir": str(out)}), after) == 0
    assert (out / "checkpoints" / f"step-{STOP:08d}" / "universal" / "zero").is_dir()  # converted, not warm-started

    resumed = read_metrics(out)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(resumed, ref, strict=True):
        assert sorted(a["sample_ids"]) == sorted(b["sample_ids"]), a["step"]
        print(f"step {a['step']}: loss {a['loss']!r} vs {b['loss']!r}, lr {a['lr']} vs {b['lr']}")
        assert a["lr"] == b["lr"] and set(a["lr"]) == set(LRS), a["step"]  # every part, its own rate
        assert a["loss"] == pytest.approx(b["loss"], rel=REL), a["step"]

    tensors, groups, steps = _adam_state(out)
    assert groups == ref_groups  # lr, weight_decay, betas, part of each group
    assert sorted({g["weight_decay"] for g in groups}) == [0.0, 0.1]
    assert set(steps.values()) == set(ref_steps.values()) == {float(STEPS)}  # each state stepped once a step
    assert tensors.keys() == ref_tensors.keys()
    worst = 0.0
    for name, keys in tensors.items():
        if name.endswith("self_attn.k_proj.bias"):
            continue  # rounding noise only (module doc)
        for key, value in keys.items():
            value, expect = value.detach(), ref_tensors[name][key].detach()
            scale = float(expect.abs().max())
            err = float((value - expect).abs().max()) / scale if scale else float(value.abs().max())
            worst = max(worst, err)
            assert err <= REL, (name, key, err)
    print(f"worst Adam-state difference: {worst:.1e} of the tensor's scale")
