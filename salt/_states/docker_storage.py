"""
States for Docker's storage on the extra disk, each command an argument list (no shell).

- ``disk_checked``: the gate every other storage state requires: finds the Docker volume
  (pillar docker:storage:docker_volume, else grain ``docker_volume``) and refuses it unless
  it is blank, whole, unused and not the root disk, or already our own (half-made) volume
  group. Any probe error refuses (docker_host.disk_verdict). The volume is found and probed
  once per state run: the states after the gate take its answer from the run's context.
- ``volume_group_present``: PV (with a UUID derived from the disk, so a PV an interrupted
  run left is recognised as ours) and VG (tagged) on that disk.
- ``filesystem_present``: make a filesystem on a blank LV; refuse one holding another.
  (Salt's ``blockdev.formatted`` reformats a device whose filesystem differs, and reads a
  failed probe as "no filesystem": not for a volume holding data.)
- ``thin_pool_present``: Docker's direct-lvm thin pool (devicemapper, Engine <= 24).
- ``grown``: Docker's LVM storage uses all of its disk, grown online after the disk grew
  (salt/_modules/docker_storage.py); a no-op when nothing grew; a shrunk disk fails.
- ``moved_into``: move a directory's content onto the Docker volume once, before that volume
  is bind-mounted over it (containerd's root; salt/docker/containerd.sls).
"""

import os

__virtualname__ = "docker_storage"


def __virtual__():
    return __virtualname__


def _ret(name):
    return {"name": name, "result": True, "changes": {}, "comment": ""}


# The gate's answer, for the rest of its state run (see _volume).
CONTEXT_KEY = "docker_storage.volume"


def _volume(name, device):
    """The Docker volume and its verdict (docker_host.checked_volume), found and probed once
    per state run: by the gate, whose result the other storage states require; a state run
    without the gate (state.single) probes here. The state run's __context__ is its own (a
    copy that salt.state.State takes) and names the run by its file client."""
    run, kept = __context__.get("fileclient"), __context__.get(CONTEXT_KEY)
    if run is not None and kept and kept[0] is run and kept[1] == (name, device):
        return kept[2]
    found = __salt__["docker_host.checked_volume"](name, device)
    if run is not None:
        __context__[CONTEXT_KEY] = (run, (name, device), found)
    return found


def _run(cmd):
    """Run an argument list; raise with its stderr when it fails."""
    result = __salt__["cmd.run_all"](cmd, python_shell=False, ignore_retcode=True)
    if result["retcode"] != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {result['stderr'].strip() or result['stdout']}")
    return result["stdout"]


def disk_checked(name, device=None):
    """
    Succeed only when Docker's volume group ``name`` may live on the Docker disk.

    .. code-block:: yaml

        docker-storage-disk:
          docker_storage.disk_checked:
            - name: docker_vol
    """
    ret = _ret(name)
    try:
        found = _volume(name, device)
    except Exception as error:  # every probe failure refuses
        ret.update(result=False, comment=f"docker:storage: refusing the Docker volume: {error}")
        return ret
    disk, verdict = found["device"], found["verdict"]
    meaning = {
        "blank": "is blank: the volume group will be created on it",
        "our-pv": "holds the physical volume a previous run made: the group will be finished",
        "our-vg": f"already holds volume group {name}",
    }
    ret["comment"] = f"{disk} {meaning[verdict]}"
    return ret


def volume_group_present(name, device=None):
    """
    Volume group ``name`` on the Docker disk: ``pvcreate`` with the disk's marker UUID and
    ``vgcreate`` with the ``docker_host`` tag, each only when missing.
    """
    ret = _ret(name)
    try:
        found = _volume(name, device)
    except Exception as error:
        ret.update(result=False, comment=f"docker:storage: refusing the Docker volume: {error}")
        return ret
    disk, disk_id, verdict = found["device"], found["disk_id"], found["verdict"]
    if verdict == "our-vg":
        ret["comment"] = f"volume group {name} is on {disk}"
        return ret
    if os.path.exists(f"/dev/{name}"):
        # /dev/<vg> becomes the new VG's directory: a name already taken there is refused.
        ret.update(result=False, comment=f"/dev/{name} already exists: choose another VG name")
        return ret
    steps = _vg_steps(name, disk, disk_id, verdict)
    if __opts__["test"]:
        ret.update(result=None, comment=f"would run: {'; '.join(' '.join(s) for s in steps)}")
        return ret
    try:
        for step in steps:
            _run(step)
    except RuntimeError as error:
        ret.update(result=False, comment=str(error))
        return ret
    ret["changes"] = {"device": disk, "volume_group": name, "created": [s[0] for s in steps]}
    ret["comment"] = f"volume group {name} created on {disk}"
    return ret


def _vg_steps(name, disk, disk_id, verdict):
    marker = __salt__["docker_host.pv_marker"](disk_id)
    tag = "docker_host"
    pvcreate = [__salt__["docker_host.lvm_tool"]("pvcreate"), "--norestorefile"]
    pvcreate += ["--uuid", marker, disk]
    vgcreate = [__salt__["docker_host.lvm_tool"]("vgcreate"), "--addtag", tag, name, disk]
    return [vgcreate] if verdict == "our-pv" else [pvcreate, vgcreate]


def _blkid_type(device):
    """The filesystem type on ``device``, "" when there is none; raises on probe errors."""
    result = __salt__["cmd.run_all"](
        ["blkid", "-p", "-s", "TYPE", "-o", "value", device],
        python_shell=False,
        ignore_retcode=True,
    )
    if result["retcode"] == 2:
        return ""
    if result["retcode"] != 0:
        raise RuntimeError(f"blkid -p {device} failed: {result['stderr'].strip()}")
    return result["stdout"].strip()


