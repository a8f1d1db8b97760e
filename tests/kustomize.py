"""A small kustomize renderer for ``deploy/kubernetes`` (no kubectl or kustomize binary needed).

It implements exactly the kustomization fields those files use, with kustomize's semantics:
``resources`` (files, and directories holding a ``kustomization.yaml``, rendered recursively),
``namespace`` (set on every namespaced resource), ``labels`` (``pairs`` added to
``metadata.labels`` only: kustomize's default ``includeSelectors: false``,
``includeTemplates: false``), ``images`` (``newName``/``newTag`` for containers whose image name
matches), ``replicas`` (``spec.replicas`` by name) and ``patches`` given by ``path`` (strategic
merge patches matched by kind and name: maps merge, ``null`` deletes a key, the lists
``containers``, ``initContainers``, ``env``, ``volumes``, ``ports`` and ``volumeMounts`` merge
by their Kubernetes merge keys, other lists are replaced). Any other field is refused, so a
kustomization that grows past this renderer fails loudly instead of rendering wrongly.
``tests/test_kubernetes.py`` also compares its output with ``kubectl kustomize`` where that
binary exists.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CLUSTER_SCOPED", "render"]

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "replicas",
             "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "CustomResourceDefinition", "IngressClass"}
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "ports": "containerPort", "volumeMounts": "mountPath"}
Resource = dict[str, Any]


def _load(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _merge(base: Any, patch: Any, field: str | None = None) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = _merge(out[key], value, key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    key = MERGE_KEYS.get(field or "")
    if key and isinstance(base, list) and isinstance(patch, list):
        merged = [copy.deepcopy(item) for item in base]
        for item in patch:
            for i, existing in enumerate(merged):
                if existing.get(key) == item.get(key):
                    merged[i] = _merge(existing, item)
                    break
            else:
                merged.append(copy.deepcopy(item))
        return merged
    return copy.deepcopy(patch)


def _pod_spec(resource: Resource) -> dict[str, Any] | None:
    spec = resource.get("spec") or {}
    if resource["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    template = spec.get("template")
    return template.get("spec") if isinstance(template, dict) else None


def _set_image(resource: Resource, rule: dict[str, Any]) -> None:
    pod = _pod_spec(resource)
    for container in (pod or {}).get("containers", []) + (pod or {}).get("initContainers", []):
        name, _, tag = container["image"].partition(":")
        if name == rule["name"]:
            container["image"] = f"{rule.get('newName', name)}:{rule.get('newTag', tag)}"


def _resources(directory: Path, entries: list[str]) -> list[Resource]:
    out: list[Resource] = []
    for entry in entries:
        path = (directory / entry).resolve()
        out.extend(render(path) if path.is_dir() else _load(path))
    return out


def _apply(kust: dict[str, Any], directory: Path, resources: list[Resource]) -> None:
    for pairs in (rule["pairs"] for rule in kust.get("labels", [])):
        for r in resources:
            r.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    for patch_ref in kust.get("patches", []):
        for patch in _load(directory / patch_ref["path"]):
            targets = [r for r in resources if r["kind"] == patch["kind"]
                       and r["metadata"]["name"] == patch["metadata"]["name"]]
            if len(targets) != 1:
                raise ValueError(f"patch of {patch['kind']}/{patch['metadata']['name']} matches "
                                 f"{len(targets)} resources")
            merged = _merge(targets[0], patch)
            targets[0].clear()
            targets[0].update(merged)
    for rule in kust.get("replicas", []):
        for r in resources:
            if r["metadata"]["name"] == rule["name"] and r["kind"] in (
                    "Deployment", "StatefulSet", "ReplicaSet"):
                r["spec"]["replicas"] = rule["count"]
    for rule in kust.get("images", []):
        for r in resources:
            _set_image(r, rule)
    if "namespace" in kust:
        for r in resources:
            if r["kind"] not in CLUSTER_SCOPED:
                r["metadata"]["namespace"] = kust["namespace"]


def render(directory: Path) -> list[Resource]:
    """The resources ``directory/kustomization.yaml`` produces (see the module notes)."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kust) - SUPPORTED
    if unknown:
        raise ValueError(f"{directory}: kustomization fields not supported: {sorted(unknown)}")
    resources = _resources(directory, kust.get("resources", []))
    _apply(kust, directory, resources)
    return resources
