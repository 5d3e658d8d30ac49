"""What `GET /v1/models` reports: each registered model's versions from the registry, joined with what this
process has loaded (state, live latency / error / score / shadow-agreement window for comparing a canary with
production), each version's latest golden-set quality-gate decision and its latest automatic canary decision
(`canary.py`: rolled back, promoted, promotion refused), and the version this process shadows."""

from __future__ import annotations

from instaseg.serving.config import ServingConfig
from instaseg.serving.deployments import DeploymentManager
from instaseg.serving.errors import NotFound
from instaseg.serving.registry import ModelRegistry

__all__ = ["list_models"]


def list_models(
    registry: ModelRegistry, deployments: DeploymentManager, config: ServingConfig, name: str | None = None
) -> list[dict]:
    """`schemas.ModelOut` dicts for every registered model, or for `name` only (`NotFound` if unknown)."""
    registered = registry.names()
    if name is not None and name not in registered:
        # Not the registry's own message: that names its folder, which clients have no business knowing.
        raise NotFound(f"no model named {name!r}; registered: {registered or 'none'}", "unknown_model")
    return [_model(registry, deployments, config, n) for n in ([name] if name is not None else registered)]


def _model(registry: ModelRegistry, deployments: DeploymentManager, config: ServingConfig, name: str) -> dict:
    deployment = registry.deployment(name)
    states = deployments.states()
    active = deployments.active().get(name)
    loaded = {}
    if active is not None:
        loaded = {
            served.version: served
            for served in (active.production, active.canary, active.shadow)
            if served is not None
        }
    gates = registry.quality_gates(name)
    canary_decisions = registry.canary_decisions(name)
    versions = []
    for entry in registry.versions(name):
        if entry.version == deployment.production:
            role = "production"
        elif entry.version == deployment.canary:
            role = "canary"
        else:
            role = "inactive"
        served = loaded.get(entry.version)
        versions.append(
            {
                "version": entry.version,
                "role": role,
                "state": "serving" if served is not None else states.get(entry.key, "not_loaded"),
                "categories": entry.classes,
                "classes": entry.classes,  # the old name of "categories", kept for one release
                "architecture": entry.model_info,
                "has_drift_reference": entry.reference is not None,
                "description": entry.description,
                "created_at": entry.created_at,
                "sha256": entry.sha256,
                "live": served.summary.summary() if served is not None else None,
                "quality_gate": gates.get(entry.version),
                "canary_decision": canary_decisions.get(entry.version),
            }
        )
    limits = config.limits
    return {
        "name": name,
        "production_version": deployment.production,
        "canary_version": deployment.canary,
        "canary_share": deployment.canary_share,
        "shadow_version": active.shadow.version if active is not None and active.shadow is not None else None,
        "input_limits": {
            "max_body_bytes": limits.max_body_bytes,
            "max_image_pixels": limits.max_image_pixels,
            "max_batch_images": limits.max_batch_images,
            "formats": list(limits.allowed_formats),
        },
        "versions": versions,
    }
