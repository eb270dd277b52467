"""Config, model assembly, trainable parts, parameter report and optimizer groups (one process, in-process).

The DeepSpeed tests here run a single rank in the pytest process (gloo, world size 1): enough to check
what ``deepspeed.initialize`` does with our parameter groups, a ZeRO-3 partitioned report, and the
pretrain stage end to end. Multi-rank runs are in test_train.py.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import TINY_LM, TINY_VISION, make_build, tiny_config  # noqa: E402

from parsit_data.errors import ParsitError  # noqa: E402
from parsit_train.data.batch import Batch  # noqa: E402
from parsit_train.config import SCHEMA_PATH, json_schema, load_config, parse_config  # noqa: E402
from parsit_train.model import (  # noqa: E402
    build_model,
    check_compatibility,
    load_projector,
    param_groups,
    parameter_report,
    set_trainable,
)

REPO = Path(__file__).resolve().parents[2]


def _cfg(tmp_path, **over):
    return parse_config(tiny_config(tmp_path / "build", tmp_path / "out", **over), tmp_path)


# --- config ---------------------------------------------------------------------------------------------
def test_config_reports_every_problem_at_once(tmp_path):
    data = tiny_config(tmp_path, tmp_path / "out")
    data["optim"]["lerning_rate"] = 1.0
    data["optim"]["micro_batch_size"] = 0
    data["deepspeed"]["zero_stage"] = 1
    data["stage"] = "warmup"
    with pytest.raises(ParsitError) as err:
        parse_config(data, tmp_path, source="t.yaml")
    msg = str(err.value)
    assert "4 problem(s)" in msg
    for loc in ("optim.lerning_rate", "optim.micro_batch_size", "deepspeed.zero_stage", "stage"):
        assert f"- {loc}:" in msg, msg


def test_config_cross_checks(tmp_path):
    with pytest.raises(ParsitError, match="pretrain stage trains the projector only"):
        _cfg(tmp_path, stage="pretrain", optim={"trainable": ["projector", "language_model"], "max_steps": 1})
    with pytest.raises(ParsitError, match="nothing would be trained"):
        _cfg(tmp_path, optim={"trainable": [], "max_steps": 1})
    with pytest.raises(ParsitError, match="set `epochs` or `max_steps`"):
        _cfg(tmp_path, optim={"max_steps": None})
    with pytest.raises(ParsitError, match="exactly one of `path`"):
        _cfg(tmp_path, model={"vision_tower": {}, "language_model": {"config": TINY_LM}})
    assert _cfg(tmp_path, stage="pretrain").trainable_parts() == ["projector"]
    assert _cfg(tmp_path).trainable_parts() == ["projector", "vision_tower", "language_model"]
    assert _cfg(tmp_path, stage="pretrain").export_projector()


def test_load_config_resolves_paths_and_overrides(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    data = tiny_config(Path("../data/build"), Path("runs/x"))
    path = tmp_path / "conf" / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path, ["optim.max_steps=7", "deepspeed.zero_stage=3"])
    assert cfg.data.builds[0].path == (tmp_path / "data" / "build").resolve()
    assert cfg.output_dir == (tmp_path / "conf" / "runs" / "x").resolve()
    assert cfg.optim.max_steps == 7 and cfg.deepspeed.zero_stage == 3
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path, ["output_dir=runs/y", "data.builds=[b1, {path: b2, weight: 0.5}]"])
    assert cfg.output_dir == tmp_path / "runs" / "y"  # command-line paths: relative to the working dir
    assert [(b.path, b.weight) for b in cfg.data.builds] == [(tmp_path / "b1", 1.0), (tmp_path / "b2", 0.5)]
    with pytest.raises(ParsitError, match="not KEY=VALUE"):
        load_config(path, ["optim.max_steps"])
    path.write_text("output_dir: [unclosed")
    with pytest.raises(ParsitError, match="not valid YAML"):
        load_config(path)


def test_schema_file_is_current_and_example_validates():
    assert json.loads(SCHEMA_PATH.read_text()) == json.loads(json.dumps(json_schema(), sort_keys=True))
    cfg = load_config(REPO / "examples" / "train_demo.yaml")
    assert cfg.deepspeed.zero_stage in (2, 3)


def test_cli_validate(tmp_path, capsys):
    from parsit_train.cli.main import main

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(tiny_config(tmp_path / "b", tmp_path / "o")))
    with pytest.raises(SystemExit) as ok:
        main(["validate", "--config", str(good)])
    assert ok.value.code == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: o\ndata: {builds: [b]}\nmodel: {init_from: m}\noptim: {max_steps: -1, foo: 2}\n")
    with pytest.raises(SystemExit) as err:
        main(["validate", "--config", str(bad)])
    assert err.value.code == 2
    out = capsys.readouterr().err
    assert "optim.max_steps" in out and "optim.foo" in out


# --- model ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    cfg = parse_config(tiny_config(Path("/b"), Path("/o")), Path("/"))
    torch.manual_seed(0)
    return build_model(cfg.model)


def test_model_is_transformers_llava_with_parsit_image_token(tiny_model):
    from transformers import LlavaForConditionalGeneration

    c = tiny_model.config
    assert isinstance(tiny_model, LlavaForConditionalGeneration)
    assert c.image_token_id == 151655 and c.vision_feature_select_strategy == "full"
    assert c.projector_hidden_act == "gelu" and c.image_seq_length == 4
    assert not c.vision_config.vision_use_head  # SigLIP's pooling head is unused by LLaVA: not built
    assert c.text_config.vocab_size >= 151669


def test_compatibility_checks_refuse_mismatches(tiny_model):
    check_compatibility(tiny_model, {"image_size": 28, "patch_size": 14}, 151669)
    with pytest.raises(ParsitError, match="image_size: shards 384, vision tower 28"):
        check_compatibility(tiny_model, {"image_size": 384, "patch_size": 14}, 151669)
    with pytest.raises(ParsitError, match="vocabulary"):
        check_compatibility(tiny_model, {"image_size": 28, "patch_size": 14}, 200000)


def test_pretrained_towers_load_from_folders(tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(1)
    SiglipVisionModel(SiglipVisionConfig(**TINY_VISION)).save_pretrained(tmp_path / "vit")
    Qwen3ForCausalLM(Qwen3Config(**TINY_LM)).save_pretrained(tmp_path / "lm")
    cfg = _cfg(tmp_path, model={"vision_tower": {"path": "vit"}, "language_model": {"path": "lm"}})
    model = build_model(cfg.model)
    vit = SiglipVisionModel.from_pretrained(tmp_path / "vit")
    lm = Qwen3ForCausalLM.from_pretrained(tmp_path / "lm")
    assert torch.equal(model.model.vision_tower.embeddings.patch_embedding.weight,
                       vit.embeddings.patch_embedding.weight)
    assert torch.equal(model.lm_head.weight, lm.lm_head.weight)
    assert torch.equal(model.model.language_model.embed_tokens.weight, lm.model.embed_tokens.weight)
    bad = _cfg(tmp_path, model={"vision_tower": {"path": "lm"}, "language_model": {"path": "lm"}})
    with pytest.raises(ParsitError, match="not a SigLIP/SigLIP2/CLIP vision tower"):
        build_model(bad.model)


def test_trainable_parts_and_report(tiny_model):
    set_trainable(tiny_model, ["projector", "vision_tower"])
    rows = {r.part: r for r in parameter_report(tiny_model)}
    proj = sum(p.numel() for p in tiny_model.model.multi_modal_projector.parameters())
    assert rows["projector"].trainable == rows["projector"].total == proj
    assert rows["vision_tower"].trainable == rows["vision_tower"].total > 0
    assert rows["language_model"].trainable == 0 and rows["language_model"].total > 151669 * 32
    with pytest.raises(ParsitError, match="nothing is trainable"):
        set_trainable(tiny_model, [])
    with pytest.raises(ParsitError, match="unknown trainable part"):
        set_trainable(tiny_model, ["mm_projector"])


# --- DeepSpeed, one rank in this process --------------------------------------------------------------
@pytest.fixture(scope="module")
def one_rank():
    """torch.distributed with one gloo rank in this process (DeepSpeed's CPU settings)."""
    import os

    from parsit_train.train import setup_distributed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("MASTER_PORT", str(port))
    return setup_distributed()


def _engine(model, lrs, stage):
    import deepspeed

    groups = param_groups(model, lrs, weight_decay=0.0)
    ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": stage},
          "bf16": {"enabled": False}, "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
    engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(groups), config=ds)
    return engine, opt


