"""``parsit-train assemble`` for the anyres families: a CLIP or SigLIP tower and a Llama / Qwen2 LM become one
LLaVA-NeXT / OneVision folder that ``from_pretrained`` loads with every weight (the towers' copied
unchanged), ``image_newline`` initialised as upstream (N(0, 1/sqrt(hidden)), seeded), and a projector export
carries ``image_newline`` into the next stage."""

from __future__ import annotations

import pytest
import torch

V = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14)
PINS = [[28, 28], [28, 56], [56, 28], [56, 56]]


def _vision(family: str, strategy: str, additional: int) -> dict:
    return {"family": family, "image_size": 28, "patch_size": 14, "aspect": "anyres", "grid_pinpoints": PINS,
            "vision_feature_select_strategy": strategy, "num_additional_image_tokens": additional,
            "vision_aspect_ratio": "anyres_max_9" if family == "llava_onevision" else None}


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("family", "tower", "lm", "strategy", "additional"),
                         [("llava_next", "clip", "llama", "default", 1), ("llava_onevision", "siglip", "qwen2", "full", 0)])
def test_assemble_writes_the_family_folder(tmp_path, family, tower, lm, strategy, additional):
    from safetensors.torch import load_file
    from transformers import (CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel)

    from parsit_train.assemble import assemble
    from parsit_train.families import model_class
    from parsit_train.model import load_projector, projector_state, save_projector

    torch.manual_seed(0)
    vit = (CLIPVisionModel(CLIPVisionConfig(**V)) if tower == "clip" else SiglipVisionModel(SiglipVisionConfig(**V)))
    vit.save_pretrained(str(tmp_path / "vit"))
    lm_cfg = dict(vocab_size=64, hidden_size=256, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1)
    text = LlamaForCausalLM(LlamaConfig(**lm_cfg)) if lm == "llama" else Qwen2ForCausalLM(Qwen2Config(**lm_cfg))
    text.save_pretrained(str(tmp_path / "lm"))
    vision = _vision(family, strategy, additional)
    out = assemble(tmp_path / "vit", tmp_path / "lm", tmp_path / "out", image_token_id=5, vision=vision,
                   serving=False, vision_feature_layer=-1, seed=3)
    model, info = model_class(family).from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert model.config.image_grid_pinpoints == PINS and model.config.vision_feature_select_strategy == strategy
    assert model.config.text_config.model_type == lm
    # the towers' weights, unchanged
    src = dict(vit.named_parameters())
    name = next(k for k in src if k.endswith("encoder.layers.1.mlp.fc2.weight"))
    mine = dict(model.model.vision_tower.named_parameters())
    torch.testing.assert_close(mine[next(k for k in mine if k.endswith("encoder.layers.1.mlp.fc2.weight"))], src[name])
    torch.testing.assert_close(model.model.language_model.norm.weight, text.model.norm.weight)
    # image_newline: upstream's init (variance 1/hidden), a different draw per seed, reproducible
    nl = model.model.image_newline.detach().clone()
    assert 0.7 < float((nl**2).mean()) * 256 < 1.3 and abs(float(nl.mean())) < 0.25 / 16
    again = assemble(tmp_path / "vit", tmp_path / "lm", tmp_path / "again", image_token_id=5, vision=vision,
                     serving=False, vision_feature_layer=-1, seed=3)
    torch.testing.assert_close(load_file(str(again / "model.safetensors"))["image_newline"], nl)
    other = assemble(tmp_path / "vit", tmp_path / "lm", tmp_path / "other", image_token_id=5, vision=vision,
                     serving=False, vision_feature_layer=-1, seed=4)
    assert not torch.equal(load_file(str(other / "model.safetensors"))["image_newline"], nl)
    # a projector export carries image_newline, and assemble / load_projector take it back
    with torch.no_grad():
        model.model.image_newline.add_(1.0)
    save_projector(projector_state(model), model.config, tmp_path / "projector.safetensors")
    started = assemble(tmp_path / "vit", tmp_path / "lm", tmp_path / "stage2", tmp_path / "projector.safetensors",
                       image_token_id=5, vision=vision, serving=False, vision_feature_layer=-1)
    torch.testing.assert_close(load_file(str(started / "model.safetensors"))["image_newline"], nl + 1.0)
    fresh = model_class(family).from_pretrained(str(other))
    load_projector(fresh, tmp_path / "projector.safetensors")
    torch.testing.assert_close(fresh.model.image_newline.detach(), nl + 1.0)
