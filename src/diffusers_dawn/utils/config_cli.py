"""
Command lines built from config dataclasses: one flag per field (`--<field name>`), with the field's default, type,
help text and `--help` group (its metadata, see `training.config.option`). The training scripts are this plus one
library call, so a flag, its default and its meaning are declared once, on the config.
"""

import argparse
import dataclasses
import typing
from typing import List, Optional, Type, TypeVar


ConfigType = TypeVar("ConfigType")


def _unwrap_optional(annotation):
    """`Optional[X]` → (X, True); anything else → (annotation, False)."""
    if typing.get_origin(annotation) is typing.Union:
        arguments = [argument for argument in typing.get_args(annotation) if argument is not type(None)]
        if len(arguments) == 1:
            return arguments[0], True
    return annotation, False


def build_config_parser(config_class: type, description: Optional[str] = None,
                        last_group: Optional[str] = None) -> argparse.ArgumentParser:
    """
    An `ArgumentParser` with one flag per init field of the dataclass `config_class`: booleans that default to False
    are switches, `Optional[bool]` fields take `--x/--no-x`, list fields take one or more values, fields without a
    default are required. Groups appear in the order of their first field, `last_group` (if any) at the end.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(config_class)
    config_fields = [item for item in dataclasses.fields(config_class) if item.init]
    group_names = list(dict.fromkeys(item.metadata.get("group") or "options" for item in config_fields))
    if last_group in group_names:
        group_names.remove(last_group)
        group_names.append(last_group)
    groups = {name: parser.add_argument_group(name) for name in group_names}
    # Subclass fields first within each group: the model's settings before the shared ones.
    for item in config_fields:
        group = groups[item.metadata.get("group") or "options"]
        annotation, optional = _unwrap_optional(hints[item.name])
        options = {"help": item.metadata.get("help"), "dest": item.name}
        if item.default is not dataclasses.MISSING:
            options["default"] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            options["default"] = item.default_factory()
        else:
            options["required"] = True
        if item.metadata.get("choices") is not None:
            options["choices"] = item.metadata["choices"]
        if annotation is bool:
            options["action"] = argparse.BooleanOptionalAction if optional else "store_true"
        elif typing.get_origin(annotation) in (list, List, tuple, typing.Sequence):
            options["nargs"] = "+"
            options["type"] = typing.get_args(annotation)[0]
        elif annotation is not str:
            options["type"] = annotation
        group.add_argument(f"--{item.name}", **options)
    return parser


def parse_config(config_class: Type[ConfigType], argv: Optional[List[str]] = None,
                 description: Optional[str] = None, last_group: Optional[str] = None) -> ConfigType:
    """Parses `argv` (default: `sys.argv[1:]`) into `config_class` (whose checks then run)."""
    arguments = build_config_parser(config_class, description, last_group).parse_args(argv)
    return config_class(**vars(arguments))
