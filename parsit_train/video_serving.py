"""The OneVision export's video processor: the build's video pixel parameters, so that
``AutoProcessor.from_pretrained(export)`` makes the ``pixel_values_videos`` the trainer fed.

The build records its video processor in the manifest's ``video`` entry: the processor folder's video
processor config verbatim (``video_processor``; null when the folder had none) and the parameters the
trainer uses (``size``, ``image_mean``, ``image_std``, ``rescale_factor``, ``resample``). The export writes
``LlavaOnevisionVideoProcessor`` with the verbatim config, those parameters over it (they are what the
frames were made with), and the build's frame count as ``num_frames`` (used only when a caller asks the
processor to sample a clip itself: ``do_sample_frames`` stays off, as the class default). A build without
video keeps the class defaults, as before.
"""

from __future__ import annotations

from parsit_data.errors import ParsitError

_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
_NOT_KWARGS = ("video_processor_type", "processor_class", "auto_map", "_processor_class")


def video_processor_for(video: dict | None):
    """``LlavaOnevisionVideoProcessor`` configured as the build's ``video`` entry says (class defaults without one)."""
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

    if not video:
        return LlavaOnevisionVideoProcessor()
    cfg = {k: v for k, v in dict(video.get("video_processor") or {}).items() if k not in _NOT_KWARGS}
    resample = video["resample"]
    if isinstance(resample, str):
        if resample.lower() not in _RESAMPLE:
            raise ParsitError(f"the build's video resample {resample!r} is not a PIL filter name")
        resample = _RESAMPLE[resample.lower()]
    size = video["size"]
    cfg.update(size={"height": int(size["height"]), "width": int(size["width"])},
               image_mean=list(video["image_mean"]), image_std=list(video["image_std"]),
               rescale_factor=float(video["rescale_factor"]), resample=int(resample), do_resize=True,
               do_rescale=True, do_normalize=True, do_convert_rgb=True, do_center_crop=False)
    if video.get("frames"):
        cfg["num_frames"] = int(video["frames"])
    return LlavaOnevisionVideoProcessor(**cfg)


def export_video_entry(builds) -> dict | None:
    """The video entry the export's video processor follows: the first of the run's builds that took video
    (the loader refused builds whose video processors differ). ``builds``: the opened builds of the rank's
    :class:`~parsit_train.data.view.BuildView` (their manifests as read once; nothing is read again)."""
    from parsit_train.data.video_pixels import video_entries

    entries = video_entries(builds)
    return entries[0][1] if entries else None