def _batch():
    ids = torch.tensor([[151644, 872, 198] + [151655] * 4 + [3838, 374, 419, 151645, 198, 151644, 77091, 198,
                                                             785, 6802, 374, 2518, 13, 151645]])
    labels = torch.full_like(ids, -100)
    labels[0, -6:] = ids[0, -6:]
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids),
            "pixel_values": torch.randn(1, 3, 28, 28)}


@pytest.mark.timeout(180)
def test_optimizer_groups_carry_per_part_lrs_that_are_applied(one_rank, tmp_path):
    cfg = _cfg(tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    set_trainable(model, ["projector", "vision_tower", "language_model"])
    lrs = {"projector": 1e-2, "vision_tower": 1e-3, "language_model": 0.0}
    engine, opt = _engine(model, lrs, stage=2)
    got = {g["part"]: g["lr"] for g in opt.param_groups}
    assert got == lrs
    before = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    out = engine(**_batch())
    engine.backward(out.loss)
    engine.step()
    after = dict(engine.module.named_parameters())
    changed = lambda prefix: any(  # noqa: E731
        not torch.equal(before[n], after[n]) for n in before if n.startswith(prefix))
    assert changed("model.multi_modal_projector.")
    assert changed("model.vision_tower.")
    assert not changed("model.language_model.") and not changed("lm_head")  # lr 0: the group's lr is used


@pytest.mark.timeout(180)
def test_parameter_report_is_zero3_aware(one_rank, tmp_path):
    cfg = _cfg(tmp_path)
    model = build_model(cfg.model)
    set_trainable(model, ["projector"])
    expected = parameter_report(model)
    engine, _ = _engine(model, {"projector": 1e-3, "vision_tower": 0.0, "language_model": 0.0}, stage=3)
    partitioned = [p for p in engine.module.parameters() if hasattr(p, "ds_numel")]
    assert partitioned and all(p.numel() == 0 for p in partitioned)  # really partitioned
    assert parameter_report(engine.module) == expected


@pytest.mark.timeout(300)
def test_pretrain_trains_only_the_projector_and_its_export_loads_back(one_rank, tmp_path):
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration

    from parsit_train.train import train

    build = make_build(tmp_path / "data", n=8)
    data = tiny_config(build, tmp_path / "out", stage="pretrain",
                       optim={"lr": {"projector": 1e-2}, "micro_batch_size": 2, "max_steps": 3,
                              "gradient_accumulation_steps": 2},
                       logging={"tensorboard": True, "sample_ids": True},
                       checkpoint={"export_hf": True})
    cfg = parse_config(data, tmp_path)
    result = train(cfg)
    assert result.steps == 3 and len(result.losses) == 3
    recs = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [len(r["sample_ids"]) for r in recs] == [4, 4, 4]  # 2 micro-batches of 2 per optimizer step
    assert len(set(recs[0]["sample_ids"] + recs[1]["sample_ids"])) == 8  # one epoch of 8 rows, no repeats
    assert list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))
    torch.manual_seed(cfg.seed)
    initial = build_model(cfg.model)  # the same seed: the weights the run started from
    trained = LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "out" / "hf"), dtype=torch.float32)
    init_sd, trained_sd = initial.state_dict(), trained.state_dict()
    for name, value in trained_sd.items():
        same = torch.equal(value, init_sd[name])
        assert same != name.startswith("model.multi_modal_projector."), name
    # The projector-only export loads into a fresh model and equals the trained projector.
    fresh = build_model(cfg.model)
    load_projector(fresh, tmp_path / "out" / "projector.safetensors")
    for k, v in fresh.model.multi_modal_projector.state_dict().items():
        assert torch.equal(v, trained.model.multi_modal_projector.state_dict()[k])
    assert set(load_file(str(tmp_path / "out" / "projector.safetensors"))) == {
        "linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"}
    # A projector made for other hidden sizes is refused.
    other = parse_config(tiny_config(build, tmp_path / "o2", model={
        "vision_tower": {"config": TINY_VISION}, "language_model": {"config": {**TINY_LM, "hidden_size": 64}}}), tmp_path)
    with pytest.raises(ParsitError, match="hidden sizes"):
        load_projector(build_model(other.model), tmp_path / "out" / "projector.safetensors")


