"""``parsit-train assemble``: the merged folder loads with no missing key and reproduces both towers;
a missing weight is refused with its name; the on-disk key layout is transformers' own; attention
implementations that cannot run are refused clearly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import TINY_LM, TINY_VISION, tiny_config  # noqa: E402

from parsit_data.errors import ParsitError  # noqa: E402
from parsit_train.assemble import assemble, write_safetensors_streaming, Entry  # noqa: E402
from parsit_train.config import parse_config  # noqa: E402


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    from transformers import Qwen3Config, Qwen3ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    root = tmp_path_factory.mktemp("towers")
    torch.manual_seed(5)
    SiglipVisionModel(SiglipVisionConfig(**TINY_VISION, vision_use_head=True)).to(torch.bfloat16).save_pretrained(
        root / "vit")
    Qwen3ForCausalLM(Qwen3Config(**TINY_LM)).to(torch.bfloat16).save_pretrained(root / "lm")
    return root


def test_assemble_round_trip_reproduces_both_towers(towers, tmp_path):
    from safetensors import safe_open
    from transformers import AutoProcessor, LlavaForConditionalGeneration, Qwen3ForCausalLM, SiglipVisionModel

    out = assemble(towers / "vit", towers / "lm", tmp_path / "merged", vision_feature_layer=-1, seed=3,
                   max_shard_bytes=4 * 1024**2)  # small shards: several files and an index
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) > 1 and (out / "model.safetensors.index.json").is_file()
    with safe_open(str(out / files[0]), framework="pt") as f:  # the on-disk layout save_pretrained writes
        assert all(k.split(".")[0] in {"vision_tower", "multi_modal_projector", "language_model"} for k in f.keys())
    model, info = LlavaForConditionalGeneration.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    assert model.dtype == torch.bfloat16  # weights keep their own dtype
    assert not any(k.startswith("model.vision_tower.head.") for k in model.state_dict())  # pooling head skipped

    vit = SiglipVisionModel.from_pretrained(str(towers / "vit"))
    lm = Qwen3ForCausalLM.from_pretrained(str(towers / "lm"))
    pixels = torch.randn(2, 3, 28, 28, dtype=torch.bfloat16)
    ids = torch.randint(0, 1000, (1, 9))
    with torch.no_grad():
        want_v = vit(pixel_values=pixels).last_hidden_state
        got_v = model.model.vision_tower(pixel_values=pixels).last_hidden_state
        want_t = lm(input_ids=ids).logits
        got_t = model(input_ids=ids).logits
    assert torch.equal(got_v, want_v) and torch.equal(got_t, want_t)
    # Seeded projector: the same seed gives the same projector, another seed another one.
    again = assemble(towers / "vit", towers / "lm", tmp_path / "again", vision_feature_layer=-1, seed=3)
    other = assemble(towers / "vit", towers / "lm", tmp_path / "other", vision_feature_layer=-1, seed=4)
    proj = lambda d: LlavaForConditionalGeneration.from_pretrained(str(d)).model.multi_modal_projector.state_dict()  # noqa: E731
    p0, p1, p2 = proj(out), proj(again), proj(other)
    assert all(torch.equal(p0[k], p1[k]) for k in p0) and not torch.equal(p0["linear_1.weight"], p2["linear_1.weight"])
    # Servable: processor and chat template come with it; the image token matches the config.
    processor = AutoProcessor.from_pretrained(str(out))
    assert processor.image_token == "<|image_pad|>" and model.config.image_token_id == 151655
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 151645


def test_a_missing_weight_is_refused_with_its_name(towers, tmp_path):
    from safetensors import safe_open

    from parsit_train.model import load_model

    out = assemble(towers / "vit", towers / "lm", tmp_path / "merged", vision_feature_layer=-1)
    shard = out / "model.safetensors"
    victim = "language_model.model.layers.1.mlp.down_proj.weight"
    with safe_open(str(shard), framework="pt") as f:
        keep = [k for k in f.keys() if k != victim]
        tensors = {k: f.get_tensor(k) for k in keep}
    write_safetensors_streaming(shard, [Entry(k, {torch.bfloat16: "BF16", torch.float32: "F32"}[v.dtype],
                                              tuple(v.shape), (lambda v=v: v)) for k, v in tensors.items()])
    cfg = parse_config(tiny_config(tmp_path, tmp_path / "o", model={"init_from": str(out), "vision_tower": None,
                                                                    "language_model": None}), tmp_path)
    with pytest.raises(ParsitError, match=r"model\.language_model\.layers\.1\.mlp\.down_proj\.weight"):
        load_model(out, cfg.model, torch.float32)
    # assemble refuses a tower that lacks a weight, naming it too
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from parsit_train.assemble import write_shards

    lm = Qwen3ForCausalLM(Qwen3Config(**TINY_LM)).state_dict()
    lm.pop("model.norm.weight")
    (tmp_path / "lm_bad").mkdir()
    (tmp_path / "lm_bad" / "config.json").write_text((towers / "lm" / "config.json").read_text())
    write_shards(tmp_path / "lm_bad", [Entry(k, "F32", tuple(v.shape), (lambda v=v: v)) for k, v in lm.items()])
    with pytest.raises(ParsitError, match=r"language_model\.model\.norm\.weight"):
        assemble(towers / "vit", tmp_path / "lm_bad", tmp_path / "bad")


def test_disk_layout_table_matches_save_pretrained(tmp_path):
    from safetensors import safe_open
    from transformers import LlavaForConditionalGeneration

    from parsit_train.compat import llava_disk_key
    from parsit_train.model import build_model

    model = build_model(parse_config(tiny_config(tmp_path, tmp_path / "o"), tmp_path).model)
    assert isinstance(model, LlavaForConditionalGeneration)
    model.save_pretrained(str(tmp_path / "saved"))
    with safe_open(str(tmp_path / "saved" / "model.safetensors"), framework="pt") as f:
        on_disk = set(f.keys())
    assert {llava_disk_key(k) for k in model.state_dict()} == on_disk


def test_attention_implementations_refused_clearly(tmp_path):
    from parsit_train.compat import flash_attn_2_available
    from parsit_train.model import check_attn_implementation

    check_attn_implementation("sdpa")
    check_attn_implementation("eager")
    if not flash_attn_2_available():
        with pytest.raises(ParsitError, match="flash_attn package is not installed"):
            check_attn_implementation("flash_attention_2")
    elif not torch.cuda.is_available():
        with pytest.raises(ParsitError, match="CUDA GPUs only"):
            check_attn_implementation("flash_attention_2")
    with pytest.raises(ParsitError, match="unknown model.attn_implementation"):
        check_attn_implementation("flex")
    cfg = parse_config(tiny_config(tmp_path, tmp_path / "o", model={
        "vision_tower": {"config": TINY_VISION}, "language_model": {"config": TINY_LM},
        "attn_implementation": "flash_attention_2"}), tmp_path)
    assert cfg.model.attn_implementation == "flash_attention_2"  # a valid setting, refused at load time
    with pytest.raises(ParsitError, match="attn_implementation"):
        parse_config(tiny_config(tmp_path, tmp_path / "o", model={
            "vision_tower": {"config": TINY_VISION}, "language_model": {"config": TINY_LM},
            "attn_implementation": "flash"}), tmp_path)


def test_cli_assemble(towers, tmp_path, capsys):
    from parsit_train.cli.main import main

    with pytest.raises(SystemExit) as ok:
        main(["assemble", "--vision-tower", str(towers / "vit"), "--language-model", str(towers / "lm"),
              "--out", str(tmp_path / "m"), "--vision-feature-layer", "-1"])
    assert ok.value.code == 0 and (tmp_path / "m" / "processor_config.json").is_file()
    with pytest.raises(SystemExit) as err:
        main(["assemble", "--vision-tower", str(towers / "vit"), "--language-model", str(tmp_path / "none"),
              "--out", str(tmp_path / "m2")])
    assert err.value.code == 2 and "no config.json" in capsys.readouterr().err


def test_run_start_folder_is_assembled_once_and_rebuilt_when_the_model_changes(towers, tmp_path):
    from transformers import LlavaForConditionalGeneration, Qwen3ForCausalLM

    from parsit_train.assemble import MARKER, starting_folder
    from parsit_train.model import build_model

    def cfg(**model):
        base = {"vision_tower": {"path": str(towers / "vit")}, "language_model": {"path": str(towers / "lm")},
                "vision_feature_layer": -1}
        return parse_config(tiny_config(tmp_path, tmp_path / "out", model={**base, **model}), tmp_path)

    geometry = {"image_size": 28, "patch_size": 14, "aspect": "pad"}
    template = {"name": "qwen_1_5", "system_prompt": "You are a helpful assistant.", "label_policy": "native"}
    folder = starting_folder(cfg(), geometry, template, rank=0)
    assert folder == tmp_path / "out" / "init"
    stamp = (folder / MARKER).stat().st_mtime_ns
    assert starting_folder(cfg(), geometry, template, rank=0) == folder
    assert (folder / MARKER).stat().st_mtime_ns == stamp  # reused: not assembled again
    lm = Qwen3ForCausalLM.from_pretrained(str(towers / "lm"))
    merged = LlavaForConditionalGeneration.from_pretrained(str(folder))
    assert torch.equal(merged.lm_head.weight, lm.lm_head.weight)
    starting_folder(cfg(vision_feature_layer=-2), geometry, template, rank=0)
    assert (folder / MARKER).stat().st_mtime_ns != stamp  # another model section: rebuilt
    assert LlavaForConditionalGeneration.from_pretrained(str(folder)).config.vision_feature_layer == -2
    # projector_weights from a pretrain run load on top (outside ZeRO-3 the gather is a no-op)
    from parsit_train.model import load_model, projector_state, save_projector

    src = build_model(cfg().model)
    torch.nn.init.constant_(src.model.multi_modal_projector.linear_1.weight, 0.25)
    save_projector(projector_state(src), src.config, tmp_path / "projector.safetensors")
    model, _ = load_model(folder, cfg(projector_weights=str(tmp_path / "projector.safetensors")).model, torch.float32)
    assert torch.all(model.model.multi_modal_projector.linear_1.weight == 0.25)
