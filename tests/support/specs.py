"""Environment specs and a target workload for the pure derivation tests."""

from __future__ import annotations

from typing import Any

from preview_stack.config import TargetPath
from preview_stack.spec import EnvironmentSpec, ServiceSpec

# Deployment users in staging: an init container, a sidecar, env, envFrom, a probe, a volume.
TARGET: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "users", "namespace": "staging", "labels": {"app": "users"}},
    "spec": {
        "replicas": 3,
        "selector": {"matchLabels": {"app": "users"}},
        "template": {
            "metadata": {
                "labels": {"app": "users", "tier": "backend", "team": "a"},
                "annotations": {"prometheus.io/scrape": "true"},
            },
            "spec": {
                "serviceAccountName": "users",
                "imagePullSecrets": [{"name": "regcred"}],
                "initContainers": [{"name": "migrate", "image": "users:1"}],
                "containers": [
                    {
                        "name": "app",
                        "image": "users:1",
                        "env": [
                            {"name": "DB_URL", "value": "pg"},
                            {"name": "SECRET_X", "value": "s"},
                            {"name": "MODE", "value": "staging"},
                        ],
                        "envFrom": [{"configMapRef": {"name": "users-config"}}],
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                    },
                    {"name": "proxy", "image": "envoy:1", "env": [{"name": "X", "value": "1"}]},
                ],
                "volumes": [{"name": "cfg", "configMap": {"name": "users-config"}}],
            },
        },
    },
}


def env_with(*services: ServiceSpec) -> EnvironmentSpec:
    """Environment pr-42, one hour long, holding these services."""
    return EnvironmentSpec(
        key="pr-42",
        owner="me",
        created_at="2026-01-01T00:00:00Z",
        expires_at="2026-01-01T01:00:00Z",
        ttl_seconds=3600,
        services=list(services),
    )


def service(**changes: Any) -> ServiceSpec:
    """deployment/users in staging with image users:pr-42, but for `changes`."""
    base: dict[str, Any] = {
        "target": TargetPath.parse("deployment/users"),
        "namespace": "staging",
        "image": "users:pr-42",
    }
    return ServiceSpec(**{**base, **changes})
