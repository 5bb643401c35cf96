"""
- ``docker_storage.grown``: Docker's LVM storage uses all of its disk, grown online after the
  disk grew (salt/_modules/docker_storage.py); a no-op when nothing grew; a shrunk disk fails.
- ``docker_storage.moved_into``: move a directory's content onto the Docker volume once,
  before that volume is bind-mounted over it (containerd's root; salt/docker/containerd.sls).
"""

import os

__virtualname__ = "docker_storage"


def __virtual__():
    return __virtualname__


def grown(name, volume_group, logical_volume, mode="overlay2", extents="100%FREE", **kwargs):
    """
    ``name``: the Docker disk (block device). ``kwargs``: ``filesystem``, ``mountpoint``
    (overlay2).

    .. code-block:: yaml

        docker-storage-grown:
          docker_storage.grown:
            - name: /dev/nvme1n1
            - volume_group: docker_vol
            - logical_volume: docker
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    module = __salt__
    try:
        steps = module["docker_storage.pending"](name, volume_group, logical_volume, mode, extents)[
            "steps"
        ]
        if not steps:
            ret["comment"] = f"{volume_group}/{logical_volume} already uses all of {name}"
            return ret
        if __opts__["test"]:
            ret.update(result=None, comment=f"would grow: {', '.join(steps)}")
            return ret
        done = module["docker_storage.grow"](
            name, volume_group, logical_volume, mode=mode, extents=extents, **kwargs
        )
    except Exception as error:  # a probe or a step failed: say which, change nothing more
        ret.update(result=False, comment=str(error))
        return ret
    if not done["steps"]:
        ret["comment"] = f"{volume_group}/{logical_volume} already uses all of {name}"
        return ret
    after = module["docker_storage.sizes"](name, volume_group, logical_volume)
    ret["changes"] = {
        "steps": done["steps"],
        "lv_bytes": {"old": done["before"]["lv"], "new": after["lv"]},
    }
    ret["comment"] = f"grew {volume_group}/{logical_volume} online: {', '.join(done['steps'])}"
    return ret


def _mountpoint_device(path):
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 1 and fields[1] == path:
                return fields[0]
    return None


def moved_into(name, target, services=("docker.socket", "docker", "containerd")):
    """
    Before ``target`` (a directory on the Docker volume) is bind-mounted at ``name``, move
    what ``name`` holds into it once, with ``services`` stopped. Never deletes; refuses when
    ``target`` already holds something (a second copy would hide one of them).
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    if _mountpoint_device(name) is not None:
        ret["comment"] = f"{name} is already a mountpoint"
        return ret
    entries = sorted(os.listdir(name)) if os.path.isdir(name) else []
    if not entries:
        ret["comment"] = f"{name} is empty: nothing to move"
        return ret
    if os.listdir(target):
        ret.update(result=False, comment=f"{target} is not empty: not moving {name} into it")
        return ret
    if __opts__["test"]:
        ret.update(result=None, comment=f"{len(entries)} entries of {name} would move")
        return ret
    for unit in services:
        if __salt__["service.available"](unit) and __salt__["service.status"](unit):
            __salt__["service.stop"](unit)
    moved = __salt__["cmd.run_all"](
        ["mv", "--", *(os.path.join(name, entry) for entry in entries), target],
        python_shell=False,
    )
    if moved["retcode"] != 0:
        ret.update(result=False, comment=f"moving {name} failed: {moved['stderr'].strip()}")
        return ret
    ret["changes"] = {"moved": entries, "to": target}
    ret["comment"] = f"moved {len(entries)} entries of {name} into {target}"
    return ret
