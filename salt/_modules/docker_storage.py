"""
Growing Docker's LVM storage online after its disk grew (EBS ModifyVolume, or qemu's
block_resize in the VM tier): PV -> LV -> filesystem (overlay2) or PV -> thin pool
(devicemapper). Nothing is stopped; a disk smaller than its PV is refused.

- ``sizes``: what LVM and the kernel say (bytes).
- ``plan``: pure: the steps that would grow the storage, or an error for a shrunk disk.
- ``pending`` / ``grow``: those steps for this node now / run them (argument lists, no shell).
"""

from salt.exceptions import CommandExecutionError

__virtualname__ = "docker_storage"


def __virtual__():
    return __virtualname__


def _run(argv):
    result = __salt__["cmd.run_all"](argv, python_shell=False)
    if result["retcode"] != 0:
        raise CommandExecutionError(
            f"{' '.join(argv)} failed: {(result['stderr'] or result['stdout']).strip()}"
        )
    return result["stdout"]


def _bytes(argv):
    """The single whole number an LVM reporting command printed (--units b --nosuffix)."""
    text = _run(argv).strip()
    try:
        return int(float(text))
    except ValueError:
        raise CommandExecutionError(f"{' '.join(argv)}: no size in {text!r}") from None


def sizes(device, volume_group, logical_volume):
    """
    Sizes in bytes: the disk (kernel), its PV, the VG's extent size and free space, the LV.

    CLI Example: ``salt '*' docker_storage.sizes /dev/nvme1n1 docker_vol docker``
    """
    report = ["--noheadings", "--units", "b", "--nosuffix", "-o"]
    return {
        "disk": _bytes(["blockdev", "--getsize64", device]),
        "pv": _bytes(["pvs", *report, "pv_size", device]),
        "extent": _bytes(["vgs", *report, "vg_extent_size", volume_group]),
        "vg_free": _bytes(["vgs", *report, "vg_free", volume_group]),
        "lv": _bytes(["lvs", *report, "lv_size", f"{volume_group}/{logical_volume}"]),
    }


def plan(found, mode, grow_lv=True):
    """
    Pure: the steps (``pvresize``, ``lvextend``, ``growfs``) that grow storage of ``mode``
    to what ``found`` (``sizes``) shows. A disk smaller than its PV raises.
    """
    extent = found["extent"]
    metadata_reserve = 2 * extent  # LVM's own metadata area: a disk is never all PV
    if found["disk"] < found["pv"]:
        raise CommandExecutionError(
            f"the disk ({found['disk']} bytes) is smaller than its LVM physical volume "
            f"({found['pv']} bytes): it shrank; refusing (shrinking is not supported)"
        )
    steps = []
    vg_free = found["vg_free"]
    if found["disk"] - found["pv"] >= extent + metadata_reserve:
        steps.append("pvresize")
        vg_free += found["disk"] - found["pv"] - metadata_reserve
    if grow_lv and vg_free >= extent:
        steps.append("lvextend")
        if mode == "overlay2":
            steps.append("growfs")
    return steps


def _grow_filesystem(filesystem, lv_path, mountpoint):
    if filesystem == "xfs":
        _run(["xfs_growfs", mountpoint])
    elif filesystem == "ext4":
        _run(["resize2fs", lv_path])
    else:
        raise CommandExecutionError(f"cannot grow a {filesystem} filesystem online")


def pending(device, volume_group, logical_volume, mode="overlay2", extents="100%FREE"):
    """
    ``{"steps": [...], "before": sizes}``: what ``grow`` would do now (no steps: nothing grew).
    ``extents``: what the LV was created with: ``100%FREE`` (overlay2) takes all free space,
    ``N%VG`` (the devicemapper thin pool) grows to N% of the grown VG.

    CLI Example: ``salt '*' docker_storage.pending /dev/nvme1n1 docker_vol docker``
    """
    found = sizes(device, volume_group, logical_volume)
    return {"steps": plan(found, mode, grow_lv=_lv_may_grow(found, extents)), "before": found}


def grow(device, volume_group, logical_volume, *, mode="overlay2", extents="100%FREE", **fs):
    """
    Grow the storage if its disk grew; returns ``pending``'s answer with the steps taken.
    ``fs``: ``filesystem`` (xfs, ext4) and ``mountpoint`` of the overlay2 LV.

    CLI Example: ``salt '*' docker_storage.grow /dev/nvme1n1 docker_vol docker``
    """
    todo = pending(device, volume_group, logical_volume, mode, extents)
    lv = f"{volume_group}/{logical_volume}"
    for step in todo["steps"]:
        if step == "pvresize":
            _run(["pvresize", device])
        elif step == "lvextend":
            target = "+100%FREE" if extents.upper().endswith("%FREE") else extents
            _run(["lvextend", "-l", target, lv])
        elif step == "growfs":
            _grow_filesystem(
                fs.get("filesystem", "xfs"), f"/dev/{lv}", fs.get("mountpoint", "/var/lib/docker")
            )
    return todo


def _lv_may_grow(found, extents):
    """100%FREE: any free space; N%VG: only when N% of the VG is more than the LV has."""
    if extents.upper().endswith("%FREE"):
        return True
    if extents.upper().endswith("%VG"):
        share = float(extents[:-3]) / 100
        vg_size = found["disk"]  # an upper bound; lvextend refuses a target below the LV
        return share * vg_size - found["lv"] >= found["extent"]
    return False
