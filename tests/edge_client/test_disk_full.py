"""A genuinely full filesystem (ENOSPC): the agent runs in a child process whose data directory
is a small tmpfs mounted in its own user and mount namespace (``unshare -Urm``; no privileges
needed where unprivileged user namespaces are enabled, skipped elsewhere). The in-process
``RLIMIT_FSIZE`` tests in ``test_models.py`` and ``test_integration.py`` cover the same path with
``EFBIG`` everywhere."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.edge_client.conftest import MODEL
from tests.edge_client.stub_server import StubServer

_CHILD = r"""
import json, os, sys
from pathlib import Path
from edge_client.agent import Agent
from edge_client.credentials import Credentials
from edge_client.errors import DiskFullError
from edgefleet.wire import SigningKeyInfo
from tests.edge_client.conftest import fast_settings

data, url, plan_dir = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
key = SigningKeyInfo.model_validate_json(sys.argv[4])
creds = Credentials(server_url=url, device_id="dev-1", device_token="device-token",
                    signing_key=key)
out = {}
with Agent(fast_settings(data / "agent"), credentials=creds) as agent:
    agent.models.install_dir(plan_dir, "digits-mlp", 1)
    pointer = (agent.settings.models_dir / "active.json").read_bytes()
    st = os.statvfs(data)
    with open(data / "filler", "wb") as f:  # leave 16 KiB: less than any artifact
        f.write(b"\0" * (st.f_bavail * st.f_frsize - 16 * 1024))
    try:
        agent.poll()
        out["error"] = None
    except DiskFullError as exc:
        out["error"] = str(exc)
    out["active"] = agent.models.active.info.version if agent.models.active else None
    out["pointer_same"] = (agent.settings.models_dir / "active.json").read_bytes() == pointer
    out["leftovers"] = [str(p) for p in agent.settings.models_dir.rglob("*")
                        if ".staging" in str(p) or p.suffix in (".part", ".tmp")]
    out["serves"] = agent.predict([0.0] * 64).path
print(json.dumps(out))
"""


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or not Path("/proc/self/ns/user").exists():
        return False
    probe = subprocess.run(["unshare", "-Urm", "true"], capture_output=True, timeout=10,
                           check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="no unprivileged user/mount namespaces here")
def test_enospc_while_updating(tmp_path: Path, published: StubServer,
                               digits_plan_dir: Path) -> None:
    published.assign(MODEL, 2)
    mount = tmp_path / "small"
    mount.mkdir()
    repo = Path(__file__).resolve().parents[2]
    script = (f"mount -t tmpfs -o size=1m tmpfs {mount} && "
              f"exec {sys.executable} -c \"$0\" {mount} {published.url} {digits_plan_dir} "
              "\"$1\"")
    key = published.signing_key.model_dump_json()
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c", script, _CHILD, key], cwd=repo,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] is not None and "disk full" in out["error"]
    assert "No space left on device" in out["error"]
    assert out["active"] == 1 and out["pointer_same"] is True
    assert out["leftovers"] == []
    assert out["serves"] == "local"
