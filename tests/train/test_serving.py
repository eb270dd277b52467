"""The export serves as it was trained: for every demo record and every assistant turn, the export's own
chat template + processor give exactly the training row's ids up to that reply (images expanded as the
collator expands them) and the loader's pixels; generation stops at ``<|im_end|>``; ``generate`` runs."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import TINY_LM, TINY_VISION  # noqa: E402

from parsit_data.format import bundled_qwen3_tokenizer  # noqa: E402
from parsit_train.serving import chatml_jinja, write_serving_files  # noqa: E402

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"
ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


def _demo_records() -> dict[str, list[dict]]:
    """The demo's source records by id, as chat messages (the first record of a duplicated id: the build
    quarantines the later ones); lines that are not valid records are skipped (the build quarantines them)."""
    raw = []
    for line in (DEMO / "conversations.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            raw.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    raw += json.loads((DEMO / "captions.json").read_text(encoding="utf-8"))
    out: dict[str, list[dict]] = {}
    for r in raw:
        if not isinstance(r, dict) or "id" not in r:
            continue
        turns = r.get("conversations") or r.get("messages") or []
        out.setdefault(r["id"], [{"role": ROLES.get(t.get("from", t.get("role"))), "content": t.get("value", t.get("content"))}
                                 for t in turns if isinstance(t, dict)])
    return out


@pytest.fixture(scope="module")
def served(demo_build, tmp_path_factory):
    from transformers import AutoProcessor

    manifest = json.loads((demo_build / "manifest.json").read_text())
    out = tmp_path_factory.mktemp("served")
    write_serving_files(out, bundled_qwen3_tokenizer(), manifest["vision"], manifest["template"], 151655)
    return AutoProcessor.from_pretrained(str(out)), manifest, out


@pytest.fixture(scope="module")
def llava_next_build(tmp_path_factory) -> Path:
    """The demo built with label policy llava-next (LLaVA-NeXT's preprocess_qwen)."""
    from parsit_data.build import build
    from parsit_data.config import BuildConfig

    out = tmp_path_factory.mktemp("demo-llava-next") / "build"
    build(BuildConfig(inputs=[str(DEMO / "mixture.yaml")], image_root=str(DEMO / "images"), out=str(out),
                      shard_rows=16, label_policy="llava-next"))
    return out


def _reply_starts_native(ids: np.ndarray, labels: np.ndarray) -> list[tuple[int, bool]]:
    """Policy native supervises exactly each reply and its <|im_end|>: every supervised run starts a reply.
    The reply is encoded on its own, so no token ever straddles header and reply (merged = False)."""
    sup = labels != -100
    return [(k, False) for k in range(len(ids)) if sup[k] and (k == 0 or not sup[k - 1])]


def _reply_starts_after_header(ids: np.ndarray, labels: np.ndarray) -> list[tuple[int, bool]]:
    """Policy llava-next supervises whole turns and control tokens anywhere, so the reply starts are read
    from the ``<|im_start|>assistant`` headers (151644, 77091). The policy encodes ``assistant\\n{reply}``
    as one piece (upstream's preprocess_qwen): a reply that starts with a newline merges with the header's
    (``\\n\\n`` is one token), where inference has generated the header's ``\\n`` alone (merged = True)."""
    from parsit_data.format import bundled_qwen3_tokenizer as qwen
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(qwen() / "tokenizer.json"))
    ids = ids.tolist()
    out = []
    for k in range(len(ids) - 2):
        if ids[k:k + 2] == [151644, 77091]:
            nxt = ids[k + 2]
            out.append((k + 3, False) if nxt == 198 else (k + 2, tok.decode([nxt]).startswith("\n")))
    return out


def _check_parity(build_dir: Path, out: Path, reply_starts) -> int:
    from PIL import Image
    from transformers import AutoProcessor

    from parsit_train.data.collator import expand_images
    from parsit_train.data.dataset import ShardDataset
    from parsit_train.data.images import ImageProcessor

    manifest = json.loads((build_dir / "manifest.json").read_text())
    write_serving_files(out, bundled_qwen3_tokenizer(), manifest["vision"], manifest["template"], 151655)
    processor = AutoProcessor.from_pretrained(str(out))
    assert type(processor).__name__ == "LlavaProcessor"
    records = _demo_records()
    ds = ShardDataset(build_dir, "qwen3")
    loader_pixels = ImageProcessor(manifest["vision"])
    turns = with_system = with_images = 0
    merged_turns: list[str] = []
    for i in range(len(ds)):
        item = ds[i]
        messages = records[item["sample_id"]]
        ids, labels = expand_images(item["input_ids"], item["labels"], item["num_image_tokens"], 151655,
                                    item["sample_id"])
        starts = reply_starts(ids, labels)
        images = [Image.open(io.BytesIO(b)) for b in item["images"]]
        replies = [j for j, m in enumerate(messages) if m["role"] == "assistant"]
        assert len(replies) == len(starts), item["sample_id"]
        for (start, merged), j in zip(starts, replies, strict=True):
            prompt = processor.apply_chat_template(messages[:j], add_generation_prompt=True, tokenize=False)
            n_img = prompt.count("<|image_pad|>")
            enc = processor(text=prompt, images=images[:n_img] or None, return_tensors="np")
            got = enc["input_ids"][0].tolist()
            if merged:  # the header's newline is inside the reply's first token in the row (see above)
                assert got[-1] == 198 and messages[j]["content"].startswith("\n"), item["sample_id"]
                got = got[:-1]
                merged_turns.append(item["sample_id"])
            assert got == ids[:start].tolist(), (item["sample_id"], j, prompt)
            if n_img:
                want, _ = loader_pixels.process_sample(item["images"][:n_img], item["image_sizes"][:n_img])
                np.testing.assert_allclose(enc["pixel_values"], want, atol=1e-5, rtol=0)
                with_images += 1
            turns += 1
        with_system += messages[0]["role"] == "system"
    assert turns > len(ds) and with_images > 0 and with_system > 0  # multi-turn, images, own system turns
    return merged_turns


