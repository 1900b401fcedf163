"""Parsing and templating the mirrord config (no cluster, no Pulumi)."""

from __future__ import annotations

from pathlib import Path

import pytest

from preview_stack import config
from preview_stack.errors import BadInput


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_json_with_target_object_and_template(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.json",
        """{
      "target": {"path": "deployment/users/container/app", "namespace": "staging"},
      "feature": {
        "preview": {"image": "ghcr.io/acme/users:{{ key }}", "ttl_mins": 90, "replicas": 2},
        "env": {"include": ["DB_*"], "override": {"MODE": "preview-{{key}}"}},
        "network": {"incoming": {"mode": "steal", "ports": [8080],
          "http_filter": {"header_filter": "^baggage: .*mirrord-session={{ key }}.*"}}}
      }
    }""",
    )
    parsed = config.load(path, {"key": "pr-42", "git_branch": "main"})
    assert parsed.target.path is not None
    assert (parsed.target.path.kind, parsed.target.path.name, parsed.target.path.container) == (
        "deployment",
        "users",
        "app",
    )
    assert parsed.target.namespace == "staging"
    assert parsed.feature.preview.image == "ghcr.io/acme/users:pr-42"
    assert parsed.feature.preview.ttl_seconds() == 5400
    assert parsed.feature.env.override == {"MODE": "preview-pr-42"}
    incoming = parsed.feature.network.incoming
    assert incoming is not None and incoming.mode == "steal" and incoming.ports == [8080]
    assert incoming.http_filter.header_filter == "^baggage: .*mirrord-session=pr-42.*"


def test_yaml_and_toml_and_string_target(tmp_path: Path) -> None:
    y = config.load(
        write(
            tmp_path,
            "m.yaml",
            "target: statefulset/db\nfeature:\n  preview:\n    ttl_secs: infinite\n",
        ),
        {"key": "k"},
    )
    assert y.target.path is not None and y.target.path.kind == "statefulset"
    assert y.feature.preview.ttl_seconds() is None
    t = config.load(
        write(tmp_path, "m.toml", 'target = "rollout/web"\n[feature.preview]\nttl_secs = 30\n'),
        {"key": "k"},
    )
    assert t.target.path is not None and t.target.path.kind == "rollout"
    assert t.feature.preview.ttl_seconds() == 30


def test_defaults_without_ttl() -> None:
    parsed = config.MirrordConfig()
    assert parsed.target.path is None
    assert parsed.feature.preview.ttl_seconds() == "default"
    assert parsed.feature.preview.creation_timeout_secs == 60
    assert parsed.feature.preview.replicas == 1


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        pytest.param(
            "bad.json",
            '{"target": "deployment/x",\n  "feature": }',
            "bad.json:2:14: invalid JSON",
            id="json-syntax-line-col",
        ),
        pytest.param(
            "bad.yaml", "target: [unclosed\n", "bad.yaml:2:1: invalid YAML", id="yaml-syntax"
        ),
        pytest.param("bad.toml", "target = \n", "invalid TOML", id="toml-syntax"),
        pytest.param(
            "kind.json",
            '{"target": "daemonset/x"}',
            "target.path: unknown target kind 'daemonset'",
            id="unknown-kind",
        ),
        pytest.param(
            "both.json",
            '{"feature": {"preview": {"ttl_mins": 1, "ttl_secs": 5}}}',
            "feature.preview: set either ttl_mins or ttl_secs, not both",
            id="both-ttls",
        ),
        pytest.param(
            "type.json",
            '{"feature": {"preview": {"replicas": "many"}}}',
            "feature.preview.replicas:",
            id="wrong-type-path",
        ),
        pytest.param("top.json", "[1, 2]", "must be an object", id="not-an-object"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path: Path, name: str, text: str, message: str) -> None:
    with pytest.raises(BadInput) as error:
        config.load(write(tmp_path, name, text), {"key": "k"})
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="not found; pass -f/--config-file"):
        config.load(tmp_path / "nope.json", {"key": "k"})


def test_unknown_template_variable(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"unknown template variable \{\{ user \}\}"):
        config.load(write(tmp_path, "m.json", '{"key": "{{ user }}"}'), {"key": "k"})


def test_ignored_fields_are_listed_not_refused(tmp_path: Path) -> None:
    parsed = config.load(
        write(
            tmp_path,
            "m.json",
            """{
      "target": "deployment/x", "agent": {"ttl": 5},
      "feature": {"fs": "local", "network": {"dns": false}}}""",
        ),
        {"key": "k"},
    )
    assert config.ignored_fields(parsed) == ["agent", "feature.fs", "feature.network.dns"]


def test_declared_key_is_read_before_rendering(tmp_path: Path) -> None:
    path = write(
        tmp_path, "m.json", '{"key": "team-a", "feature": {"preview": {"image": "x:{{ key }}"}}}'
    )
    assert config.declared_key(path) == "team-a"


def test_declared_key_survives_templates_that_break_the_raw_document(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", "feature:\n  preview:\n    image: acme/search:{{ key }}\n")
    assert config.declared_key(path) is None
    assert config.load(path, {"key": "k1"}).feature.preview.image == "acme/search:k1"
