"""Checks documents against OpenAI's OpenAPI schemas (the subset in tests/fixtures/openai_openapi/,
MIT-licensed, see its README) with a JSON-schema validator: what the front door answers must be
what the API's own description allows, not only what the SDKs happen to accept."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

SPEC = json.loads((Path(__file__).resolve().parent / "fixtures" / "openai_openapi" / "schemas.json")
                  .read_text(encoding="utf-8"))
SCHEMAS = SPEC["components"]["schemas"]
# Each Responses stream event's schema, by the ``type`` it carries.
EVENTS = {schema["properties"]["type"]["enum"][0]: name for name, schema in SCHEMAS.items()
          if name.startswith("Response") and name.endswith("Event")
          and isinstance(schema.get("properties", {}).get("type", {}).get("enum"), list)}


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    if name not in SCHEMAS:
        raise KeyError(f"{name} is not in the vendored subset (tests/fixtures/openai_openapi/subset.py ROOTS)")
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]})


def check(name: str, doc: Any) -> None:
    """Raises AssertionError naming the first place ``doc`` breaks schema ``name``."""
    error = best_match(_validator(name).iter_errors(doc))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        raise AssertionError(f"{name} at {where}: {error.message[:400]}")


def check_event(doc: dict[str, Any]) -> None:
    """A Responses stream event against the schema of its ``type``."""
    kind = doc.get("type")
    if kind not in EVENTS:
        raise AssertionError(f"no Responses stream event of type {kind!r} in the spec")
    check(EVENTS[kind], doc)