def test_forward_loss_equals_the_models_own_loss_on_supervised_positions(tiny_model):
    from parsit_train.train import forward_loss

    torch.manual_seed(3)
    ids = torch.randint(0, 1000, (2, 12))
    ids[:, 1:5] = 151655
    labels = ids.clone()
    labels[:, :6] = -100
    labels[1, 9:] = -100
    attention = torch.ones_like(ids)
    attention[1, 10:] = 0
    pixels = torch.randn(2, 3, 28, 28)
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    batch = Batch(input_ids=ids, labels=labels, targets=shifted, attention_mask=attention, pixel_values=pixels,
                  sample_ids=("a", "b"), num_tokens=int(attention.sum()), num_padded=ids.numel(),
                  num_supervised=int((shifted != -100).sum()), num_samples_supervised=2)
    with torch.no_grad():
        ours = forward_loss(tiny_model, batch, "cpu", torch.float32)  # a sum: the trainer divides per step
        ref = tiny_model(input_ids=ids, labels=labels, attention_mask=attention, pixel_values=pixels).loss
    targets = int((labels[:, 1:] != -100).sum())
    assert ours.item() / targets == pytest.approx(ref.item(), rel=1e-6)
    batch = batch.replace(targets=torch.full_like(ids, -100))  # nothing supervised: zero, not NaN
    assert forward_loss(tiny_model, batch, "cpu", torch.float32).item() == 0.0


def test_blank_image_for_text_only_batches_changes_no_real_position(tiny_model):
    from parsit_train.data.collator import Collator
    from parsit_train.train import forward_loss

    torch.manual_seed(4)
    items = []
    for k, n in enumerate((10, 8)):
        ids = torch.randint(0, 1000, (n,)).numpy().astype("int32")
        labels = ids.copy()
        labels[:4] = -100
        items.append({"sample_id": f"t{k}", "input_ids": ids, "labels": labels, "num_image_tokens": []})
    plain = Collator(151643, 151655, 64)(items)
    fed = Collator(151643, 151655, 64, blank_image=(28, 4))(items)
    assert plain.pixel_values is None
    assert fed.input_ids.shape == (2, 14) and int((fed.input_ids == 151655).sum()) == 4
    assert fed.pixel_values.shape == (1, 3, 28, 28)
    assert fed.num_supervised == plain.num_supervised and fed.num_tokens == plain.num_tokens
    with torch.no_grad():
        plain_loss = forward_loss(tiny_model, plain, "cpu", torch.float32)
        blank_loss = forward_loss(tiny_model, fed, "cpu", torch.float32)
    assert blank_loss.item() == pytest.approx(plain_loss.item(), rel=1e-6)
