"""
States for the ``docker`` formula that Salt's own docker/mount states do not cover.

(Containers, images and registry logins: salt/_states/docker_containers.py.)

- ``data_root_moved``: before the new volume is mounted at /var/lib/docker, move what is
  there into it once (stopping Docker first); never deletes anything.
- ``storage_driver_supported``: stop on devicemapper with an Engine that no longer has it.
"""

import os
import tempfile

__virtualname__ = "docker_host"


def __virtual__():
    return __virtualname__


def data_root_moved(name, device, fstype, services=("docker.socket", "docker")):
    """
    If ``name`` (/var/lib/docker) is not yet a mountpoint and has content, stop ``services``
    (Docker must not write there meanwhile) and move that content into ``device``.
    Run before ``mount.mounted``.
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    entries, ret["comment"] = __salt__["docker_host.entries_to_move"](name)
    if not entries:
        return ret
    if __opts__["test"]:
        ret.update(result=None, comment=f"{len(entries)} entries of {name} would move to {device}")
        return ret
    __salt__["docker_host.stop_running"](services)
    staging = tempfile.mkdtemp(prefix="docker-data-root-")
    mounted = __salt__["mount.mount"](staging, device, fstype=fstype)
    if mounted is not True:
        os.rmdir(staging)
        ret.update(result=False, comment=f"cannot mount {device} on {staging}: {mounted}")
        return ret
    try:
        moved = __salt__["docker_host.move_data_root"](name, staging)
    finally:
        __salt__["mount.umount"](staging, device=device)
        os.rmdir(staging)
    ret["changes"] = {"moved": moved, "to": device}
    ret["comment"] = f"moved {len(moved)} entries of {name} into {device}"
    return ret


def storage_driver_supported(name):
    """Fail when storage driver ``name`` is not available in the installed Docker Engine."""
    version = __salt__["docker_host.engine_version"]()
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    try:
        __salt__["docker_host.check_storage_driver"](name, version)
    except Exception as error:
        ret.update(result=False, comment=str(error))
        return ret
    ret["comment"] = f"{name} works with Docker Engine {version}"
    return ret