def test_export_processor_reproduces_every_training_prefix_and_the_pixels(demo_build, served, tmp_path):
    _, manifest, _ = served
    assert manifest["vision"]["aspect"] == "pad" and manifest["template"]["name"] == "qwen_1_5"
    assert manifest["template"]["label_policy"] == "native"
    assert _check_parity(demo_build, tmp_path, _reply_starts_native) == []


def test_export_reproduces_the_llava_next_policy_too(llava_next_build, tmp_path):
    manifest = json.loads((llava_next_build / "manifest.json").read_text())
    assert manifest["template"]["label_policy"] == "llava-next"
    merged = _check_parity(llava_next_build, tmp_path, _reply_starts_after_header)
    assert merged == ["edge-newline"]  # the demo's one reply that starts with a newline


def test_chat_template_renders_the_build_template(served):
    from parsit_data.records import Record, Turn
    from parsit_data.templates import get_template
    from parsit_data.templates.base import rendered_text

    processor, manifest, _ = served
    tmpl = get_template(manifest["template"]["name"])
    for turns in ([Turn("user", "<image>\nHi"), Turn("assistant", "Hello.")],
                  [Turn("system", "Be brief."), Turn("user", "Q?"), Turn("assistant", "A."), Turn("user", "More?"),
                   Turn("assistant", "No.")]):
        rec = Record(sample_id="x", source="t", position=0, turns=turns, images=["a.png"])
        want = rendered_text(tmpl.render(rec)).replace("<image>", "<|image_pad|>")
        msgs = [{"role": t.role, "content": t.content} for t in turns]
        assert processor.apply_chat_template(msgs, tokenize=False) == want
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nHi"}]}]
    assert "<|im_start|>user\n<|image_pad|>\nHi<|im_end|>" in processor.apply_chat_template(parts, tokenize=False)
    assert chatml_jinja(None).count("default_system") >= 1  # qwen3: no default system prompt


@pytest.mark.timeout(120)
def test_generate_runs_on_the_export_with_its_own_processor(served, tmp_path):
    from PIL import Image
    from transformers import AutoProcessor, GenerationConfig, LlavaForConditionalGeneration

    from parsit_train.config import ModelConfig, TowerSpec
    from parsit_train.model import build_model

    _, manifest, _ = served
    torch.manual_seed(0)
    vision = {**TINY_VISION, "image_size": manifest["vision"]["image_size"], "patch_size": manifest["vision"]["patch_size"]}
    model = build_model(ModelConfig(vision_tower=TowerSpec(config=vision), language_model=TowerSpec(config=TINY_LM),
                                    vision_feature_layer=-1))
    out = tmp_path / "export"  # as export_hf writes it: the weights, then the serving files
    model.save_pretrained(str(out))
    write_serving_files(out, bundled_qwen3_tokenizer(), manifest["vision"], manifest["template"], 151655)
    processor = AutoProcessor.from_pretrained(str(out))
    gen = GenerationConfig.from_pretrained(str(out))
    assert gen.eos_token_id == processor.tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645
    loaded = LlavaForConditionalGeneration.from_pretrained(str(out))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nWhat is the title?"}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    enc = processor(text=prompt, images=[Image.new("RGB", (300, 200), (200, 30, 30))], return_tensors="pt")
    assert int((enc["input_ids"] == 151655).sum()) == (vision["image_size"] // vision["patch_size"]) ** 2
    with torch.no_grad():
        res = loaded.generate(**enc, max_new_tokens=3, do_sample=False)
    assert res.shape[1] > enc["input_ids"].shape[1]
    assert loaded.generation_config.eos_token_id == 151645


def test_square_aspect_pixels_match(demo_build, tmp_path):
    from PIL import Image

    from parsit_train.data.dataset import ShardDataset
    from parsit_train.data.images import ImageProcessor
    from parsit_train.serving import image_processor_for

    square = {"image_size": 384, "patch_size": 14, "aspect": "square"}
    proc, _ = image_processor_for(square)
    ours = ImageProcessor(square)
    ds = ShardDataset(demo_build, "qwen3")
    checked = 0
    for i in range(len(ds)):
        item = ds[i]
        for data, size in zip(item["images"], item["image_sizes"], strict=True):
            got = proc(images=[Image.open(io.BytesIO(data))], return_tensors="np")["pixel_values"]
            np.testing.assert_allclose(got, ours.process_sample([data], [size])[0], atol=1e-5, rtol=0)
            checked += 1
    assert checked > 10
    # anyres is the LLaVA-NeXT / OneVision families' now: tests/train/test_family_serving.py
