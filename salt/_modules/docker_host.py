"""
Docker host helpers for the ``docker`` formula (host probes and actions; the pillar checks
are in docker_settings).

- ``resolve_disk`` / ``docker_disk``: the real block device of the extra EBS disk, from the
  ``docker_ebs_volume`` grain (``{device_name, volume_id}``; the old ``docker_disk`` grain
  ``{device, volume_id}`` is still read) or pillar ``docker:storage:device``: the name
  requested in EC2 differs from the one the kernel gives it on Xen and Nitro.
- ``disk_verdict``: may Docker's storage go on that disk? Fail-closed: only a blank, whole,
  unused block device that is not the root disk, or our own (half-made) volume group.
- ``engine_version`` / ``check_storage_driver``: devicemapper exists only in Engine <= 24.
- ``move_data_root``: move an existing /var/lib/docker into the new volume (never delete);
  ``mounted_device`` / ``entries_to_move`` / ``stop_running``: the checks and the stop that
  come before any move.
- ``python_sdk``: whether the minion's Python imports a usable docker SDK, and which pip
  installs into that Python (onedir: salt-pip; pip-installed Salt: its own environment).
- ``daemon_json``: daemon.json from docker:config and the storage mode.
"""

import glob
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys

from salt.exceptions import CommandExecutionError

__virtualname__ = "docker_host"

# Last Docker Engine major version that still has the devicemapper storage driver.
DEVICEMAPPER_LAST_ENGINE = 24
# docker-py 6.x/7.0 fail with requests >= 2.32 ("Not supported URL scheme http+docker").
MIN_SDK_VERSION = (7, 1)


def __virtual__():
    return __virtualname__


# --- finding the disk ------------------------------------------------------------------


def _under(root, path):
    return os.path.join(root, path.lstrip("/"))


def _xen_name(device):
    # Xen's blkfront names the disk requested as /dev/sdX /dev/xvdX.
    match = re.match(r"^/dev/(?:sd|xvd)([a-z]+)$", device)
    return f"/dev/xvd{match.group(1)}" if match else None


def _nvme_by_serial(volume_id, root):
    # On Nitro, EBS volumes are NVMe namespaces; the controller serial is the volume id
    # without its dash ("vol0abc..."), padded with spaces.
    wanted = volume_id.replace("-", "").strip().lower()
    for serial_file in sorted(glob.glob(_under(root, "/sys/block/nvme*/device/serial"))):
        with open(serial_file, encoding="ascii", errors="replace") as handle:
            serial = handle.read().strip().replace("-", "").lower()
        if serial == wanted:
            name = serial_file.split(os.sep)[-3]
            if os.path.exists(_under(root, f"/dev/{name}")):
                return f"/dev/{name}"
    return None


def _disk_grain():
    """``(device, volume_id)`` from grain docker_ebs_volume, else the old docker_disk."""
    for grain, device_key in (("docker_ebs_volume", "device_name"), ("docker_disk", "device")):
        value = __grains__.get(grain)
        if value is None:
            continue
        if not isinstance(value, dict) or not (value.get(device_key) or value.get("volume_id")):
            raise CommandExecutionError(f"grain {grain} has neither {device_key} nor volume_id")
        return value.get(device_key), value.get("volume_id")
    raise CommandExecutionError(
        "grain docker_ebs_volume is missing: the node has no extra disk recorded "
        "(set docker:storage:device, or docker:storage:mode: none)"
    )


def resolve_disk(device=None, volume_id=None, root="/"):
    """
    Return the block device the extra disk really has on this node.

    ``device`` / ``volume_id`` default to the ``docker_ebs_volume`` grain (or the old
    ``docker_disk``). ``root`` prefixes every /dev and /sys path (tests use a fake tree).

    CLI Example: ``salt '*' docker_host.resolve_disk``
    """
    if device is None and volume_id is None:
        device, volume_id = _disk_grain()
    if not device and not volume_id:
        raise CommandExecutionError("the Docker disk: neither device nor volume_id given")
    if device and os.path.exists(_under(root, device)):
        return device
    if volume_id:
        nvme = _nvme_by_serial(volume_id, root)
        if nvme:
            return nvme
    xen = _xen_name(device) if device else None
    if xen and os.path.exists(_under(root, xen)):
        return xen
    raise CommandExecutionError(
        f"the Docker disk: no block device for device {device!r} / volume_id {volume_id!r} "
        "(looked for it as-is, as /dev/xvdX and as an NVMe namespace with that volume serial)"
    )


# --- is the disk ours to use? (fail closed: any probe error means no) ------------------------

