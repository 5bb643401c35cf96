"""
Docker host helpers for the ``docker`` formula (host probes and actions; the pillar checks
are in docker_settings).

- ``docker_volume``: the block device of the Docker volume (the node's extra EBS volume),
  from grain ``docker_volume`` (``{device_name, volume_id}``, pushed at deploy) or pillar
  ``docker:storage:docker_volume``; the old grains ``docker_ebs_volume`` / ``docker_disk``
  are refused, naming the new one. ``checked_volume``: that and ``disk_verdict``.
- ``disk_verdict``: may Docker's storage go on that disk? Fail-closed: only a blank, whole,
  unused block device that is not the root disk, or our own (half-made) volume group. Blank is
  read, not guessed: zeros in the first GiB and the last MiB (and samples beyond); partition
  tables (MBR and its logical partitions, primary and backup GPT) and libblkid name what is
  there; a probe that fails, whatever its exit code, refuses.
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
import itertools
import json
import mmap
import os
import re
import shutil
import stat
import struct
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


# --- finding the Docker volume ----------------------------------------------------------------

GRAIN = "docker_volume"
# Its names before 18.4: refused, naming the new one (no silent aliases).
OLD_GRAINS = ("docker_ebs_volume", "docker_disk")
GRAIN_FIELDS = {
    "device_name": re.compile(r"/dev/[a-z0-9]+"),
    "volume_id": re.compile(r"vol-[0-9a-f]{8,17}"),
}
SET_GRAIN = "grains.setval docker_volume '{device_name: /dev/sdX, volume_id: vol-...}'"


def _under(root, path):
    return os.path.join(root, path.lstrip("/"))


def _volume_grain():
    """``{device_name, volume_id}`` from grain docker_volume, checked (minions set grains)."""
    value = __grains__.get(GRAIN)
    minion = __grains__.get("id", "<minion id>")
    if value is None:
        old = next((name for name in OLD_GRAINS if name in __grains__), None)
        if old:
            raise CommandExecutionError(
                f"grain {old} was renamed {GRAIN}: run `salt {minion} {SET_GRAIN}` (the values "
                f"of {old}), or re-deploy the node"
            )
        raise CommandExecutionError(
            f"grain {GRAIN} is missing (salt-cloud sets it at deploy): run `salt {minion} "
            f"{SET_GRAIN}`, or set docker:storage:docker_volume to the disk's device, or "
            "docker:storage:mode: none"
        )
    if (
        not isinstance(value, dict)
        or not value
        or any(
            key not in GRAIN_FIELDS or not GRAIN_FIELDS[key].fullmatch(str(item))
            for key, item in value.items()
        )
    ):
        raise CommandExecutionError(
            f"grain {GRAIN} must be {{device_name: /dev/sdX, volume_id: vol-...}}, not "
            f"{str(value)[:100]!r}: run `salt {minion} {SET_GRAIN}`"
        )
    return value


def _nvme_by_serial(volume_id, root):
    # On Nitro, EBS volumes are NVMe namespaces; the controller serial is the volume id
    # without its dash ("vol0abc..."), padded with spaces.
    wanted = volume_id.replace("-", "")
    for serial_file in sorted(glob.glob(_under(root, "/sys/block/nvme*/device/serial"))):
        with open(serial_file, encoding="ascii", errors="replace") as handle:
            if handle.read().strip().replace("-", "") == wanted:
                return f"/dev/{serial_file.split(os.sep)[-3]}"
    return None


def docker_volume(device=None, root="/"):
    """
    ``{"device", "volume_id"}``: the block device the Docker volume has on this node and its
    EBS volume id (None when unknown). ``device`` (pillar docker:storage:docker_volume)
    overrides the device grain docker_volume names (``{device_name, volume_id}``, pushed at
    deploy); the name requested in EC2 is not the kernel's on Nitro (an NVMe namespace whose
    serial is the volume id) nor on Xen (/dev/sdX is /dev/xvdX). ``root`` prefixes every /dev
    and /sys path (tests use a fake tree).

    CLI Example: ``salt '*' docker_host.docker_volume``
    """
    grain = _volume_grain() if device is None or GRAIN in __grains__ else {}
    volume_id, name = grain.get("volume_id"), grain.get("device_name")
    if device:
        return {"device": device, "volume_id": volume_id}
    found = _nvme_by_serial(volume_id, root) if volume_id else None
    xen = re.sub(r"^/dev/(?:sd|xvd)", "/dev/xvd", name) if name else None
    for candidate in (found, name, xen):
        if candidate and os.path.exists(_under(root, candidate)):
            return {"device": candidate, "volume_id": volume_id}
    raise CommandExecutionError(
        f"the Docker volume (grain {GRAIN}: {name} / {volume_id}) is not on this node: looked "
        "for an NVMe namespace with that volume serial, the device name and its /dev/xvdX form"
    )


def checked_volume(volume_group, device=None):
    """
    The Docker volume (``docker_volume``) and what it holds (``disk_verdict``): ``{"device",
    "volume_id", "disk_id", "verdict"}``; refused volumes raise.

    CLI Example: ``salt '*' docker_host.checked_volume docker_vol``
    """
    volume = docker_volume(device)
    disk_id = volume["volume_id"] or volume["device"]
    verdict = disk_verdict(volume["device"], volume_group, disk_id)
    return {**volume, "disk_id": disk_id, "verdict": verdict}


# --- may Docker's storage go on this disk? (fail closed: any probe error means no) ------------

MIB = 1 << 20
# What "blank" means: zeros in the first GiB (partition tables, and whatever a table ever put at
# a partition start there) and in the last MiB (backup GPT, md 0.90/1.0, DDF/IMSM RAID metadata),
# and in the first 64 KiB of every 64 MiB beyond (backup superblocks, allocation group headers).
# A new EBS volume reads as zeros; anything else is someone's data.
HEAD, TAIL, STRIDE, SAMPLE = 1024 * MIB, MIB, 64 * MIB, 64 * 1024
# Offsets named with blkid per refusal, at most (~5 ms each), and findings shown.
MAX_PROBES, MAX_SHOWN = 32, 8
# lvm2 and util-linux live in sbin, which a minion's PATH may lack.
SBIN_PATH = "/usr/sbin:/sbin"
VG_TAG = "docker_host"
UUID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
EXTENDED = (0x05, 0x0F, 0x85)
ZEROS = bytes(MIB)


def pv_marker(disk_id):
    """The PV UUID this formula gives the Docker disk ``disk_id`` (its volume id or path)."""
    digest = hashlib.sha256(f"docker_host:{disk_id}".encode()).digest()
    chars = "".join(UUID_ALPHABET[byte % len(UUID_ALPHABET)] for byte in digest[:32])
    cuts = (0, 6, 10, 14, 18, 22, 26, 32)
    return "-".join(chars[a:b] for a, b in itertools.pairwise(cuts))


def _run(argv, what, ok=(0,), strict=False):
    """``(exit code, stdout)`` of ``argv`` (no shell, C locale). Not running, an exit code not
    in ``ok``, or (``strict``) anything on stderr raises, naming ``what``."""
    env = {**os.environ, "LC_ALL": "C", "PATH": f"{os.environ.get('PATH', '')}:{SBIN_PATH}"}
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    except OSError as error:
        raise CommandExecutionError(f"cannot run {argv[0]} ({what}): {error.strerror}") from error
    if proc.returncode not in ok or (strict and proc.stderr.strip()):
        output = " ".join((proc.stderr or proc.stdout).split())
        raise CommandExecutionError(
            f"{' '.join(argv)} ({what}) exited {proc.returncode}: {output or 'no output'}"
        )
    return proc.returncode, proc.stdout


def _where(offset):
    return f"{offset // MIB} MiB" if offset % MIB == 0 and offset else f"byte {offset}"


def _whole_disk(device):
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


def _in_use(device, sys_dir):
    """Refuses the root disk, a disk mounted or swapped on (or a partition of it), one held."""
    if sys_dir in _root_disks():
        raise CommandExecutionError(f"{device} holds the root filesystem: refusing it")
    numbers = set()
    for directory in [sys_dir, *glob.glob(os.path.join(sys_dir, "*", ""))]:
        if os.path.exists(os.path.join(directory, "dev")):
            with open(os.path.join(directory, "dev"), encoding="ascii") as handle:
                numbers.add(handle.read().strip())
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        mounted = {line.split()[2] for line in handle if line.strip()}
    with open("/proc/swaps", encoding="utf-8") as handle:
        for path in (line.split()[0] for line in list(handle)[1:]):
            if path.startswith("/dev/") and os.path.exists(path):
                rdev = os.stat(path).st_rdev
                mounted.add(f"{os.major(rdev)}:{os.minor(rdev)}")
    if numbers & mounted:
        raise CommandExecutionError(f"{device} (or a partition of it) is mounted or swap")
    holders = glob.glob(os.path.join(sys_dir, "holders", "*"))
    holders += glob.glob(os.path.join(sys_dir, "*", "holders", "*"))
    if holders:
        names = ", ".join(sorted({os.path.basename(h) for h in holders}))
        raise CommandExecutionError(f"{device} is in use by {names}")


def _probe(device, offset=0):
    """What libblkid finds at ``offset``: its fields, ``{}`` for nothing, ``{"error": ...}``
    when the probe fails. blkid exits 2 both for "nothing" and on some probe errors
    ("Operation not permitted"): only a silent 2 means nothing."""
    argv = ["blkid", "-p", "-o", "export", *(["-O", str(offset)] if offset else []), device]
    try:
        code, out = _run(argv, f"probe at {_where(offset)}", ok=(0, 2), strict=True)
    except CommandExecutionError as error:
        return {"error": str(error)}
    found = dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)
    if code == 0 and not (found.get("TYPE") or found.get("PTTYPE")):
        return {"error": f"{' '.join(argv)} exited 0 but named nothing"}
    return found if code == 0 else {}


def _describe(found, where):
    """A finding of ``_probe`` in words (None: nothing)."""
    if found.get("TYPE"):
        return f"{found['TYPE']} {where}"
    if found.get("PTTYPE"):
        return f"a {found['PTTYPE']} partition table {where}"
    return found.get("error")


def _read(disk, offset, length):
    disk.seek(offset)
    return disk.read(length)


def _mbr_entries(sector):
    """(type, first LBA, sectors) of the four entries of an MBR or EBR; [] without one."""
    if len(sector) < 512 or sector[510:512] != b"\x55\xaa":
        return []
    return [struct.unpack_from("<4xB3xII", sector, 446 + 16 * i) for i in range(4)]


def _mbr_starts(disk, sector):
    """Byte offsets of the MBR's partitions and of the logical ones its extended one chains."""
    starts, chain = set(), []
    for kind, lba, count in _mbr_entries(_read(disk, 0, 512)):
        if kind in EXTENDED:
            chain = [lba]
        elif kind not in (0, 0xEE) and count:  # 0xEE: GPT's protective entry
            starts.add(lba * sector)
    while 0 < len(chain) < 256:  # a chain that loops ends here
        entries = _mbr_entries(_read(disk, chain[-1] * sector, 512))
        (kind, lba, count), (next_kind, next_lba, _) = entries[:2] if entries else [(0,) * 3] * 2
        if kind and count:
            starts.add((chain[-1] + lba) * sector)
        if next_kind not in EXTENDED or not next_lba:
            break
        chain.append(chain[0] + next_lba)
    return starts


