"""
Docker host helpers for the ``docker`` formula (the Docker volume and its storage are
docker_storage's; the pillar checks docker_settings').

- ``engine_version`` / ``check_storage_driver``: devicemapper exists only in Engine <= 24.
- ``python_sdk``: whether the minion's Python imports a usable docker SDK, and which pip
  installs into that Python (onedir: salt-pip; pip-installed Salt: its own environment).
- ``daemon_json``: daemon.json from docker:config and the storage mode.
"""

import os
import re
import shutil
import sys

from salt.exceptions import CommandExecutionError

__virtualname__ = "docker_host"

# Last Docker Engine major version that still has the devicemapper storage driver.
DEVICEMAPPER_LAST_ENGINE = 24
# docker-py 6.x/7.0 fail with requests >= 2.32 ("Not supported URL scheme http+docker").
MIN_SDK_VERSION = (7, 1)


def __virtual__():
    return __virtualname__


# --- engine version ------------------------------------------------------------------------


def parse_engine_version(text):
    """``"Docker version 20.10.24+dfsg1, build 5d6db84"`` -> ``(20, 10, 24)``."""
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text or "")
    if not match:
        raise CommandExecutionError(f"cannot read a Docker Engine version from {text!r}")
    return tuple(int(part) for part in match.groups())


def engine_version():
    """
    Installed Docker Engine version as a string, or None when dockerd is not installed.

    CLI Example: ``salt '*' docker_host.engine_version``
    """
    dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/usr/bin")
    if not dockerd:
        return None
    out = __salt__["cmd.run_stdout"]([dockerd, "--version"], python_shell=False)
    return ".".join(str(part) for part in parse_engine_version(out))


def check_storage_driver(mode, version):
    """Raise when storage ``mode`` cannot work with Engine ``version`` (None: unknown yet)."""
    if mode != "devicemapper" or version is None:
        return True
    major = parse_engine_version(str(version))[0]
    if major > DEVICEMAPPER_LAST_ENGINE:
        raise CommandExecutionError(
            f"docker:storage:mode: devicemapper was removed in Docker Engine 25; this node has "
            f"Engine {version}. Use overlay2 (docker:storage:mode: overlay2) or pin an "
            f"Engine <= {DEVICEMAPPER_LAST_ENGINE}."
        )
    return True


# --- python SDK -----------------------------------------------------------------------------


def python_sdk():
    """
    ``{"usable": bool, "version": str|None, "bin_env": str}``: ``bin_env`` is the pip for the
    minion's own Python: ``salt-pip`` on onedir (relenv) installs, the running environment
    otherwise.
    """
    try:
        import docker  # noqa: PLC0415 - probing on purpose

        version = docker.__version__
    except ImportError:
        version = None
    parts = tuple(int(part) for part in re.findall(r"\d+", version or "")[:2])
    salt_pip = os.path.join(str(getattr(sys, "RELENV", None)), "salt-pip")
    bin_env = salt_pip if hasattr(sys, "RELENV") and os.path.exists(salt_pip) else sys.executable
    return {"usable": parts >= MIN_SDK_VERSION, "version": version, "bin_env": bin_env}


def dm_path(volume_group, logical_volume):
    """/dev/mapper name of an LV (LVM doubles hyphens inside names)."""
    return f"/dev/mapper/{volume_group.replace('-', '--')}-{logical_volume.replace('-', '--')}"


def daemon_json(settings):
    """
    daemon.json content: pillar ``docker:config`` plus what the storage mode needs
    (devicemapper: Docker's direct-lvm options pointing at the thin pool).
    """
    config = dict(settings.get("config") or {})
    storage = settings.get("storage") or {}
    mode = storage.get("mode")
    if mode == "overlay2":
        # With the containerd image store on, dockerd takes storage-driver as the name of a
        # containerd snapshotter, and containerd has no "overlay2" (Engine 26: "snapshotter
        # not loaded: overlay2"): leave it to containerd's default, overlayfs.
        if (config.get("features") or {}).get("containerd-snapshotter") is not True:
            config["storage-driver"] = "overlay2"
    elif mode == "devicemapper":
        thinpool = storage["devicemapper"]["thinpool"]
        config["storage-driver"] = "devicemapper"
        config["storage-opts"] = [
            f"dm.thinpooldev={dm_path(storage['volume_group'], thinpool)}",
            "dm.use_deferred_removal=true",
            "dm.use_deferred_deletion=true",
        ]
    return config