MKFS = {
    "xfs": ["mkfs.xfs", "-n", "ftype=1"],
    "ext4": ["mkfs.ext4", "-q"],
}


def filesystem_present(name, fstype):
    """A ``fstype`` filesystem on the block device ``name``; made only when it has none."""
    ret = _ret(name)
    try:
        current = _blkid_type(name)
    except RuntimeError as error:
        ret.update(result=False, comment=str(error))
        return ret
    if current == fstype:
        ret["comment"] = f"{name} holds {fstype}"
        return ret
    if current:
        ret.update(result=False, comment=f"{name} holds {current}, not {fstype}: refusing")
        return ret
    if __opts__["test"]:
        ret.update(result=None, comment=f"{fstype} would be made on {name}")
        return ret
    try:
        _run([*MKFS[fstype], name])
    except RuntimeError as error:
        ret.update(result=False, comment=str(error))
        return ret
    ret.update(changes={"filesystem": fstype}, comment=f"{fstype} made on {name}")
    return ret


def _lv_attr(vgname, lvname):
    """lv_attr of ``vgname/lvname``, or None when it does not exist."""
    lvs = __salt__["docker_host.lvm_tool"]("lvs")
    result = __salt__["cmd.run_all"](
        [lvs, "--noheadings", "-o", "lv_attr", f"{vgname}/{lvname}"],
        python_shell=False,
        ignore_retcode=True,
    )
    return result["stdout"].strip() if result["retcode"] == 0 else None


def _thin_pool_steps(name, vgname, metadata, extents, metadata_extents):
    lvcreate = __salt__["docker_host.lvm_tool"]("lvcreate")
    lvconvert = __salt__["docker_host.lvm_tool"]("lvconvert")
    steps = []
    for lv, size in ((name, extents), (metadata, metadata_extents)):
        if _lv_attr(vgname, lv) is None:
            steps.append(
                [lvcreate, "--yes", "--wipesignatures", "y", "-n", lv, "-l", str(size), vgname]
            )
    steps.append(
        [
            lvconvert,
            "-y",
            "--zero",
            "n",
            "-c",
            "512K",
            "--thinpool",
            f"{vgname}/{name}",
            "--poolmetadata",
            f"{vgname}/{metadata}",
        ]
    )
    return steps


def _profile_step(name, vgname, profile):
    lvs = __salt__["docker_host.lvm_tool"]("lvs")
    result = __salt__["cmd.run_all"](
        [lvs, "--noheadings", "-o", "lv_profile", f"{vgname}/{name}"],
        python_shell=False,
        ignore_retcode=True,
    )
    if result["retcode"] == 0 and result["stdout"].strip() == profile:
        return []
    lvchange = __salt__["docker_host.lvm_tool"]("lvchange")
    return [[lvchange, "--metadataprofile", profile, f"{vgname}/{name}"]]


def thin_pool_present(name, vgname, metadata, extents, metadata_extents, profile):  # noqa: PLR0917
    """
    Docker's direct-lvm thin pool ``vgname/name``: data and metadata LVs, converted to a thin
    pool, with the autoextend ``profile`` attached. Each step only when missing.
    """
    ret = _ret(f"{vgname}/{name}")
    attr = _lv_attr(vgname, name)
    steps = (
        []
        if attr and attr.startswith("t")
        else _thin_pool_steps(name, vgname, metadata, extents, metadata_extents)
    )
    if __opts__["test"]:
        pending = steps or _profile_step(name, vgname, profile)
        ret.update(result=None if pending else True, comment=f"{len(pending)} step(s) to run")
        return ret
    try:
        for step in steps:
            _run(step)
        profile_steps = _profile_step(name, vgname, profile)
        for step in profile_steps:
            _run(step)
    except RuntimeError as error:
        ret.update(result=False, comment=str(error))
        return ret
    done = [" ".join(step[:2]) for step in steps + profile_steps]
    if done:
        ret["changes"] = {"ran": done}
    ret["comment"] = f"thin pool {vgname}/{name} ready"
    return ret


def grown(
    name,
    logical_volume,
    device=None,
    mode="overlay2",
    extents="100%FREE",
    **kwargs,
):
    """
    ``name``: the volume group; the disk is the one ``disk_checked`` found (``device``,
    else the grain). ``kwargs``: ``filesystem``, ``mountpoint`` (overlay2).

    .. code-block:: yaml

        docker-storage-grown:
          docker_storage.grown:
            - name: docker_vol
            - logical_volume: docker
    """
    ret = _ret(name)
    module = __salt__
    volume_group = name
    try:
        name = _volume(volume_group, device)["device"]
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


def moved_into(name, target, services=("docker.socket", "docker", "containerd")):
    """
    Before ``target`` (a directory on the Docker volume) is bind-mounted at ``name``, move
    what ``name`` holds into it once, with ``services`` stopped. Never deletes; refuses when
    ``target`` already holds something (a second copy would hide one of them).
    """
    ret = _ret(name)
    entries, ret["comment"] = __salt__["docker_host.entries_to_move"](name)
    if not entries:
        return ret
    if os.listdir(target):
        ret.update(result=False, comment=f"{target} is not empty: not moving {name} into it")
        return ret
    if __opts__["test"]:
        ret.update(result=None, comment=f"{len(entries)} entries of {name} would move")
        return ret
    __salt__["docker_host.stop_running"](services)
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