def _gpt_starts(disk, size):
    """Byte offsets of the partitions the primary and backup GPT list (512- or 4096-byte
    sectors), and the headers found."""
    starts, headers = set(), []
    for sector in (512, 4096):
        for which, lba in (("primary", 1), ("backup", size // sector - 1)):
            header = _read(disk, lba * sector, 92)
            if header[:8] != b"EFI PART":
                continue
            headers.append(f"a GPT header ({which}) at byte {lba * sector}")
            table, count, entry_size = struct.unpack_from("<QII", header, 72)
            entry_size = max(entry_size, 128)
            entries = _read(disk, table * sector, min(count, 1024) * entry_size)
            for at in range(0, len(entries) - 39, entry_size):
                if entries[at : at + 16].strip(b"\0"):  # a type GUID: a partition
                    starts.add(struct.unpack_from("<Q", entries, at + 32)[0] * sector)
    return starts, headers


def _areas(size, start):
    """(offset, length) of what the blank check reads, from ``start`` on."""
    head = min(size, HEAD)
    areas = [(at, min(MIB, head - at)) for at in range(start, head, MIB)]
    areas += [(at, SAMPLE) for at in range(HEAD, size - TAIL - SAMPLE + 1, STRIDE)]
    tail = max(size - TAIL, head, start)
    return areas + ([(tail, size - tail)] if tail < size else [])


def _data_areas(device, size, start):
    """Offsets of the areas (``_areas``) that hold anything but zeros, and the first byte of
    data. Read around the page cache: what is on the disk now, and fast."""
    found, first, buffer = [], None, mmap.mmap(-1, MIB)
    try:
        fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        fd = os.open(device, os.O_RDONLY)  # no O_DIRECT here: read through the cache
    try:
        for offset, length in _areas(size, start):
            if os.preadv(fd, [memoryview(buffer)[:length]], offset) != length:
                raise CommandExecutionError(f"cannot read {device}: short read at byte {offset}")
            data = buffer[:length]
            if data != ZEROS[:length]:
                found.append(offset)
                first = first if first is not None else offset + length - len(data.lstrip(b"\0"))
    except OSError as error:
        raise CommandExecutionError(f"cannot read {device}: {error.strerror}") from error
    finally:
        os.close(fd)
    return found, first


def _check_blank(device, sys_dir, start, whole):
    """Refuses, saying what is there, unless every area the gate reads holds only zeros and
    the whole-disk probe (``whole``, unless our PV starts the disk) found nothing."""
    with open(device, "rb") as disk:
        size = disk.seek(0, os.SEEK_END)
        data, first = _data_areas(device, size, start)
        if not data and not (whole and start == 0):
            return
        with open(os.path.join(sys_dir, "queue", "logical_block_size"), encoding="ascii") as fh:
            gpt, headers = _gpt_starts(disk, size)
            starts = sorted(gpt | _mbr_starts(disk, int(fh.read())))
    findings = [_describe(whole, "on the whole disk")] if start == 0 else []
    if data:
        findings.append(f"data at byte {first} ({len(data)} of the areas read hold data)")
    probes = [
        (at, f"in a partition at {_where(at)}", f"a partition at {_where(at)}") for at in starts
    ]
    probes += [(at, f"at {_where(at)}", None) for at in data if at and at not in starts]
    for offset, where, otherwise in probes[:MAX_PROBES]:
        found = _probe(device, offset)
        findings.append(_describe(found, where) or otherwise)
        if "error" in found:  # the next probes would fail alike
            break
    findings = list(dict.fromkeys(f for f in [*findings[:2], *headers, *findings[2:]] if f))
    if len(findings) > MAX_SHOWN:
        findings[MAX_SHOWN:] = [f"and {len(findings) - MAX_SHOWN} more"]
    todo = (
        "Docker's storage goes only on a blank disk or its own volume group: check that this "
        "is the Docker volume"
        if data
        else "run that probe by hand to see why"
    )
    state = "is not blank" if data else "could not be checked"
    raise CommandExecutionError(f"{device} {state}: {'; '.join(findings)}: refusing it. {todo}")


def _pv(device):
    """lvm2's report of the PV on ``device``: pv_uuid, vg_name, vg_tags, pe_start (bytes)."""
    fields = "pv_uuid,vg_name,vg_tags,pe_start"
    argv = ["pvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", fields, device]
    _, out = _run(argv, "the LVM physical volume")
    try:
        (pv,) = json.loads(out)["report"][0]["pv"]
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise CommandExecutionError(f"pvs {device}: unreadable report {out[:200]!r}") from error
    return pv


def _lvm_verdict(device, volume_group, disk_id):
    """``("our-vg" | "our-pv", where our data starts)``; a PV of anyone else raises."""
    pv = _pv(device)
    ours = pv["pv_uuid"].replace("-", "") == pv_marker(disk_id).replace("-", "")
    group, tagged = pv["vg_name"], VG_TAG in pv["vg_tags"].split(",")
    if ours and not group:
        return "our-pv", int(pv["pe_start"])
    if ours and tagged and group == volume_group:
        return "our-vg", None
    if ours and tagged:
        raise CommandExecutionError(
            f"{device} holds volume group {group!r}, which this formula made for {disk_id}, "
            f"but docker:storage:volume_group is {volume_group!r}: set it to {group!r}"
        )
    what = f"of volume group {group!r}" if group else "without a volume group"
    raise CommandExecutionError(
        f"{device} is an LVM physical volume {what} that this formula did not make for "
        f"{disk_id}: refusing it"
    )


def lvm_tool(name):
    """Path of an lvm2 command; refuses when lvm2 is missing."""
    tool = shutil.which(name) or shutil.which(name, path=SBIN_PATH)
    if not tool:
        raise CommandExecutionError(f"{name} is not installed (lvm2)")
    return tool


def disk_verdict(device, volume_group, disk_id):
    """
    May Docker's storage go on ``device``? ``"blank"``, ``"our-pv"`` (the PV an interrupted
    run left, no VG yet) or ``"our-vg"`` (Docker's VG, made by this formula for ``disk_id``:
    the volume id, else the device path). Anything else raises, saying what is in the way;
    so does any probe that fails or cannot run.

    CLI Example: ``salt '*' docker_host.disk_verdict /dev/nvme1n1 docker_vol vol-0123``
    """
    sys_dir = _whole_disk(device)
    whole, start = _probe(device), 0
    if whole.get("TYPE") == "LVM2_member" and not whole.get("PTTYPE"):
        verdict, start = _lvm_verdict(device, volume_group, disk_id)
        if verdict == "our-vg":
            return verdict
    _in_use(device, sys_dir)
    _check_blank(device, sys_dir, start, whole)
    return "our-pv" if start else "blank"


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
