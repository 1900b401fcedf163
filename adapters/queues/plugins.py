"""Imports every broker plug-in so that each registers in `broker.BROKERS`."""

from __future__ import annotations

import contextlib
import importlib

from adapters.queues import rabbitmq  # noqa: F401

with contextlib.suppress(ImportError):  # the Kafka plug-in (adapters/queues/kafka.py)
    importlib.import_module("adapters.queues.kafka")
