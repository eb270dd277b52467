"""Peak host memory per rank during model setup: ZeRO-2 vs ZeRO-3, 2 CPU (gloo) ranks.

A LLaVA model of ~140M parameters (a 12-layer, 768-wide Qwen3 with a 32k vocabulary, and a small SigLIP) is built from configs with random weights, saved as two bf16 towers and merged with
``parsit_train.assemble`` (streamed). Each case then starts 2 ranks that run the trainer's setup:
``load_model`` (one ``from_pretrained`` of the merged folder) and ``deepspeed.initialize`` with the
trainer's DeepSpeed config and a torch AdamW. Each rank reports its RSS before setup and its RSS
high-water mark (sampled every 2 ms from ``/proc/self/statm``; ``ru_maxrss`` would include the imports)
after construction and after ``deepspeed.initialize``.

Cases (all in this run, the first is the baseline):

- ``fp32 + ZeRO-2``: what the trainer did before (the whole model in fp32 on every rank);
- ``bf16 + ZeRO-2``: weights loaded in bf16, every rank still holds the whole model;
- ``bf16 + ZeRO-3``: created partitioned (HfDeepSpeedConfig -> zero.Init); rank 0 also reads the checkpoint
  (memory-mapped) to scatter it, the other ranks never see a whole tensor.

Reading the table: "from_pretrained" is model construction (what ZeRO-3 partitions: about model / ranks
plus one module being gathered; bf16 + ZeRO-2 shows almost nothing there because its parameters are still
views of the memory-mapped file, copied later by ``deepspeed.initialize``). "+ ds.initialize" adds ZeRO's
own buffers (fp32 master weights and gradient partitions), partitioned in both stages; ZeRO-2 also keeps
the whole bf16 model on every rank, ZeRO-3 a 1/ranks share of it. Adam's moments come at the first step.

Run: ``nice -n 10 python benchmarks/model_setup_memory.py`` (about 4 minutes on 2 busy cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for _k, _v in {"HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false",
               "TRANSFORMERS_VERBOSITY": "error"}.items():
    os.environ.setdefault(_k, _v)

# Many layers and a 32k vocabulary: the largest tensor (the embedding) is a small part of the model, as in a
# real 8B model (Qwen3-8B: 0.6B of 8B), so per-rank memory shows the model's share, not one tensor's.
LM = {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
      "num_attention_heads": 12, "num_key_value_heads": 12, "head_dim": 64, "tie_word_embeddings": False,
      "max_position_embeddings": 4096}
VISION = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 4, "num_attention_heads": 6,
          "image_size": 224, "patch_size": 14}
IMAGE_TOKEN = 31999
CASES = (("fp32 + ZeRO-2 (before)", "float32", 2), ("bf16 + ZeRO-2", "bfloat16", 2), ("bf16 + ZeRO-3", "bfloat16", 3))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def anon_mib() -> float:
    """Anonymous resident memory: RSS without file-backed pages (a memory-mapped checkpoint's pages are
    resident once read, but they are page cache the kernel can drop, not memory the process needs)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Sampler:
    """The RSS high-water mark over an interval (ru_maxrss counts the whole process life, imports included)."""

    def __init__(self, every_s: float = 0.003) -> None:
        import threading

        self.peak = rss_mib()
        self.anon = anon_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib())
            self.anon = max(self.anon, anon_mib())
            self._stop.wait(every_s)

    def read(self) -> tuple[float, float]:
        self.peak = max(self.peak, rss_mib())
        self.anon = max(self.anon, anon_mib())
        return self.peak, self.anon

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.read()


def make_model(root: Path) -> Path:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from parsit_train.assemble import assemble

    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(**VISION)).to(torch.bfloat16).save_pretrained(root / "vit")
    lm = Qwen3ForCausalLM(Qwen3Config(**LM)).to(torch.bfloat16)
    lm.save_pretrained(root / "lm")
    del lm
    return assemble(root / "vit", root / "lm", root / "merged", vision_feature_layer=-2, image_token_id=IMAGE_TOKEN,
                    max_shard_bytes=64 * 1024**2, serving=False)


