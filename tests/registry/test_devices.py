"""Devices: enrolment and tokens; assignment from aliases with a sticky canary share."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from sqlmodel import select

from edgefleet.wire import AliasMove, EnrollRequest
from registry.aliases import set_alias
from registry.assignment import assign, bucket, check_download, in_canary
from registry.db import session_scope
from registry.devices import (
    authenticate,
    enroll,
    get_device,
    hash_token,
    list_devices,
    revoke_device,
    touch,
    update_device,
)
from registry.errors import (
    AlreadyExistsError,
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
)
from registry.models import Device, DeviceUpdate
from registry.store import ArtifactStore
from registry.versions import get_version
from tests.registry.support import PlanFiles, create_model, model_with_versions


def enrol(engine: Engine, device_id: str | None = None, **kw: object) -> tuple[str, str]:
    with session_scope(engine, write=True) as s:
        device, token = enroll(
            s,
            EnrollRequest(enrollment_token="x", device_id=device_id, **kw),  # type: ignore[arg-type]
        )
        return device.id, token


def test_enrol_stores_only_the_token_hash(engine: Engine) -> None:
    _, token = enrol(engine, "pi-1", labels={"site": "a"}, hardware={"cpu": "arm64"})
    assert token.startswith("efd_") and len(token) > 40
    with session_scope(engine) as s:
        row = s.exec(select(Device)).one()
        assert row.token_hash == hash_token(token) and token not in str(row.model_dump())
        assert authenticate(s, token).id == "pi-1"
        for bad in ("", "efd_" + "A" * 43, token[:-1], "Bearer " + token, "x" * 1000):
            with pytest.raises(AuthenticationError):
                authenticate(s, bad)
    generated, _ = enrol(engine)
    assert generated.startswith("dev-")


def test_enrolling_a_taken_id_is_refused_and_changes_nothing(engine: Engine) -> None:
    _, token = enrol(engine, "pi-1", labels={"site": "a"})
    with pytest.raises(AlreadyExistsError, match="already enrolled"):
        enrol(engine, "pi-1", labels={"site": "evil"})
    with session_scope(engine) as s:
        device = authenticate(s, token)
        assert device.id == "pi-1" and device.labels == {"site": "a"}


def enrol_again(engine: Engine, device_id: str, **kw: object) -> str:
    with session_scope(engine, write=True) as s:
        request = EnrollRequest(enrollment_token="x", device_id=device_id, **kw)  # type: ignore[arg-type]
        return enroll(s, request, replace=True)[1]


def test_replacing_rotates_keeps_labels_and_revoke_invalidates(engine: Engine) -> None:
    _, old = enrol(engine, "pi-1", labels={"site": "a"}, hardware={"cpu": "arm64"})
    new = enrol_again(engine, "pi-1")
    with session_scope(engine, write=True) as s:
        with pytest.raises(AuthenticationError):
            authenticate(s, old)
        device = authenticate(s, new)
        assert device.labels == {"site": "a"} and device.hardware == {"cpu": "arm64"}
    newer = enrol_again(engine, "pi-1", labels={"site": "b"})
    with session_scope(engine, write=True) as s:
        assert authenticate(s, newer).labels == {"site": "b"}
        revoke_device(s, "pi-1")
    with session_scope(engine) as s:
        with pytest.raises(AuthenticationError):
            authenticate(s, newer)
        page = list_devices(s)
        assert page.total == 1 and page.items[0].revoked


@pytest.fixture
def fleet(engine: Engine, store: ArtifactStore, plan_files: PlanFiles) -> Engine:
    return model_with_versions(engine, store, plan_files, seeds=(5,))


def test_assignment_follows_production_then_a_sticky_canary(fleet: Engine) -> None:
    engine = fleet
    ids = [f"dev-{i:03d}" for i in range(200)]
    with session_scope(engine, write=True) as s:
        for device_id in ids:
            enroll(s, EnrollRequest(enrollment_token="x", device_id=device_id, model="digits"))
    with session_scope(engine) as s, pytest.raises(NotFoundError, match="no production"):
        assign(s, get_device(s, ids[0]))
    with session_scope(engine, write=True) as s:
        set_alias(s, "digits", "production", AliasMove(version=1), actor="t")
        set_alias(s, "digits", "canary", AliasMove(version=2, rollout_percent=25), actor="t")

    def chosen() -> dict[str, int]:
        with session_scope(engine) as s:
            return {d: assign(s, get_device(s, d)).version.number for d in ids}

    first = chosen()
    assert first == chosen()  # sticky
    in_canary_now = {d for d, v in first.items() if v == 2}
    assert 25 <= len(in_canary_now) <= 75  # ~25% of 200
    with session_scope(engine, write=True) as s:
        set_alias(s, "digits", "canary", AliasMove(version=2, rollout_percent=60), actor="t")
    widened = {d for d, v in chosen().items() if v == 2}
    assert in_canary_now < widened  # raising the share only adds devices
    with session_scope(engine, write=True) as s:
        set_alias(s, "digits", "canary", AliasMove(version=2, rollout_percent=0), actor="t")
    assert set(chosen().values()) == {1}


def test_bucket_is_uniform_and_salted() -> None:
    values = [bucket(f"d{i}", "m", "salt") for i in range(4000)]
    assert all(0 <= v < 100 for v in values)
    assert 0.45 < sum(v < 50 for v in values) / len(values) < 0.55
    assert values != [bucket(f"d{i}", "m", "other") for i in range(4000)]
    assert not in_canary("d", "m", "s", None) and not in_canary("d", "m", "s", 0)
    assert in_canary("d", "m", "s", 100)


def test_model_choice_and_download_scope(fleet: Engine) -> None:
    engine = fleet
    enrol(engine, "a")  # no model chosen
    with session_scope(engine, write=True) as s:
        set_alias(s, "digits", "production", AliasMove(version=1), actor="t")
    with session_scope(engine, write=True) as s:
        device = get_device(s, "a")
        choice = assign(s, device)  # the only model in production
        assert (choice.model.name, choice.version.number, choice.alias) == (
            "digits",
            1,
            "production",
        )
        check_download(s, device, choice.model, choice.version)
        v2 = get_version(s, "digits", 2)
        with pytest.raises(PermissionDeniedError, match="not assigned"):
            check_download(s, device, choice.model, v2)
        touch(s, device, assigned_version_id=choice.version.id)
    # the alias moves: the version handed out last stays readable, and so does the new one
    with session_scope(engine, write=True) as s:
        set_alias(s, "digits", "production", AliasMove(version=2), actor="t")
    with session_scope(engine) as s:
        device = get_device(s, "a")
        m = assign(s, device).model
        check_download(s, device, m, get_version(s, "digits", 1))
        check_download(s, device, m, get_version(s, "digits", 2))
    create_model(engine, "other")
    with session_scope(engine, write=True) as s:
        update_device(s, "a", DeviceUpdate(model="other"))
        with pytest.raises(NotFoundError, match="no production"):
            assign(s, get_device(s, "a"))
        assert assign(s, get_device(s, "a"), "digits").version.number == 2
        with pytest.raises(NotFoundError):
            update_device(s, "a", DeviceUpdate(model="missing"))
        assert list_devices(s, model="other").total == 1


def test_touch_throttles_last_seen(engine: Engine) -> None:
    enrol(engine, "a")
    with session_scope(engine, write=True) as s:
        device = get_device(s, "a")
        assert not touch(s, device)  # just enrolled
        from datetime import timedelta

        assert touch(s, device, min_interval=timedelta(0))