# A PV this formula creates carries a PV UUID derived from the disk (see pv_marker), and its
# VG a tag: a PV left without a VG by an interrupted run is recognised as ours and finished.
VG_TAG = "docker_host"
UUID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
GPT_SIGNATURE = b"EFI PART"
# A blank EBS volume reads as zeros; these regions of a used disk rarely do (partition
# tables, filesystem superblocks at the usual first-partition offsets).
ZERO_HEAD = 2 * 1024 * 1024
ZERO_TAIL = 1024 * 1024
# Where a partition usually starts: a filesystem there survives a wiped partition table.
PARTITION_OFFSETS = tuple(
    n * 512 for n in (63, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144)
)


def pv_marker(disk_id):
    """The PV UUID this formula gives the Docker disk ``disk_id`` (its volume id or path)."""
    digest = hashlib.sha256(f"docker_host:{disk_id}".encode()).digest()
    chars = "".join(UUID_ALPHABET[byte % len(UUID_ALPHABET)] for byte in digest[:32])
    groups = (6, 4, 4, 4, 4, 4, 6)
    parts, at = [], 0
    for size in groups:
        parts.append(chars[at : at + size])
        at += size
    return "-".join(parts)


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def _run_checked(cmd, what):
    """Run ``cmd`` (an argument list); any failure to run it is an error, never "nothing"."""
    try:
        return _run(cmd)
    except OSError as error:
        raise CommandExecutionError(f"cannot probe {what}: {cmd[0]}: {error}") from error


def _sys_block(device):
    """The sysfs directory of a whole block device; refuses anything else."""
    try:
        info = os.stat(device)
    except OSError as error:
        raise CommandExecutionError(f"{device}: {error.strerror}") from error
    if not stat.S_ISBLK(info.st_mode):
        kind = "a character device" if stat.S_ISCHR(info.st_mode) else "not a block device"
        raise CommandExecutionError(f"{device} is {kind}: refusing it")
    sys_dir = os.path.realpath(f"/sys/dev/block/{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}")
    if not os.path.isdir(sys_dir):
        raise CommandExecutionError(f"{device}: no sysfs entry {sys_dir}: cannot check it")
    if os.path.exists(os.path.join(sys_dir, "partition")):
        raise CommandExecutionError(f"{device} is a partition, not a whole disk: refusing it")
    if os.path.isdir(os.path.join(sys_dir, "dm")):
        raise CommandExecutionError(f"{device} is a device-mapper device: refusing it")
    return sys_dir


def _dev_numbers(sys_dir):
    """major:minor of the disk and of each of its partitions."""
    numbers = set()
    partitions = glob.glob(os.path.join(sys_dir, "*", "partition"))
    for directory in [sys_dir, *sorted(os.path.dirname(p) for p in partitions)]:
        with open(os.path.join(directory, "dev"), encoding="ascii") as handle:
            numbers.add(handle.read().strip())
    return numbers


def _mounted_numbers():
    """major:minor of every mounted filesystem and active swap device."""
    numbers = set()
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        numbers.update(line.split()[2] for line in handle if line.strip())
    with open("/proc/swaps", encoding="utf-8") as handle:
        for line in list(handle)[1:]:
            path = line.split()[0]
            if path.startswith("/dev/") and os.path.exists(path):
                rdev = os.stat(path).st_rdev
                numbers.add(f"{os.major(rdev)}:{os.minor(rdev)}")
    return numbers


def _backing_disks(number, seen=None):
    """Whole disks under the block device major:minor ``number`` (through dm/md slaves)."""
    seen = set() if seen is None else seen
    sys_dir = os.path.realpath(f"/sys/dev/block/{number}")
    if not os.path.isdir(sys_dir) or sys_dir in seen:
        return seen
    if os.path.exists(os.path.join(sys_dir, "partition")):
        sys_dir = os.path.dirname(sys_dir)
    seen.add(sys_dir)
    for slave in glob.glob(os.path.join(sys_dir, "slaves", "*", "dev")):
        with open(slave, encoding="ascii") as handle:
            _backing_disks(handle.read().strip(), seen)
    return seen


def _root_disks():
    root = os.stat("/").st_dev
    return _backing_disks(f"{os.major(root)}:{os.minor(root)}")


def _check_not_in_use(device, sys_dir):
    if sys_dir in _root_disks():
        raise CommandExecutionError(f"{device} holds the root filesystem: refusing it")
    if _dev_numbers(sys_dir) & _mounted_numbers():
        raise CommandExecutionError(f"{device} (or a partition of it) is mounted or swap")
    holders = glob.glob(os.path.join(sys_dir, "holders", "*")) + glob.glob(
        os.path.join(sys_dir, "*", "holders", "*")
    )
    if holders:
        names = sorted({os.path.basename(h) for h in holders})
        raise CommandExecutionError(f"{device} is in use by {', '.join(names)}")