def worker(folder: Path, dtype: str, stage: int, out: Path) -> None:
    import torch

    from parsit_train.compat import local_numel, numel
    from parsit_train.config import ModelConfig
    from parsit_train.model import load_model, param_groups, set_trainable
    from parsit_train.train import setup_distributed

    # image_token_id must be inside the 32k vocabulary of this synthetic model
    rank, world, _ = setup_distributed()
    import deepspeed

    ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "train_batch_size": world,
          "zero_optimization": {"stage": stage}, "bf16": {"enabled": True}, "steps_per_print": 10**9,
          "zero_allow_untested_optimizer": True, "gradient_clipping": 1.0}
    torch.distributed.barrier()
    before, anon_before = rss_mib(), anon_mib()
    sampler = Sampler()
    t0 = time.perf_counter()
    mcfg = ModelConfig(init_from=folder, image_token_id=IMAGE_TOKEN)
    model, keep = load_model(folder, mcfg, getattr(torch, dtype), ds)
    built = sampler.read()
    set_trainable(model, ["projector", "vision_tower", "language_model"])
    groups = param_groups(model, {"projector": 1e-3, "vision_tower": 1e-5, "language_model": 1e-5}, 0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(groups), config=ds)
    del keep
    setup_s = time.perf_counter() - t0
    params = list(engine.module.parameters())
    setup = sampler.stop()
    rec = {"rank": rank, "rss_before": before, "anon_before": anon_before, "peak_built": built[0],
           "anon_built": built[1], "peak_setup": setup[0], "anon_setup": setup[1], "maxrss": peak_mib(), "setup_s": setup_s, "full": sum(numel(p) for p in params),
           "local": sum(local_numel(p) for p in params)}
    out.write_text(json.dumps(rec))
    torch.distributed.barrier()


def run_case(folder: Path, dtype: str, stage: int, tmp: Path, timeout: float) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--worker", str(folder), dtype, str(stage), str(tmp / f"r{rank}.json")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(p.returncode for p in procs):
        raise SystemExit("a rank failed:\n" + "\n".join(x[-3000:] for x in logs))
    return [json.loads((tmp / f"r{r}.json").read_text()) for r in range(2)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=4, metavar=("FOLDER", "DTYPE", "STAGE", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    if args.worker:
        folder, dtype, stage, out = args.worker
        worker(Path(folder), dtype, int(stage), Path(out))
        return
    with tempfile.TemporaryDirectory(prefix="parsit-setup-mem-") as d:
        root = Path(d)
        t0 = time.perf_counter()
        folder = make_model(root)
        bytes_ = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        print(f"model: {folder} ({bytes_ / 2**20:.0f} MiB of bf16 safetensors), assembled in "
              f"{time.perf_counter() - t0:.1f}s")
        rows = []
        for name, dtype, stage in CASES:
            case_dir = root / f"case-{stage}-{dtype}"
            case_dir.mkdir()
            rows.append((name, run_case(folder, dtype, stage, case_dir, args.timeout)))
        full = rows[0][1][0]["full"]
        print(f"\n{full / 1e6:.1f}M parameters; bf16 size {full * 2 / 2**20:.0f} MiB, / 2 ranks = "
              f"{full / 2**20:.0f} MiB; fp32 size {full * 4 / 2**20:.0f} MiB\n")
        print("peak host memory per rank during model setup, MiB above the process's memory before setup "
              "(2 gloo ranks);\nRSS = all resident pages, anon = without the memory-mapped checkpoint's page cache")
        head = (f"{'case':<24}{'rank':>5}{'from_pretrained RSS':>21}{'anon':>7}{'+ ds.initialize RSS':>21}"
                f"{'anon':>7}{'elements held':>15}{'setup s':>9}")
        print(head)
        print("-" * len(head))
        base = None
        for name, recs in rows:
            for r in recs:
                b, s_ = r["rss_before"], r["anon_before"]
                print(f"{name:<24}{r['rank']:>5}{r['peak_built'] - b:>21.0f}{r['anon_built'] - s_:>7.0f}"
                      f"{r['peak_setup'] - b:>21.0f}{r['anon_setup'] - s_:>7.0f}{r['local'] / r['full']:>14.0%}"
                      f"{r['setup_s']:>9.1f}")
            worst = max(r["anon_built"] - r["anon_before"] for r in recs)
            base = base or worst
            print(f"{'':<24}{'max':>5}{'':>21}{worst:>7.0f}  construction, anon: {worst / base:.2f}x baseline")

if __name__ == "__main__":
    main()
