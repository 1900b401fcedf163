"""Rendering: progress on stderr, results on stdout (text via rich, or one JSON document)."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Any

from pulumi import automation as auto
from pydantic import BaseModel

from cli.context import err_console


class Format(StrEnum):
    text = "text"
    json = "json"


def print_json(model: BaseModel | list[Any] | dict[str, Any]) -> None:
    if isinstance(model, BaseModel):
        sys.stdout.write(model.model_dump_json(indent=2, by_alias=True) + "\n")
    else:
        sys.stdout.write(json.dumps(model, indent=2) + "\n")


_KIND_WORDS = {
    "kubernetes:apps/v1:Deployment": "deployment",
    "kubernetes:core/v1:Service": "service",
    "kubernetes:core/v1:ConfigMap": "record",
}
_OPS = {
    "create": "creating",
    "update": "updating",
    "delete": "deleting",
    "replace": "replacing",
    "create-replacement": "replacing",
    "same": None,
    "refresh": None,
    "read": None,
    "delete-replaced": "deleting old",
}


class Progress:
    """Turns Pulumi engine events into short progress lines on stderr."""

    def __init__(self, *, enabled: bool, verbose: bool) -> None:
        self.enabled = enabled
        self.verbose = verbose

    def line(self, text: str) -> None:
        if self.enabled:
            err_console.print(text)

    def on_output(self, text: str) -> None:
        if self.verbose:
            err_console.print(text, markup=False)

    def on_event(self, event: auto.EngineEvent) -> None:
        if not self.enabled:
            return
        pre = event.resource_pre_event
        done = event.res_outputs_event
        failed = event.res_op_failed_event
        if pre is not None:
            meta = pre.metadata
            word = _KIND_WORDS.get(meta.type)
            op = _OPS.get(str(getattr(meta.op, "value", meta.op)))
            if word and op:
                name = meta.urn.rsplit("::", 1)[-1].split(":", 1)[-1]
                hint = (
                    " (waiting for pods to be Ready)"
                    if word == "deployment" and op in ("creating", "updating", "replacing")
                    else ""
                )
                self.line(f"  {op} {word} {name}{hint}...")
        elif done is not None:
            meta = done.metadata
            word = _KIND_WORDS.get(meta.type)
            op = _OPS.get(str(getattr(meta.op, "value", meta.op)))
            if word and op:
                name = meta.urn.rsplit("::", 1)[-1].split(":", 1)[-1]
                self.line(f"  {word} {name}: done")
        elif failed is not None:
            self.line("  a resource operation failed")