def signatures(device):
    """``wipefs --no-act``: every signature libblkid finds (type, offset, uuid)."""
    rc, out, err = _run_checked(["wipefs", "--no-act", "--json", device], "signatures")
    if rc != 0:
        raise CommandExecutionError(f"wipefs -n {device} failed: {(err or out).strip()}")
    try:
        found = json.loads(out) if out.strip() else {"signatures": []}
    except ValueError as error:
        raise CommandExecutionError(f"wipefs -n {device}: unreadable output") from error
    return [
        {"type": sig.get("type"), "offset": sig.get("offset"), "uuid": sig.get("uuid")}
        for sig in found.get("signatures", [])
    ]


def _read_at(handle, offset, size):
    handle.seek(offset)
    return handle.read(size)


def _gpt_headers(device, size):
    """Offsets of GPT headers (primary or backup, 512- or 4096-byte sectors) on ``device``."""
    places = (512, 4096, size - 512, size - 4096)
    with open(device, "rb") as handle:
        return [p for p in places if p >= 0 and _read_at(handle, p, 8) == GPT_SIGNATURE]


def _nonzero_at(device, size):
    """First offset in the head/tail regions that is not zero, or None."""
    with open(device, "rb") as handle:
        for start, length in ((0, min(ZERO_HEAD, size)), (max(size - ZERO_TAIL, 0), ZERO_TAIL)):
            data = _read_at(handle, start, length)
            stripped = data.lstrip(b"\0")
            if stripped:
                return start + len(data) - len(stripped)
    return None


def _deep_signatures(device, size):
    """Filesystems or other signatures at the usual partition offsets."""
    found = []
    for offset in (o for o in PARTITION_OFFSETS if o < size):
        cmd = ["blkid", "-p", "-o", "export", "-O", str(offset), device]
        rc, out, err = _run_checked(cmd, "signatures")
        if rc == 2:
            continue
        if rc != 0:
            raise CommandExecutionError(f"blkid -p -O {offset} {device} failed: {err.strip()}")
        kind = dict(line.partition("=")[::2] for line in out.splitlines()).get("TYPE", "?")
        found.append(f"{kind} at offset {offset}")
    return found


def _device_size(device):
    with open(device, "rb") as handle:
        return handle.seek(0, os.SEEK_END)


def _check_blank(device):
    """Nothing anywhere that matters: signatures, GPT headers, data where tables live."""
    size = _device_size(device)
    found = [f"{s['type']} at {s['offset']}" for s in signatures(device)]
    found += [f"a GPT header at {offset}" for offset in _gpt_headers(device, size)]
    found += _deep_signatures(device, size)
    if found:
        raise CommandExecutionError(f"{device} is not blank ({'; '.join(found)}): refusing it")
    nonzero = _nonzero_at(device, size)
    if nonzero is not None:
        raise CommandExecutionError(
            f"{device} is not blank (data at byte {nonzero}, where partition tables and "
            "filesystems live): refusing it"
        )


def lvm_tool(name):
    """Path of an lvm2 command; refuses when lvm2 is missing (the PV cannot be read)."""
    tool = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not tool:
        raise CommandExecutionError(
            f"{name} is not installed (lvm2): cannot tell whose physical volume this is"
        )
    return tool


def pv_details(device):
    """``{"vg_name", "vg_tags", "pv_uuid"}`` of the PV on ``device`` (lvm2's own view)."""
    cmd = [
        lvm_tool("pvs"),
        "--noheadings",
        "--nameprefixes",
        "--unquoted",
        "-o",
        "pv_uuid,vg_name,vg_tags",
        device,
    ]
    rc, out, err = _run_checked(cmd, "the physical volume")
    if rc != 0:
        raise CommandExecutionError(f"pvs {device} failed: {err.strip()}")
    fields = dict(item.partition("=")[::2] for item in out.split())
    return {
        "pv_uuid": fields.get("LVM2_PV_UUID", ""),
        "vg_name": fields.get("LVM2_VG_NAME", ""),
        "vg_tags": [t for t in fields.get("LVM2_VG_TAGS", "").split(",") if t],
    }


def _lvm_verdict(device, pv, volume_group, marker):
    """Our VG, our PV without a VG (an interrupted run), or someone else's: refuse."""
    ours = pv["pv_uuid"].replace("-", "") == marker.replace("-", "")
    if pv["vg_name"] == volume_group:
        return "our-vg"
    if pv["vg_name"]:
        raise CommandExecutionError(
            f"{device} is a physical volume of volume group {pv['vg_name']!r}, not "
            f"{volume_group!r} (docker:storage:volume_group): refusing it"
        )
    if ours:
        return "our-pv"
    raise CommandExecutionError(
        f"{device} is a physical volume without a volume group that this formula did not "
        "create: refusing it (pvremove it if it is really unused)"
    )


