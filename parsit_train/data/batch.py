"""One micro-batch as the training loop receives it: typed fields, never a dict of keys.

The collator (:mod:`parsit_train.data.collator`) makes a :class:`Batch`; the loader stamps its
``data_position``; the loop reads ``batch.num_supervised``, moves it with :meth:`Batch.to` and hands
:meth:`Batch.model_inputs` to the model. A field that is a model input says so in its metadata
(``model_input``: passed to ``model(...)`` under its own name; ``pixels``: cast to the run's dtype;
``on_device``: False keeps it on the host), so a new input is ONE field here, and the collator fills it.
A field may also hold a tuple of tensors (``pixel_values_videos``: one tensor per video, the videos'
frame counts differ): :meth:`Batch.to`, :meth:`Batch.pin_memory` move each tensor of it, and
:meth:`Batch.model_inputs` passes the tuple as it is (OneVision's ``get_video_features`` is patched to take
it: :func:`parsit_train.video_model.enable_ragged_videos`).

Shapes (B rows of T positions; packed batches hold several samples per row):

==========================  =====================================  ====================================
field                       type                                   what
==========================  =====================================  ====================================
input_ids                   int64 [B, T]                           -200 expanded to the image token id
labels                      int64 [B, T]                           -100 where unsupervised
targets                     int64 [B, T]                           labels shifted per sample (the loss's)
attention_mask              int64 [B, T] or None (packed)          from lengths, never from ids
position_ids                int64 [B, T] or None (padded)          restart at 0 per sample (packed)
target_weights              float32 [B, T] or None                 ``loss_weighting: sample`` only
pixel_values                float32 [crops, 3, S, S] (llava) or    the images of the batch, in order
                            [images, max patches, 3, S, S]
image_sizes                 int64 [images, 2] (h, w) or None       LLaVA-NeXT / OneVision
batch_num_images            int64 [samples] or None                OneVision (kept on the host)
pixel_values_videos         tuple of float32 [frames_i, 3, H, W]   OneVision: one per video, in the order
                            or None                                of their tokens (row-major); a batch
                                                                   without video of a video run: one
                                                                   black frame (the blank video)
sample_ids                  tuple[str, ...]                        in batch order
num_tokens / num_padded     int                                    real tokens / positions computed
num_supervised              int                                    targets != -100
num_samples_supervised      int                                    samples with any supervised target
data_position               (epoch, consumed) or None              where in the stream the batch starts
==========================  =====================================  ====================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

#: Metadata of a model input (moved to the device); PIXELS also casts floats to the run's dtype.
INPUT = {"model_input": True}
PIXELS = {"model_input": True, "pixels": True}
HOST_INPUT = {"model_input": True, "on_device": False}
#: Rows of a packed batch that :meth:`Batch.one_row` flattens.
PACKED_ROW_FIELDS = ("input_ids", "labels", "targets", "target_weights", "position_ids")


@dataclass(frozen=True)
class Batch:
    """A collated micro-batch (see the module doc for shapes)."""

    input_ids: torch.Tensor = field(metadata=INPUT)
    labels: torch.Tensor
    targets: torch.Tensor
    sample_ids: tuple[str, ...]
    num_tokens: int
    num_padded: int
    num_supervised: int
    num_samples_supervised: int
    attention_mask: torch.Tensor | None = field(default=None, metadata=INPUT)
    position_ids: torch.Tensor | None = field(default=None, metadata=INPUT)
    target_weights: torch.Tensor | None = None
    pixel_values: torch.Tensor | None = field(default=None, metadata=PIXELS)
    image_sizes: torch.Tensor | None = field(default=None, metadata=INPUT)
    batch_num_images: torch.Tensor | None = field(default=None, metadata=HOST_INPUT)
    pixel_values_videos: tuple[torch.Tensor, ...] | None = field(default=None, metadata=PIXELS)
    data_position: tuple[int, int] | None = None

    @property
    def packed(self) -> bool:
        """Several samples per row, separated by ``position_ids`` restarts (no attention mask)."""
        return self.attention_mask is None and self.position_ids is not None

    def replace(self, **changes) -> Batch:
        return dataclasses.replace(self, **changes)

    def _map(self, fn) -> Batch:
        """``fn(field, tensor)`` applied to every tensor field, and to each tensor of a tuple-of-tensors field."""
        changes = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                changes[f.name] = fn(f, value)
            elif isinstance(value, tuple) and value and all(isinstance(t, torch.Tensor) for t in value):
                changes[f.name] = tuple(fn(f, t) for t in value)
        return dataclasses.replace(self, **changes)

    def to(self, device, dtype: torch.dtype | None = None) -> Batch:
        """The batch with its model inputs and targets on ``device`` (pixels in ``dtype`` when given);
        host-side inputs (``batch_num_images``) stay where they are."""
        def move(f, t: torch.Tensor) -> torch.Tensor:
            if f.metadata.get("on_device") is False:
                return t
            if f.metadata.get("pixels") and dtype is not None:
                return t.to(device, dtype)
            return t.to(device)

        return self._map(move)

    def pin_memory(self) -> Batch:
        """For ``DataLoader(pin_memory=True)``: torch calls this on a batch that is not a tensor or mapping."""
        return self._map(lambda f, t: t.pin_memory())

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The keyword arguments of the model's forward: every model-input field that is set."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata.get("model_input") and getattr(self, f.name) is not None}

    def one_row(self) -> Batch:
        """A packed batch ``[B, T]`` as one row ``[1, B*T]`` (its packs, padding included, one after the other).

        Why: transformers 5.x's flash-attention path looks for packed sequences in ``position_ids`` only when
        the batch has one row (``modeling_flash_attention_utils._is_packed_sequence`` returns False for
        ``batch_size != 1``); with two or more rows it runs plain causal attention over each whole row and the
        samples of a pack attend to each other. In one row every sample (and each row's trailing padding) is
        a segment that restarts its ``position_ids`` at 0, so the varlen kernel sees every boundary. Nothing
        else changes: the same tokens, positions and targets, in the same order. A padded batch (with an
        attention mask) is returned as is."""
        if not self.packed or self.input_ids.shape[0] == 1:
            return self
        return dataclasses.replace(self, **{k: getattr(self, k).reshape(1, -1) for k in PACKED_ROW_FIELDS
                                            if getattr(self, k) is not None})
