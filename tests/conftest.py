"""Shared fixtures. `testbed` starts the real control plane once per session."""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator

import pytest

from testbed import Testbed, ensure
from testbed.brokers import Brokers

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
_BED: list[Testbed] = []


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    """A running loopback cluster plus an offline Pulumi environment in os.environ.

    In CI a missing binary is an error (the toolchain is built by .ci/run first); on a
    developer machine missing parts are built here. Never skipped. The real node (unless
    PREVIEW_ENV_REAL_NODE=0) runs the bed's Gateway (testbed.gateway).
    """
    toolchain = ensure(build=not IN_CI)
    bed = Testbed(tmp_path_factory.mktemp("testbed"), toolchain, gateway=True)
    _BED.append(bed)
    atexit.register(bed.stop, keep_state=True)
    bed.start()
    saved = dict(os.environ)
    os.environ.update(bed.environment())
    try:
        yield bed
    finally:
        os.environ.clear()
        os.environ.update(saved)
        bed.stop(keep_state=True)
        _BED.clear()


@pytest.fixture(scope="session")
def brokers(testbed: Testbed) -> Brokers:
    """RabbitMQ and Kafka on 127.0.0.1 (testbed.brokers), started on the session's bed the
    first time a test asks and stopped with it; their PREVIEW_ENV_RABBITMQ_* and
    PREVIEW_ENV_KAFKA_* variables are in os.environ from then on."""
    started = testbed.start_brokers()
    os.environ.update(started.environment())
    return started


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.failed and _BED:
        report.sections.append(("test bed logs (last lines)", _BED[0].logs_summary()))
    return report
