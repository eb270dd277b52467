"""The trainer's data path: verified, memory-mapped Parsit shards to padded batches.

The training loop needs two calls: the rank's build view (every manifest read once), then the loader
made from it and the run's config sections (:mod:`parsit_train.config`)::

    from parsit_train.data import BatchSpec, build_dataloader, view_of

    view = view_of(cfg)                            # BuildView: builds, geometry, tokenizer, template, video
    loader = build_dataloader(view, cfg.data, cfg.dataloader,
                              BatchSpec(batch_size=4, image_token_id=151655, seed=0, rank=0, world_size=1,
                                        blank_image=True))
    sampler = loader.sampler
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)                   # no-op when resuming inside this epoch
        for batch in loader:                       # a frozen Batch: batch.input_ids, batch.num_supervised ...
            out = model(**batch.to(device, dtype).model_inputs(), use_cache=False)
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

Packing: ``data.pack_length=N`` makes ``batch_size`` count packs of up to N tokens (docs/PACKING.md);
batches then hold ``position_ids`` and no ``attention_mask``. Every batch holds ``targets`` (labels shifted
per sample) and ``data_position`` (where in the stream it starts, for ``sampler.step_totals``).

Modules: ``view`` (the rank's build view: manifests read once, checked against the run), ``batch`` (the
typed :class:`Batch`), ``dataset`` (builds opened with ``parsit_data.format.open_build``, zero-copy rows), ``images``
(pixel values for SigLIP-style towers), ``collator`` (padding or packing, image-token expansion,
per-sample targets), ``sampler`` (deterministic, resumable batch sampler; ``DataPosition``), ``packing``
(the pack plan), ``loader`` (the DataLoader factory and seeded workers).
"""

import importlib

# Imported on first use (PEP 562), so that `parsit-train launch` can open and verify builds through
# `parsit_train.data.dataset` without importing torch (seconds of start-up before any rank starts).
_EXPORTS = {
    "Batch": "batch",
    "BatchSpec": "loader",
    "BuildView": "view",
    "open_view": "view",
    "view_of": "view",
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
