"""
``docker_storage.grown``: Docker's LVM storage uses all of its disk, grown online after the disk
grew (salt/_modules/docker_storage.py); a no-op when nothing grew; a shrunk disk fails.
"""

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