def disk_verdict(device, volume_group, disk_id):
    """
    May Docker's storage go on ``device``? ``"blank"``, ``"our-pv"`` (a PV an interrupted
    run left, no VG yet), ``"our-vg"`` (already Docker's VG); anything else raises saying
    what is in the way. Any probe that fails raises too.

    CLI Example: ``salt '*' docker_host.disk_verdict /dev/nvme1n1 docker_vol vol-0123``
    """
    sys_dir = _sys_block(device)
    found = signatures(device)
    if [s["type"] for s in found] == ["LVM2_member"]:
        verdict = _lvm_verdict(device, pv_details(device), volume_group, pv_marker(disk_id))
        if verdict == "our-vg":
            return verdict
    else:
        verdict = "blank"
    _check_not_in_use(device, sys_dir)
    if verdict == "blank":
        _check_blank(device)
    return verdict


def docker_disk(device=None, volume_id=None):
    """
    ``(device, disk_id)`` of the Docker disk: ``device`` (pillar docker:storage:device) or
    the disk the grains name, resolved to its kernel name; ``disk_id`` (the volume id, else
    the device) names it for the PV marker.

    CLI Example: ``salt '*' docker_host.docker_disk``
    """
    resolved = resolve_disk(device, volume_id) if (device or volume_id) else resolve_disk()
    if not volume_id and not device:
        volume_id = _disk_grain()[1]
    return resolved, volume_id or resolved


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
    _, out, _ = _run([dockerd, "--version"])
    return ".".join(str(part) for part in parse_engine_version(out))


def check_storage_driver(mode, version):
    """
    Raise when storage ``mode`` cannot work with Docker Engine ``version`` (None: unknown yet).
    """
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


# --- moving an existing data root ----------------------------------------------------------


def mounted_device(path):
    """
    The device mounted at ``path`` (the kernel's mount table), or None: before a volume is
    mounted over a directory, its content still has to move.

    CLI Example: ``salt '*' docker_host.mounted_device /var/lib/docker``
    """
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 1 and fields[1] == path:
                return fields[0]
    return None


def entries_to_move(path):
    """
    What moving ``path``'s content onto a volume about to be mounted there has to move:
    ``(entries, "")``, or ``([], why nothing)`` when ``path`` is a mountpoint already or
    holds nothing.

    CLI Example: ``salt '*' docker_host.entries_to_move /var/lib/docker``
    """
    if mounted_device(path) is not None:
        return [], f"{path} is already a mountpoint"
    entries = sorted(os.listdir(path)) if os.path.isdir(path) else []
    return entries, "" if entries else f"{path} is empty: nothing to move"


def stop_running(units):
    """
    Stop those of the service ``units`` that exist and run (nothing may write where data is
    being moved); returns the ones stopped.

    CLI Example: ``salt '*' docker_host.stop_running '["docker.socket", "docker"]'``
    """
    stopped = []
    for unit in units:
        if __salt__["service.available"](unit) and __salt__["service.status"](unit):
            __salt__["service.stop"](unit)
            stopped.append(unit)
    return stopped


def move_data_root(source, destination):
    """
    Move every entry of ``source`` into ``destination`` (the freshly mounted volume), keeping
    ``source`` itself as the (now empty) mountpoint. Refuses if ``destination`` already has
    content, so a second call can never mix or clobber data. Returns the moved entry names.
    """
    entries = sorted(os.listdir(source)) if os.path.isdir(source) else []
    if not entries:
        return []
    leftovers = [name for name in os.listdir(destination) if name != "lost+found"]
    if leftovers:
        raise CommandExecutionError(
            f"cannot move {source} into {destination}: it already holds {sorted(leftovers)}"
        )
    # GNU mv, in one call: across filesystems it recreates device nodes, FIFOs and sockets as
    # such (Docker keeps a block device node, volumes/backingFsBlockDev, that shutil.move
    # would copy by reading the whole device) and keeps hard links between the entries.
    result = subprocess.run(
        ["mv", "--", *(os.path.join(source, name) for name in entries), destination],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise CommandExecutionError(
            f"moving {source} into {destination} failed: {result.stderr.strip()}"
        )
    return entries


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
    usable = False
    if version:
        parts = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
        usable = parts >= MIN_SDK_VERSION
    relenv_root = getattr(sys, "RELENV", None)
    if relenv_root is not None and os.path.exists(os.path.join(str(relenv_root), "salt-pip")):
        bin_env = os.path.join(str(relenv_root), "salt-pip")
    else:
        bin_env = sys.executable
    return {"usable": usable, "version": version, "bin_env": bin_env}


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
