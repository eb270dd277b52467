"""The GPU check (``scripts/gpu_check.sh``): the trainer's step on one GPU, tiny and realistic shapes.

Cases: model (``tiny``; ``realistic`` = a Qwen3-1.7B-sized config with random weights + a SigLIP
so400m-sized tower, 384 px / patch 14 = 729 tokens per image) x ZeRO stage (2, 3) x attention (``sdpa``,
and ``flash_attention_2`` when flash_attn is installed), bf16. Each case runs in its own process (one
rank), starting like a run does (one ``from_pretrained`` of a merged folder, through ``load_model``), and
times ``--steps`` optimizer steps fed by the real loader over real shards (the demo build at 384 px), then
the same number of steps fed by ONE batch kept in memory. The difference is the loader's share of the
step (target: under 5%). It prints step time (real vs in-memory), loader share, peak GPU memory and
tokens/s per case.

Then the packed-attention check (:mod:`benchmarks.pack_isolation`): the tiny model, ``micro_batch_size 2``
packs of ``--pack-length`` tokens from the same shards, each attention implementation (flash_attention_2
with the real kernels when installed): the last sample of the second pack has the loss it has alone (the
trainer's forward path), next to the path before the fix (flash attention over the [2, T] rows, which let
a pack's samples attend to each other) and sdpa, the same run's baselines.

``onevision``: LLaVA-OneVision-0.5B shapes (SigLIP so400m + a Qwen2-0.5B-sized LM, random weights), on the
demo built with ``--processor`` of a LlavaOnevisionProcessor folder (anyres_max_9, OneVision's 36 grid
pinpoints; a 640x400 page is 3,000+ visual tokens), packed at 16,384 tokens: the family's pixels
(``pixel_values`` per image, ``image_sizes``, ``batch_num_images``) through the real loader.

``onevision-video``: the same model on the same demo plus 24 video rows (generated H.264 clips of 9 to 300
frames, 16 frames sampled, 3,137 video tokens each), packed with the image and text rows:
``pixel_values_videos`` through the real loader and the ragged video features. The clips need PyAV: on a
machine without it, make the build first with ``--make-data`` and bring it along.

``--dry-run`` parses the arguments, writes the case configs (validated by the trainer's config model) and
prints the plan and parameter counts (models built on the meta device): no GPU, no data needed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for _k, _v in {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}.items():
    os.environ.setdefault(_k, _v)

IMAGE_SIZE, PATCH = 384, 14
MODELS = {
    "tiny": {
        "vision": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "image_size": IMAGE_SIZE, "patch_size": PATCH},
        "lm": {"vocab_size": 151936, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": True,
               "max_position_embeddings": 4096},
    },
    "realistic": {  # SigLIP so400m-patch14-384 and Qwen3-1.7B shapes
        "vision": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
                   "image_size": IMAGE_SIZE, "patch_size": PATCH},
        "lm": {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
               "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True,
               "max_position_embeddings": 40960, "rope_theta": 1000000},
    },
    "onevision": {  # llava-onevision-qwen2-0.5b shapes: SigLIP so400m-patch14-384 and Qwen2-0.5B
        "family": "llava_onevision",
        "vision": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 26, "num_attention_heads": 16,
                   "image_size": IMAGE_SIZE, "patch_size": PATCH},
        "lm": {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
               "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
               "tie_word_embeddings": True, "max_position_embeddings": 32768, "rope_theta": 1000000},
    },
}
MODELS["onevision-video"] = {**MODELS["onevision"], "video": True}  # the same model on the demo + video clips
PACK = 16384
#: The video rows of ``onevision-video``: generated H.264 clips (frame count each), 16 frames sampled per clip.
VIDEO_CLIPS = {"clip-long.mp4": 300, "clip-mid.mp4": 96, "clip-short.mp4": 9}
VIDEO_FRAMES = 16


def onevision_vision() -> dict:
    """The OneVision geometry (transformers' LlavaOnevisionImageProcessor pinpoints, anyres_max_9)."""
    from parsit_data.format import VisionGeometry

    pins = tuple((IMAGE_SIZE * a, IMAGE_SIZE * b) for a in range(1, 7) for b in range(1, 7))
    return VisionGeometry(image_size=IMAGE_SIZE, patch_size=PATCH, aspect="anyres", grid_pinpoints=pins,
                          family="llava_onevision", vision_aspect_ratio="anyres_max_9",
                          num_image_tokens=(IMAGE_SIZE // PATCH) ** 2, image_token="<|image_pad|>").to_json()


def onevision_processor(root: Path) -> Path:
    """A LlavaOnevisionProcessor folder (SigLIP normalisation, the bundled Qwen3 tokenizer, <|image_pad|>)."""
    from transformers import AutoTokenizer, LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

    from parsit_data.format import bundled_qwen3_tokenizer
    from parsit_train.families import allow_onevision_processor

    out = root / "processor-onevision"
    if (out / "processor_config.json").is_file():
        return out
    allow_onevision_processor()
    g = onevision_vision()
    ip = LlavaOnevisionImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3,
                                         image_std=[0.5] * 3, image_grid_pinpoints=g["grid_pinpoints"])
    tok = AutoTokenizer.from_pretrained(str(bundled_qwen3_tokenizer()))
    LlavaOnevisionProcessor(image_processor=ip, tokenizer=tok, video_processor=LlavaOnevisionVideoProcessor(),
                            num_image_tokens=g["num_image_tokens"], vision_feature_select_strategy="full",
                            image_token="<|image_pad|>", video_token="<|video_pad|>",
                            vision_aspect_ratio="anyres_max_9").save_pretrained(str(out))
    return out


def build_name(model: str) -> str:
    spec = MODELS[model]
    if spec.get("family") != "llava_onevision":
        return "demo-384"
    return "demo-384-onevision-video" if spec.get("video") else "demo-384-onevision"


def case_config(out: Path, build: Path, model: str, zero: int, attn: str, steps: int, batch: int, workers: int) -> dict:
    family = MODELS[model].get("family")
    return {
        "run_name": f"gpu-{model}-z{zero}-{attn}", "output_dir": str(out), "seed": 0, "stage": "finetune",
        "data": {"builds": [str(build.parent / build_name(model))], **({"pack_length": PACK} if family else {})},
        "model": {"init_from": str(out.parent / f"init-{model}"), "attn_implementation": attn,
                  "gradient_checkpointing": model == "realistic"},
        "optim": {"micro_batch_size": 1 if family else batch, "max_steps": steps, "schedule": "constant"},
        "deepspeed": {"zero_stage": zero, "bf16": True},
        "dataloader": {"num_workers": workers, "prefetch_factor": 4},
        "logging": {"tensorboard": False},
        "checkpoint": {"export_hf": False},
    }


PACK_DIR = "pack-isolation"


def pack_config(root: Path, build: Path, pack_length: int) -> dict:
    """The packed-attention check's config: the tiny model, 2 packs per micro-batch, no loader workers."""
    cfg = case_config(root / PACK_DIR, build, "tiny", 2, "sdpa", 1, 2, 0)
    cfg["run_name"] = "gpu-pack-isolation"
    cfg["data"]["builds"] = [str(build)]  # the build given (case_config names the model's own demo build)
    cfg["data"]["pack_length"] = pack_length
    return cfg


def run_pack_check(cfg_path: Path, result: Path, attns: list[str]) -> None:
    """One process, no DeepSpeed engine: the first micro-batch (2 packs) of the real loader through
    forward_loss, the model loaded once (bf16 on a GPU, float32 on a CPU) and run with each attention
    implementation in turn (the configs' ``_attn_implementation``, which transformers' dispatch reads)."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from pack_isolation import pack_isolation

    from parsit_train.compat import set_attn_implementation
    from parsit_train.config import load_config
    from parsit_train.model import load_model
    from parsit_train.train import open_data

    cfg = load_config(cfg_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, _ = load_model(cfg.model.init_from, cfg.model.model_copy(update={"attn_implementation": "sdpa"}), dtype)
    model = model.to(device).eval()
    loader = open_data(cfg, 0, 1, verify_checksums=True).loader  # the blank image: from the build view
    batch = next(iter(loader))
    rows = []
    for attn in attns:
        for config in (model.config, model.config.text_config, model.config.vision_config):
            set_attn_implementation(config, attn)
        rows += pack_isolation(model, batch, cfg.model.image_token_id, device, dtype)
    result.write_text(json.dumps(rows))


def param_count(model: str) -> int:
    import torch
    from transformers import SiglipVisionConfig

    from parsit_train.families import family_name_of_config, model_class, text_config_from
    from parsit_train.model import combine_configs

    spec = MODELS[model]
    cfg = combine_configs(SiglipVisionConfig(**spec["vision"], vision_use_head=False), text_config_from(spec["lm"]),
                          151655, -2, onevision_vision() if spec.get("family") else None)
    with torch.device("meta"):
        m = model_class(family_name_of_config(cfg))(cfg)
    return sum(p.numel() for p in m.parameters())


def make_init(root: Path, model: str) -> Path:
    """Random towers of the model's shapes (built on the GPU in bf16: seconds), merged by assemble."""
    import torch
    from transformers import AutoModelForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from parsit_train.assemble import MARKER, assemble
    from parsit_train.families import text_config_from

    out = root / f"init-{model}"
    if (out / MARKER).is_file():
        return out
    spec = MODELS[model]
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        SiglipVisionModel(SiglipVisionConfig(**spec["vision"])).to(torch.bfloat16).save_pretrained(root / f"vit-{model}")
        AutoModelForCausalLM.from_config(text_config_from(spec["lm"])).to(torch.bfloat16).save_pretrained(
            root / f"lm-{model}")
    torch.cuda.empty_cache()
    vision, ids = None, {}
    if spec.get("family"):
        from parsit_data.format import bundled_qwen3_tokenizer
        from parsit_train.data.view import open_view

        # The placeholder ids the build's processor names (the trainer refuses a folder with others).
        view = open_view(root / build_name(model), bundled_qwen3_tokenizer(), verify_checksums=False)
        vision, ids = view.vision, view.placeholder_ids
    return assemble(root / f"vit-{model}", root / f"lm-{model}", out, vision=vision,
                    image_token_id=ids.get("image", 151655), video_token_id=ids.get("video"))


def make_build(root: Path, onevision: bool = False, video: bool = False) -> Path:
    """The demo data built for a 384 px / patch 14 tower (real images, real shards); ``onevision``: with
    ``--processor`` of a LlavaOnevisionProcessor folder, rows up to the pack length; ``video``: and video rows
    from generated clips (PyAV; a machine without it is given the build ready-made: ``--make-data``)."""
    from parsit_data.build import build
    from parsit_data.config import BuildConfig

    out = root / ("demo-384-onevision-video" if video else "demo-384-onevision" if onevision else "demo-384")
    if not (out / "manifest.json").is_file():
        demo = REPO / "examples" / "demo"
        extra = {"processor": str(onevision_processor(root)), "tokenizer": "qwen3", "max_length": PACK} if onevision \
            else {"image_size": IMAGE_SIZE, "patch_size": PATCH}
        inputs = [str(demo / "mixture.yaml")]
        if video:
            inputs.append(str(make_video_records(root)))
            extra.update(video_root=str(root / "clips"), video_frames=VIDEO_FRAMES)
        build(BuildConfig(inputs=inputs, image_root=str(demo / "images"), out=str(out), shard_rows=16, **extra))
    return out


def make_video_records(root: Path) -> Path:
    """Clips (a moving gradient, H.264 at 320x240) and 24 records asking about them, under ``root``."""
    import av
    import numpy as np

    clips = root / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    for name, frames in VIDEO_CLIPS.items():
        with av.open(str(clips / name), "w") as box:
            stream = box.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            x = np.arange(320, dtype=np.int32)[None, :, None]
            for i in range(frames):
                rgb = np.broadcast_to(((x + 3 * i) % 256).astype(np.uint8), (240, 320, 3)).copy()
                box.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            box.mux(stream.encode())
    names = list(VIDEO_CLIPS)
    path = root / "video-records.jsonl"
    path.write_text("".join(json.dumps({"id": f"video-{i:03d}", "video": names[i % len(names)], "conversations": [
        {"from": "human", "value": "<image>\nDescribe how the picture moves."},
        {"from": "gpt", "value": f"A gradient slides to the left; clip {i}, {VIDEO_CLIPS[names[i % len(names)]]} "
                                 "frames long."}]}) + "\n" for i in range(24)), encoding="utf-8")
    return path


def run_case(cfg_path: Path, result: Path) -> None:
    """One case, one rank: real-loader steps, then the same number of steps on one in-memory batch."""
    import deepspeed
    import torch

    from parsit_train.config import load_config
    from parsit_train.model import load_model, param_groups, set_trainable
    from parsit_train.train import deepspeed_config, micro_step, open_data, setup_distributed

    cfg = load_config(cfg_path)
    rank, world, _ = setup_distributed()
    data = open_data(cfg, rank, world, verify_checksums=True)
    loader = data.loader
    ds = deepspeed_config(cfg, world)
    model, keep = load_model(cfg.model.init_from, data.model, torch.bfloat16, ds)
    set_trainable(model, cfg.trainable_parts())
    groups = param_groups(model, cfg.optim.lr.model_dump(), 0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(groups), config=ds)
    del keep

    def step(batch) -> None:
        micro_step(engine, batch, max(1, int(batch.num_supervised)), world, torch.bfloat16)  # batch mean
        engine.step()

    def batches():
        while True:
            yield from loader

    it = batches()
    first = next(it)
    for _ in range(2):  # warm-up: kernels, allocator, loader workers
        step(next(it))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    n, tok, t0 = cfg.optim.max_steps, 0, time.perf_counter()
    for _ in range(n):
        b = next(it)
        tok += b.num_tokens
        step(b)
    torch.cuda.synchronize()
    real = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        step(first)
    torch.cuda.synchronize()
    cached = (time.perf_counter() - t0) / n
    result.write_text(json.dumps({
        "case": cfg.run_name, "step_s_real": real, "step_s_in_memory": cached,
        "loader_share": max(0.0, (real - cached) / real), "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30,
        "tokens_per_s": tok / (real * n)}))


def main() -> None:
    ap = argparse.ArgumentParser(description="Parsit GPU check: step time, loader share, GPU memory, tokens/s.")
    ap.add_argument("--out", type=Path, default=Path("runs/gpu_check"), help="work folder (data, models, results)")
    ap.add_argument("--models", nargs="+", default=["tiny", "realistic"], choices=sorted(MODELS))
    ap.add_argument("--zero", nargs="+", type=int, default=[2, 3], choices=[2, 3])
    ap.add_argument("--attn", nargs="+", default=None, help="default: sdpa, plus flash_attention_2 when installed")
    ap.add_argument("--steps", type=int, default=8, help="timed optimizer steps per feed")
    ap.add_argument("--batch", type=int, default=4, help="micro-batch size")
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers")
    ap.add_argument("--case-timeout", type=float, default=150, help="seconds per case")
    ap.add_argument("--pack-length", type=int, default=4096, help="pack length of the packed-attention check")
    ap.add_argument("--pack-tolerance", type=float, default=2e-2,
                    help="largest logit difference (in pack vs alone), relative to the largest logit, still counted "
                         "as isolated (bf16 rounding; a leak measured 0.24 on CPU)")
    ap.add_argument("--dry-run", action="store_true", help="write configs and print the plan; no GPU needed")
    ap.add_argument("--make-data", action="store_true",
                    help="make the models' builds under --out and stop (no GPU needed; the video build needs PyAV, "
                         "so make it here and carry it to a machine without PyAV)")
    ap.add_argument("--run-case", nargs=2, type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--run-pack-check", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_case:
        run_case(*args.run_case)
        return

    from parsit_train.compat import flash_attn_2_available
    from parsit_train.config import load_config
    from parsit_train.train import deepspeed_config

    attns = args.attn or (["sdpa"] + (["flash_attention_2"] if flash_attn_2_available() else []))
    if args.run_pack_check:
        run_pack_check(*args.run_pack_check, attns)
        return
    root = args.out.resolve()
    root.mkdir(parents=True, exist_ok=True)
    build = root / "demo-384"
    cases = []
    for model in args.models:
        for zero in args.zero:
            for attn in attns:
                out = root / f"{model}-z{zero}-{attn}"
                out.mkdir(parents=True, exist_ok=True)
                path = out / "config.json"  # JSON is YAML: load_config reads it
                path.write_text(json.dumps(case_config(out, build, model, zero, attn, args.steps, args.batch,
                                                       args.workers), indent=2))
                cfg = load_config(path)  # validated exactly as a run's config
                cases.append((model, zero, attn, path, deepspeed_config(cfg, 1)))
    (root / PACK_DIR).mkdir(parents=True, exist_ok=True)
    pack_path = root / PACK_DIR / "pack_config.json"
    pack_path.write_text(json.dumps(pack_config(root, build, args.pack_length), indent=2))
    load_config(pack_path)
    print(f"{len(cases)} case(s) in {root}; attention: {', '.join(attns)}"
          + ("" if "flash_attention_2" in attns else " (flash_attn not installed: flash_attention_2 skipped)"))
    for model in args.models:
        print(f"  model {model}: {param_count(model) / 1e6:,.1f}M parameters")
    for model, zero, attn, path, ds in cases:
        print(f"  {model:<16} ZeRO-{zero} {attn:<18} {path}  (DeepSpeed: zero {ds['zero_optimization']['stage']}, "
              f"bf16 {ds['bf16']['enabled']}, micro-batch {ds['train_micro_batch_size_per_gpu']})")
    print(f"  packed attention check: tiny, 2 packs of {args.pack_length} per micro-batch, {', '.join(attns)}"
          f"  {pack_path}")
    if args.dry_run:
        print("dry run: nothing executed")
        return
    if args.make_data:
        make_builds(root, args.models)
        return

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: the GPU check needs one (use --dry-run to check the plan)")
    t0 = time.perf_counter()
    make_builds(root, args.models)
    for model in args.models:
        make_init(root, model)
    print(f"data and models ready in {time.perf_counter() - t0:.0f}s")
    rows = []
    for model, zero, attn, path, _ in cases:
        res = path.parent / "result.json"
        res.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": str(REPO), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + len(rows))}
        try:
            proc = subprocess.run([sys.executable, __file__, "--run-case", str(path), str(res)], env=env,
                                  capture_output=True, text=True, timeout=args.case_timeout)
            ok = proc.returncode == 0 and res.is_file()
            tail = (proc.stdout + proc.stderr)[-1500:]
        except subprocess.TimeoutExpired:
            ok, tail = False, f"timed out after {args.case_timeout}s"
        rows.append(json.loads(res.read_text()) if ok else {"case": path.parent.name, "error": tail})
        print(json.dumps(rows[-1]) if ok else f"{path.parent.name}: FAILED\n{tail}", flush=True)
    print(f"\n{'case':<36}{'step s (shards)':>16}{'step s (memory)':>16}{'loader share':>13}{'peak GiB':>10}{'tok/s':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['case']:<36}{'failed':>16}")
            continue
        print(f"{r['case']:<36}{r['step_s_real']:>16.3f}{r['step_s_in_memory']:>16.3f}{r['loader_share']:>12.1%}"
              f"{r['peak_gpu_gib']:>10.1f}{r['tokens_per_s']:>10.0f}")
    print("loader share target: under 5%")
    pack_check(pack_path, attns, args, t0)


def make_builds(root: Path, models: list[str]) -> None:
    """The builds the cases train on (the packed-attention check's demo build always)."""
    make_build(root)
    if any(MODELS[m].get("family") for m in models):
        make_build(root, onevision=True)
    if any(MODELS[m].get("video") for m in models):
        make_build(root, onevision=True, video=True)


def pack_check(pack_path: Path, attns: list[str], args, t0: float) -> None:
    """The packed-attention check in its own process; prints its table."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from pack_isolation import format_rows

    res = pack_path.parent / "result.json"
    res.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    cmd = [sys.executable, __file__, "--run-pack-check", str(pack_path), str(res), "--attn", *attns]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.case_timeout)
        tail = (proc.stdout + proc.stderr)[-1500:]
    except subprocess.TimeoutExpired:
        tail = f"timed out after {args.case_timeout}s"
    if res.is_file():
        print(f"\npacked attention, 2 packs of {args.pack_length} per micro-batch: the last sample of the second "
              f"pack, in the pack vs alone (logit tolerance {args.pack_tolerance:.0e} of the largest logit)")
        print(format_rows(json.loads(res.read_text()), args.pack_tolerance))
    else:
        print(f"packed attention check: FAILED\n{tail}")
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
