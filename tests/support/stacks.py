"""The environment stacks a Pulumi backend holds, asked of Pulumi itself (the authority)."""

from __future__ import annotations

from pulumi import automation as auto

from preview_stack import naming


def stack_names(env_vars: dict[str, str] | None = None) -> set[str]:
    """Stack names in the backend of the environment (or of `env_vars`)."""
    ws = auto.LocalWorkspace(
        env_vars=env_vars,
        project_settings=auto.ProjectSettings(name=naming.PROJECT, runtime="python"),
    )
    return {s.name for s in ws.list_stacks()}
