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
    assert str(error.value).count(name) == 1


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


# Templating is Tera-compatible (mirrord renders the same file with Tera), and a value is
# always data: it is put into the parsed document, never into the text.
HOSTILE = [
    'x", "target": "deployment/admin',
    "x\ntarget: deployment/admin",
    'x"""\ntarget = "deployment/admin"\n#',
    "x]\n[target]\npath = 'deployment/admin'",
    "x} # : ' \"",
]


@pytest.mark.parametrize("branch", HOSTILE)
@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("m.json", '{"target": "deployment/users", "key": "{{ git_branch }}"}'),
        ("m.yaml", "target: deployment/users\nkey: {{ git_branch }}\n"),
        ("m.yml", "target: deployment/users\nkey: '{{ git_branch }}'\n"),
        ("m.toml", 'target = "deployment/users"\nkey = "{{ git_branch }}"\n'),
        ("n.toml", "target = \"deployment/users\"\nkey = '''{{ git_branch }}'''\n"),
        ("o.toml", 'target = "deployment/users"\nkey = """{{ git_branch }}"""\n'),
    ],
)
def test_hostile_values_cannot_change_the_shape(
    tmp_path: Path, name: str, text: str, branch: str
) -> None:
    parsed = config.load(write(tmp_path, name, text), {"key": "k", "git_branch": branch})
    assert parsed.key == branch
    assert str(parsed.target.path) == "deployment/users"
    assert config.ignored_fields(parsed) == []


def test_hostile_value_as_key_and_in_list(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        "feature:\n  env:\n    include: [{{ git_branch }}, B]\n"
        "    override:\n      {{ git_branch }}: '{{ git_branch }}'\n",
    )
    branch = "a, c]\n  target: deployment/admin"
    parsed = config.load(path, {"git_branch": branch})
    assert parsed.target.path is None
    assert parsed.feature.env.include == [branch, "B"]
    assert parsed.feature.env.override == {branch: branch}


def test_bare_numeric_template_in_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path,
        "m.json",
        '{"feature": {"preview": {"ttl_mins": {{ get_env(name="TTL", default="60") }},'
        ' "replicas": {{ get_env(name="REPLICAS", default=2) }}}}}',
    )
    monkeypatch.delenv("TTL", raising=False)
    assert config.load(path, {}).feature.preview.ttl_seconds() == 3600
    assert config.load(path, {}).feature.preview.replicas == 2
    monkeypatch.setenv("TTL", "infinite")
    assert config.load(path, {}).feature.preview.ttl_seconds() is None
    monkeypatch.setenv("TTL", '1, "replicas": 20')
    with pytest.raises(BadInput, match="ttl_mins"):
        config.load(path, {})


def test_template_next_to_an_unquoted_number_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", "feature:\n  preview:\n    ttl_mins: {{ a }}_{{ b }}\n")
    with pytest.raises(BadInput, match=r"feature\.preview\.ttl_mins: .*unquoted number"):
        config.load(path, {"a": "1", "b": "2"})


def test_get_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        "key: \"{{ get_env(name='MIRRORD_TEAM') }}-{{ get_env(name='SUFFIX', default='x') }}\"\n",
    )
    monkeypatch.setenv("MIRRORD_TEAM", "blue")
    monkeypatch.delenv("SUFFIX", raising=False)
    assert config.load(path, {}).key == "blue-x"
    monkeypatch.setenv("SUFFIX", "y")
    assert config.load(path, {}).key == "blue-y"
    monkeypatch.delenv("MIRRORD_TEAM")
    with pytest.raises(BadInput, match=r"m\.yaml:1: environment variable MIRRORD_TEAM is not set"):
        config.load(path, {})


@pytest.mark.parametrize(
    ("branch", "expected"), [("feat/x", "feat-x"), ("", "main"), (None, "main")]
)
def test_default_and_replace_filters(tmp_path: Path, branch: str | None, expected: str) -> None:
    path = write(
        tmp_path,
        "m.json",
        "{\"key\": \"{{ git_branch | default(value='main') | replace(from='/', to='-') }}\"}",
    )
    variables = {} if branch is None else {"git_branch": branch}
    assert config.load(path, variables).key == expected


def test_upper_lower_trim_and_tera_if(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        "key: '{{ key | trim | upper }}-{{ key | trim | lower }}'\n"
        "{% if unknown %}target: deployment/x{% else %}target: deployment/y{% endif %}\n",
    )
    parsed = config.load(path, {"key": " Ab "})
    assert parsed.key == "AB-ab"
    assert str(parsed.target.path) == "deployment/y"


def test_unknown_variable_names_it_and_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", '{"target": "deployment/x",\n "key": "{{ user }}"}')
    with pytest.raises(BadInput) as error:
        config.load(path, {"key": "k", "git_branch": "main"})
    assert str(error.value) == (
        f"{path}:2: unknown template variable {{{{ user }}}} (known: git_branch, key)"
    )


@pytest.mark.parametrize("text", ['{"a": 1,\n "key": "{{ key }"}', '{"a": 1,\n "key": "{% if %}"}'])
def test_template_syntax_error_names_file_and_line(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "m.json", text)
    with pytest.raises(BadInput) as error:
        config.load(path, {"key": "k"})
    assert str(error.value).startswith(f"{path}:2: template syntax error: ")
    assert "\n" not in str(error.value)


def test_declared_key_with_get_env_and_placeholders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEAM", "blue")
    path = write(tmp_path, "m.json", '{"key": "team-{{ get_env(name=\'TEAM\') }}"}')
    assert config.declared_key(path) == "team-blue"
    for key in ("{{ key }}", "x-{{ key | upper }}", "{{ key | default(value='d') }}"):
        path.write_text(f'{{"key": "{key}"}}')
        assert config.declared_key(path) is None
    path.write_text('{"key": "{{ git_branch }}"}')
    assert config.declared_key(path, {"git_branch": "feat"}) == "feat"


def test_mirrord_branch_name_overrides_git_branch(monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.commands.start import git_branch

    monkeypatch.setenv("GITHUB_HEAD_REF", "pr-branch")
    monkeypatch.setenv("MIRRORD_BRANCH_NAME", "override")
    assert git_branch() == "override"
    monkeypatch.delenv("MIRRORD_BRANCH_NAME")
    assert git_branch() == "pr-branch"
