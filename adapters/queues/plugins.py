"""Imports every broker plug-in so that each registers in `broker.BROKERS`."""

from __future__ import annotations

from adapters.queues import kafka, rabbitmq  # noqa: F401
