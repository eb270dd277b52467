"""``parsit-train assemble``: merge a SigLIP tower and a Qwen3 model into one servable LLaVA folder."""

from __future__ import annotations

from pathlib import Path

import typer


def assemble_command(
    vision_tower: Path = typer.Option(..., "--vision-tower", help="SigLIP vision tower folder (safetensors)."),
    language_model: Path = typer.Option(..., "--language-model", help="Qwen3 causal LM folder (safetensors)."),
    out: Path = typer.Option(..., "--out", help="Output folder (a LlavaForConditionalGeneration checkpoint)."),
    projector: Path = typer.Option(None, "--projector", help="projector.safetensors of a pretrain run (default: "
                                                             "seeded init)."),
    build: Path = typer.Option(None, "--build", help="A build directory: its vision geometry, aspect mode and "
                                                     "template go into the processor and chat template."),
    seed: int = typer.Option(0, "--seed", help="Seed of the projector init when no --projector is given."),
    image_token_id: int = typer.Option(151655, "--image-token-id", help="The model's image token (Qwen3 <|image_pad|>)."),
    vision_feature_layer: int = typer.Option(-2, "--vision-feature-layer", help="Vision hidden state fed to the projector."),
    tokenizer: str = typer.Option("qwen3", "--tokenizer", help="Tokenizer folder ('qwen3': the bundled one)."),
    shard_gb: float = typer.Option(2.0, "--shard-gb", help="Largest safetensors shard, in GiB."),
) -> None:
    """Write one LLaVA folder from two towers, tensor by tensor (host memory: the largest tensor)."""
    from rich.console import Console

    from parsit_train.assemble import assemble

    vision = template = None
    if build is not None:
        from parsit_data.format import load_manifest

        manifest = load_manifest(build)
        vision, template = manifest.vision.model_dump(mode="json"), manifest.template
    folder = assemble(vision_tower, language_model, out, projector, image_token_id=image_token_id,
                      vision_feature_layer=vision_feature_layer, seed=seed, tokenizer=tokenizer, vision=vision,
                      template=template, max_shard_bytes=int(shard_gb * 1024**3))
    Console().print(f"[green]assembled[/] {folder}")
