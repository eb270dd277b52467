"""The option models are the one source of truth: the CLI's defaults and help are theirs, and every bad
option is reported in one error."""

from __future__ import annotations

import inspect
import typing

import pytest
import typer

from parsit_data.cli.build import build_command
from parsit_data.cli.validate import validate_command
from parsit_data.config import BuildConfig, ValidateConfig
from parsit_data.errors import ParsitError

CLI_ONLY = {"quiet"}  # becomes BuildConfig.progress (inverted); validate has no model field for it


@pytest.mark.parametrize("command, model", [(build_command, BuildConfig), (validate_command, ValidateConfig)])
def test_cli_defaults_and_help_are_the_model_s(command, model):
    params = inspect.signature(command).parameters
    hints = typing.get_type_hints(command, include_extras=True)
    fields = set(model.model_fields)
    assert set(params) - CLI_ONLY <= fields
    for name, p in params.items():
        if name in CLI_ONLY:
            continue
        info = hints[name].__metadata__[0]
        assert isinstance(info, (typer.models.OptionInfo, typer.models.ArgumentInfo)), name
        assert info.help == model.help(name) and info.help, name
        if p.default is not inspect.Parameter.empty:
            assert p.default == model.default(name), name


def test_engine_default_is_auto_in_the_library_too():
    cfg = BuildConfig(inputs=["x.jsonl"], out="o")
    assert cfg.engine == "auto" == BuildConfig.default("engine")
    assert inspect.signature(build_command).parameters["engine"].default == "auto"


def test_every_bad_option_in_one_error():
    with pytest.raises(ParsitError) as err:
        BuildConfig.parse(inputs=[], out="o", template="chatgpt", label_policy="all", overlong="wrap", shard_rows=0,
                          image_check="pixels", aspect="round", engine="spark")
    msg = str(err.value)
    for opt in ("--inputs", "--template", "--label-policy", "--overlong", "--shard-rows", "--image-check", "--aspect",
                "--engine"):
        assert opt in msg, opt
    with pytest.raises(ParsitError) as err:
        ValidateConfig.parse(inputs=["a"], template="x", label_policy="y", min_image_side=-1, image_check="z")
    assert all(o in str(err.value) for o in ("--template", "--label-policy", "--min-image-side", "--image-check"))


def test_shared_options_are_declared_once():
    shared = set(BuildConfig.model_fields) & set(ValidateConfig.model_fields) - {"tokenizer"}  # validate's takes 'none'
    assert shared >= {"inputs", "template", "label_policy", "image_root", "seed", "min_image_side", "max_image_pixels",
                      "image_check", "fix_missing_placeholder"}
    for name in shared:
        b, v = BuildConfig.model_fields[name], ValidateConfig.model_fields[name]
        assert (b.annotation, b.description, b.metadata, b.get_default()) == (
            v.annotation, v.description, v.metadata, v.get_default()), name
