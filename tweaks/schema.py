"""The JSON Schema (draft 2020-12) of rule files, built from the tweak catalogue.

The same ``Param`` declarations drive this schema and the deploy-time checks, so the
two cannot disagree. ``tweaks/rules.schema.json`` is this output, committed for
editors (``# yaml-language-server: $schema=...``); a test keeps it current.
"""

from __future__ import annotations

import json
from typing import Any

from . import registry
from .conditions import COMPARATORS
from .rules import MOMENTS

SCHEMA_ID = "https://github.com/one-tweaks/one-tweaks/rules.schema.json"
SCALAR_FACT = (r"^(?:(?:vm|history|domain|dest|storage)\.[a-z_]+|system_ds\.[A-Za-z0-9_]+"
               r"|(?:template|user)\.[A-Za-z0-9_]+(?:/[A-Za-z0-9_]+)*)$")
ANY_FACT = (r"^(?:(?:vm|history|domain|dest|disk|nic|storage)\.[a-z_]+|system_ds\.[A-Za-z0-9_]+"
            r"|(?:template|user)\.[A-Za-z0-9_]+(?:/[A-Za-z0-9_]+)*)$")
RULE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def _condition() -> dict[str, Any]:
    scalar = {"type": ["string", "number", "boolean"]}
    compare = {
        "type": "object",
        "properties": {
            "fact": {"$ref": "#/$defs/fact"},
            "equals": scalar,
            "in": {"type": "array", "items": scalar, "minItems": 1},
            "regex": {"type": "string", "format": "regex"},
            **{op: {"type": "number"} for op in ("lt", "le", "gt", "ge")},
        },
        "required": ["fact"],
        "additionalProperties": False,
        "minProperties": 2,
        "maxProperties": 2,
    }
    return {
        "description": "all/any/not over fact tests; see README 'Conditions'",
        "type": "object",
        "minProperties": 1,
        "maxProperties": 2,
        "oneOf": [
            {"properties": {"all": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/condition"}}},
             "required": ["all"], "additionalProperties": False},
            {"properties": {"any": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/condition"}}},
             "required": ["any"], "additionalProperties": False},
            {"properties": {"not": {"$ref": "#/$defs/condition"}}, "required": ["not"],
             "additionalProperties": False},
            {"properties": {"present": {"$ref": "#/$defs/fact"}}, "required": ["present"],
             "additionalProperties": False},
            {"properties": {"absent": {"$ref": "#/$defs/fact"}}, "required": ["absent"],
             "additionalProperties": False},
            {**compare, "anyOf": [{"required": [op]} for op in COMPARATORS]},
        ],
    }


def _param_value(literal: dict[str, Any], doc: str) -> dict[str, Any]:
    source = {
        "type": "object",
        "properties": {
            "from": {"anyOf": [{"$ref": "#/$defs/scalar_fact"},
                               {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/scalar_fact"}}]},
            "default": literal,
        },
        "required": ["from"],
        "additionalProperties": False,
    }
    # if/then/else rather than anyOf keeps jsonschema's messages about the real mistake.
    return {"description": doc, "if": {"type": "object"}, "then": source, "else": literal}


def build() -> dict[str, Any]:
    tweak_props: dict[str, Any] = {}
    for tweak in registry.all_tweaks():
        if tweak.operator_only:
            props = {p.name: {"description": p.doc, **p.json_schema()} for p in tweak.params}
        else:
            props = {p.name: _param_value(p.json_schema(), p.doc) for p in tweak.params}
        tweak_props[tweak.name] = {
            "description": tweak.summary,
            "type": ["object", "null"],
            "properties": props,
            "additionalProperties": False,
        }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "one-tweaks rule file",
        "description": "One rule per file; an empty file disables the rule of that file name.",
        "type": ["object", "null"],
        "properties": {
            "name": {"type": "string", "pattern": RULE_NAME},
            "description": {"type": "string", "maxLength": 500},
            "enabled": {"type": "boolean"},
            "when": {"$ref": "#/$defs/condition"},
            "on": {
                "description": "the moments the rule runs at (default: [deploy])",
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "items": {"enum": list(MOMENTS)},
            },
            "tweaks": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "minProperties": 1,
                    "maxProperties": 1,
                    "propertyNames": {"enum": sorted(tweak_props)},
                    "properties": tweak_props,
                },
            },
        },
        "required": ["name", "tweaks"],
        "additionalProperties": False,
        "$defs": {
            "fact": {"type": "string", "pattern": ANY_FACT},
            "scalar_fact": {"type": "string", "pattern": SCALAR_FACT},
            "condition": _condition(),
        },
    }


def dumps() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"
