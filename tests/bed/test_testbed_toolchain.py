"""The toolchain's components: what a demo builds is the bed, what the tests build is all."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from testbed import toolchain
from tests.support.paths import REPO


def test_make_demo_builds_the_bed_components_only() -> None:
    makefile = (REPO / "Makefile").read_text()
    listed = re.search(r"^BED_COMPONENTS := (.+)$", makefile, re.M)
    assert listed is not None
    assert tuple(listed.group(1).split()) == toolchain.BED
    build = (REPO / "scripts" / "toolchain" / "build.sh").read_text()
    every = re.search(r"^ALL=\((.+)\)$", build, re.M)
    assert every is not None
    assert sorted(every.group(1).split()) == sorted(toolchain.ALL)
    assert not set(toolchain.BED) & {"seaweedfs", "actionlint", "traefik", "kafka"}


def test_missing_is_per_component(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREVIEW_ENV_CACHE", str(tmp_path))
    tc = toolchain.locate()
    assert tc.missing(("seaweedfs",)) == [tc.weed]
    assert tc.kubectl in tc.missing(toolchain.BED) and tc.weed not in tc.missing(toolchain.BED)


def test_kafka_jars_are_a_tests_only_component(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREVIEW_ENV_CACHE", str(tmp_path))
    tc = toolchain.locate()
    assert "kafka" in toolchain.TESTS_ONLY
    assert tc.missing(("kafka",)) == [tc.kafka_jar]
    assert tc.kafka_jar == tmp_path / f"kafka-{tc.kafka_version}" / "libs" / (
        f"kafka_2.13-{tc.kafka_version}.jar"
    )
    assert tc.kafka_jar not in tc.missing(toolchain.BED)
