"""Validate JSON instances against components of OpenAI's OpenAPI document.

The document (path in ``$OPENAI_OPENAPI``) is loaded once, converted from
OpenAPI flavoured schemas into plain JSON Schema (draft 2020-12) and
registered in a ``referencing`` registry, so ``#/components/schemas/...``
references resolve exactly as written in the document.

Conversion rules (OpenAPI 3.0 leftovers inside the 3.1 document):

* ``nullable: true`` next to a ``type``   -> the type list gains ``"null"``
  (and an ``enum`` gains ``None``, otherwise the enum would still reject null);
* ``nullable: true`` without a ``type``    -> ``{"anyOf": [<schema>, {"type": "null"}]}``;
* everything else (``x-*``, ``discriminator``, ``example``, ...) is
  annotation-only for draft 2020-12 and left alone.

Usage::

    from openai_schema import validate
    validate("CreateChatCompletionResponse", body)   # raises SchemaError
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOCUMENT_URI = "urn:openai:openapi"

__all__ = ["SchemaError", "validate", "validator", "component_names", "convert", "openapi_path"]


class SchemaError(AssertionError):
    """An instance does not validate against an OpenAI component.

    Subclasses AssertionError so pytest reports it as a plain test failure.
    """


def openapi_path() -> Path:
    env = os.environ.get("OPENAI_OPENAPI")
    if env:
        return Path(env)
    # Fallback: the layout used in CI (../shared/reference relative to the repo root).
    repo_root = Path(__file__).resolve().parents[2]
    return repo_root.parent / "shared" / "reference" / "openai-openapi.yaml"


def convert(node: Any) -> Any:
    """Return a copy of an OpenAPI schema tree with ``nullable`` turned into JSON Schema."""
    if isinstance(node, list):
        return [convert(item) for item in node]
    if not isinstance(node, dict):
        return node

    out = {key: convert(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is not True:
        return out

    if "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        if "null" not in types:
            types = [*types, "null"]
        out["type"] = types
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        return out

    # No explicit type ($ref, allOf, anyOf, ...): make null an alternative.
    # Keep annotations (description, ...) at the outer level; they are harmless.
    return {"anyOf": [out, {"type": "null"}]}


@functools.lru_cache(maxsize=1)
def _registry() -> tuple[Registry, dict[str, Any]]:
    path = openapi_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"OpenAI OpenAPI document not found at {path}; set OPENAI_OPENAPI to its path"
        )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open("rb") as fh:
        document = yaml.load(fh, Loader=loader)  # noqa: S506 - SafeLoader / CSafeLoader
    schemas = document.get("components", {}).get("schemas", {})
    # Only the component tree is needed; keep the same JSON pointer layout so
    # the document's own "#/components/schemas/X" references resolve unchanged.
    converted = {"components": {"schemas": convert(schemas)}}
    resource = Resource.from_contents(converted, default_specification=DRAFT202012)
    registry = Registry().with_resource(DOCUMENT_URI, resource).crawl()
    return registry, converted["components"]["schemas"]


def component_names() -> list[str]:
    return sorted(_registry()[1])


@functools.lru_cache(maxsize=None)
def validator(component: str) -> Draft202012Validator:
    registry, schemas = _registry()
    if component not in schemas:
        raise KeyError(f"no component schema named {component!r} in {openapi_path()}")
    schema = {"$ref": f"{DOCUMENT_URI}#/components/schemas/{component}"}
    return Draft202012Validator(schema, registry=registry)


def _describe(error: ValidationError, depth: int = 0) -> str:
    indent = "  " * depth
    schema_path = "/".join(str(p) for p in error.absolute_schema_path)
    lines = [f"{indent}at {error.json_path}: {error.message}  [schema: {schema_path}]"]
    # For anyOf/oneOf failures show why each branch failed (bounded, to stay readable).
    for sub in sorted(error.context or [], key=lambda e: (len(e.path), str(e.path)))[:8]:
        lines.append(_describe(sub, depth + 1))
    return "\n".join(lines)


def validate(component: str, instance: Any) -> None:
    """Raise SchemaError (an AssertionError) if ``instance`` does not match ``component``."""
    errors = list(validator(component).iter_errors(instance))
    if not errors:
        return
    best = best_match(errors)
    others = [e for e in errors if e is not best][:5]
    text = [f"instance does not validate against OpenAI {component}:", _describe(best)]
    if others:
        text.append("other errors:")
        text.extend(_describe(e, 1) for e in others)
    raise SchemaError("\n".join(text))
