"""
States for Docker's storage on the Docker volume. The work is the docker_storage execution
module's (each command an argument list); a state returns its changes, or what it would change
in test mode, and every failure as one line with nothing more changed.

- ``disk_checked``: the gate every other storage state requires: finds the Docker volume
  (pillar docker:storage:docker_volume, else grain ``docker_volume``) and refuses it unless it
  is blank, whole and unused, or holds the volume group this formula made for it (half-made,
  or moved here from a destroyed node). Any probe error refuses. The volume is found and
  probed once per state run: the states after the gate take its answer from the run's context.
- ``volume_group_present``: our PV (its UUID derived from the volume id) and the tagged VG,
  or our VG's logical volumes activated.
- ``filesystem_present``: a filesystem on a blank LV; one holding another is refused.
- ``thin_pool_present``: Docker's direct-lvm thin pool (devicemapper, Engine <= 24), after
  ``storage_driver_supported`` says the engine has devicemapper.
- ``grown``: the storage grown online after its disk grew; a no-op when nothing grew.
- ``moved_into``: what a directory holds moved onto the volume once, before the volume is
  mounted over it; a volume that already holds data keeps it, the directory is kept aside.
"""

__virtualname__ = "docker_storage"
# The gate's answer, for the rest of its state run (see _volume).
CONTEXT_KEY = "docker_storage.volume"


def __virtual__():
    return __virtualname__


def _ret(name, result=True, comment="", changes=None):
    return {"name": name, "result": result, "changes": changes or {}, "comment": comment}


def _volume(name, device):
    """The Docker volume and its verdict (docker_storage.checked_volume), found and probed once
    per state run: by the gate, whose result the other storage states require; a state run
    without the gate (state.single) probes here. A state run's __context__ is its own copy
    (salt.state.State takes one), and its file client names the run."""
    run, kept = __context__.get("fileclient"), __context__.get(CONTEXT_KEY)
    if run is not None and kept and kept[0] is run and kept[1] == (name, device):
        return kept[2]
    found = __salt__["docker_storage.checked_volume"](name, device)
    if run is not None:
        __context__[CONTEXT_KEY] = (run, (name, device), found)
    return found


def _change(name, function, *args):
    """docker_storage.<function>(*args), dry in test mode: its changes are the state's."""
    try:
        changes = __salt__[f"docker_storage.{function}"](*args, dry_run=__opts__["test"])
    except Exception as error:  # every failure: the state's one-line comment
        return _ret(name, False, f"{name}: {error}")
    if not changes:
        return _ret(name, comment=f"{name} is as it should be")
    if __opts__["test"]:
        return _ret(name, None, f"{name} would change: {changes}")
    return _ret(name, comment=f"{name} changed", changes=changes)


MEANING = {
    "blank": "is blank: the volume group will be created on it",
    "our-pv": "holds the physical volume a previous run made: the group will be finished",
    "our-vg": "already holds volume group {}",
}


def disk_checked(name, device=None):
    """
    Succeed only when Docker's volume group ``name`` may live on the Docker volume.

    .. code-block:: yaml

        docker-storage-disk:
          docker_storage.disk_checked:
            - name: docker_vol
    """
    try:
        found = _volume(name, device)
    except Exception as error:  # every probe failure refuses
        return _ret(name, False, f"docker:storage: refusing the Docker volume: {error}")
    return _ret(name, comment=f"{found['device']} {MEANING[found['verdict']].format(name)}")


def volume_group_present(name, device=None):
    """Volume group ``name`` on the Docker volume, as the gate found it."""
    try:
        found = _volume(name, device)
    except Exception as error:
        return _ret(name, False, f"docker:storage: refusing the Docker volume: {error}")
    return _change(name, "volume_group", name, found["device"], found["disk_id"], found["verdict"])


def filesystem_present(name, fstype):
    """A ``fstype`` filesystem on the block device ``name``; made only when it has none."""
    return _change(name, "filesystem", name, fstype)


def thin_pool_present(name, vgname, metadata, extents, metadata_extents, profile):  # noqa: PLR0917
    """Docker's direct-lvm thin pool ``vgname/name``; each step only when missing."""
    args = (vgname, name, metadata, extents, metadata_extents, profile)
    return _change(f"{vgname}/{name}", "thin_pool", *args)


def grown(name, logical_volume, device=None, mode="overlay2", extents="100%FREE"):
    """``name``: the volume group; its LV ``logical_volume`` (created with ``extents``)."""
    try:
        found = _volume(name, device)
    except Exception as error:
        return _ret(name, False, f"docker:storage: refusing the Docker volume: {error}")
    if found["verdict"] != "our-vg":  # the group is made in this run: nothing grew yet
        return _ret(name, comment=f"{name} is new on {found['device']}: nothing to grow")
    return _change(name, "grow", found["device"], name, logical_volume, mode, extents)


def moved_into(
    name, target=None, device=None, fstype=None, services=("docker.socket", "docker", "containerd")
):
    """What ``name`` holds moved onto the Docker volume (``device``, or ``target`` on it) once,
    before that is mounted at ``name`` (docker_storage.move_into). Never deletes."""
    return _change(name, "move_into", name, target, device, fstype, services)


def storage_driver_supported(name):
    """Fail when storage driver ``name`` is not available in the installed Docker Engine."""
    try:
        version = __salt__["docker_host.engine_version"]()
        __salt__["docker_host.check_storage_driver"](name, version)
    except Exception as error:
        return _ret(name, False, str(error))
    return _ret(name, comment=f"{name} works with Docker Engine {version}")
