"""Every mirrord config under examples/ loads: the demos and the README point users at them."""

from __future__ import annotations

from pathlib import Path

import pytest

from preview_stack import config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONFIGS = sorted(EXAMPLES.rglob("mirrord.json"))


def test_there_are_example_configs() -> None:
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_config_loads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREVIEW_ENV_POSTGRES_IMAGE", raising=False)
    loaded = config.load(path, {"key": "pr-7"})
    if path.parent.name == "db":  # the branch image falls back to the official one
        assert [b.image for b in loaded.feature.db_branches] == ["postgres:16"]
