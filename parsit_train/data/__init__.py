"""The trainer's data path: verified, memory-mapped Parsit shards to padded batches.

The training loop needs one call::

    from parsit_train.data import build_dataloader

    loader, sampler = build_dataloader(
        build_dirs=["out/docs", "out/captions"],   # one or more finished build directories
        weights=[1.0, 0.5],                        # per-epoch multiplicity of each build (None: all 1.0)
        tokenizer_path="qwen3",                    # the run's tokenizer (checked against every manifest)
        image_token_id=151655,                     # the model's image token (Qwen3: <|image_pad|>)
        pad_token_id=None,                         # None: the manifest's; else must equal it
        batch_size=4,                              # per rank
        max_length=4096,                           # multimodal length limit of a sample (see collator)
        seed=0, rank=0, world_size=1,
        num_workers=2, group_by_length=True,
    )
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)                   # no-op when resuming inside this epoch
        for batch in loader:                       # dict: input_ids, labels, attention_mask,
            ...                                    # pixel_values, sample_ids, num_tokens, num_supervised
            ckpt["data"] = sampler.state_dict()    # exact data position: save it with the checkpoint

    # on resume (any world size, same seed/batch order):
    sampler.load_state_dict(ckpt["data"])

The loader counts the batches it has handed to the caller (not the ones its workers prefetched), so
``sampler.state_dict()`` taken between two steps is exactly the data position of the run. The state is
the number of GLOBAL samples consumed in the epoch; the global order is a function of (seed, epoch), so a
resume with a different number of ranks continues with exactly the samples not yet seen.

Contract with the model: ``input_ids`` hold ``image_token_id`` once per visual token (each -200 of the
shard expanded to that image's ``num_image_tokens``), ``pixel_values`` hold the images' crops in order
(float32 [crops, 3, S, S], SigLIP mean/std 0.5 by default), which is what
``LlavaForConditionalGeneration`` with a SigLIP tower and ``vision_feature_select_strategy="full"``
consumes ((S // patch)² tokens per crop). Length policy: a sample over ``max_length`` is an ERROR (the
builds are checked when the loader is built), never truncated by the loader; rebuild with
``--max-length``. Padding is right-sided; ``attention_mask`` comes from lengths, never from ids.

Packing: ``pack_length=N`` makes ``batch_size`` count packs of up to N tokens (docs/PACKING.md); batches
then hold ``position_ids`` and no ``attention_mask``. Every batch holds ``targets`` (labels shifted per
sample) and ``data_position`` (where in the stream it starts, for ``sampler.step_totals``).

Modules: ``dataset`` (builds opened with ``parsit_data.format.open_build``, zero-copy rows), ``images``
(pixel values for SigLIP-style towers), ``collator`` (padding or packing, image-token expansion,
per-sample targets), ``sampler`` (deterministic, resumable batch sampler; ``DataPosition``), ``packing``
(the pack plan), ``loader`` (the DataLoader factory and seeded workers).
"""

import importlib

# Imported on first use (PEP 562), so that `parsit-train launch` can open and verify builds through
# `parsit_train.data.dataset` without importing torch (seconds of start-up before any rank starts).
_EXPORTS = {
    "Collator": "collator",
    "ImageProcessor": "images",
    "ParsitLoader": "loader",
    "ResumableBatchSampler": "sampler",
    "ShardDataset": "dataset",
    "build_dataloader": "loader",
    "seed_worker": "loader",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
