"""
The Docker volume on the node: which disk it is, whether Docker's storage may go on it (the
disk gate), and the steps the docker_storage states take on it. Every command is an argument
list (no shell); every probe that fails, whatever its exit code, refuses.

- ``docker_volume``: its block device, from grain ``docker_volume`` (``{device_name,
  volume_id}``, pushed at deploy) or pillar ``docker:storage:docker_volume``; the old grains
  ``docker_ebs_volume`` / ``docker_disk`` are refused, naming the new one.
- ``disk_verdict`` / ``checked_volume``: only a blank whole disk of its own, or the volume
  group this formula made for that volume (half-made, or moved here from another node). Blank
  is read, not guessed: zeros in the first GiB, the last MiB and samples beyond.
- ``volume_group``, ``filesystem``, ``thin_pool``, ``grow``, ``move_into``: what the states
  change (each ``dry_run`` for test mode); a change returns its changes, nothing to do ``{}``.
"""

import glob
import hashlib
import itertools
import json
import mmap
import os
import re
import struct
import tempfile
import time

from salt.exceptions import CommandExecutionError

__virtualname__ = "docker_storage"


def __virtual__():
    return __virtualname__


# --- finding the Docker volume ----------------------------------------------------------------

GRAIN = "docker_volume"
# Its names before 18.4: refused, naming the new one (no silent aliases).
OLD_GRAINS = ("docker_ebs_volume", "docker_disk")
GRAIN_FIELDS = {
    "device_name": re.compile(r"/dev/[a-z0-9]+"),
    "volume_id": re.compile(r"vol-[0-9a-f]{8,17}"),
    # The data's identity: the volume id of the volume it began on, carried by snapshots
    # to the volumes restored from them (salt-cloud's tag data_id); absent: volume_id.
    "data_id": re.compile(r"vol-[0-9a-f]{8,17}"),
}
SET_GRAIN = "grains.setval docker_volume '{device_name: /dev/sdX, volume_id: vol-...}'"


def _volume_grain():
    """``{device_name, volume_id[, data_id]}`` from grain docker_volume, checked (minions set
    grains)."""
    value, minion = __grains__.get(GRAIN), __grains__.get("id", "<minion id>")
    old = next((name for name in OLD_GRAINS if name in __grains__), None)
    if value is None and old:
        raise CommandExecutionError(
            f"grain {old} was renamed {GRAIN}: run `salt {minion} {SET_GRAIN}` (the values of "
            f"{old}), or re-deploy the node"
        )
    if value is None:
        raise CommandExecutionError(
            f"grain {GRAIN} is missing (salt-cloud sets it at deploy): run `salt {minion} "
            f"{SET_GRAIN}`, or set docker:storage:docker_volume to the disk's device, or "
            "docker:storage:mode: none"
        )
    fields = value.items() if isinstance(value, dict) else [(None, value)]
    if not value or not all(
        k in GRAIN_FIELDS and GRAIN_FIELDS[k].fullmatch(str(v)) for k, v in fields
    ):
        raise CommandExecutionError(
            f"grain {GRAIN} must be {{device_name: /dev/sdX, volume_id: vol-...}}, not "
            f"{str(value)[:100]!r}: run `salt {minion} {SET_GRAIN}`"
        )
    return value


def _nvme_by_serial(volume_id, root):
    # On Nitro, EBS volumes are NVMe namespaces; the controller serial is the volume id
    # without its dash ("vol0abc..."), padded with spaces.
    for serial in sorted(glob.glob(os.path.join(root, "sys/block/nvme*/device/serial"))):
        with open(serial, encoding="ascii", errors="replace") as handle:
            if handle.read().strip() == volume_id.replace("-", ""):
                return f"/dev/{serial.split(os.sep)[-3]}"
    return None


def docker_volume(device=None, root="/"):
    """
    ``{"device", "volume_id", "data_id"}``: the block device the Docker volume has on this
    node, its EBS volume id and the id of the data on it (None when unknown). ``device``
    (pillar docker:storage:docker_volume) overrides the device grain docker_volume names;
    the name requested in EC2 is not the kernel's on Nitro (an NVMe namespace whose serial
    is the volume id) nor on Xen (/dev/sdX is /dev/xvdX). ``root`` prefixes every /dev and
    /sys path (tests use a fake tree).

    CLI Example: ``salt '*' docker_storage.docker_volume``
    """
    grain = _volume_grain() if device is None or GRAIN in __grains__ else {}
    volume_id, name = grain.get("volume_id"), grain.get("device_name")
    data_id = grain.get("data_id") or volume_id
    if device:
        return {"device": device, "volume_id": volume_id, "data_id": data_id}
    nvme = _nvme_by_serial(volume_id, root) if volume_id else None
    xen = re.sub(r"^/dev/(?:sd|xvd)", "/dev/xvd", name) if name else None
    for candidate in (nvme, name, xen):
        if candidate and os.path.exists(os.path.join(root, candidate.lstrip("/"))):
            return {"device": candidate, "volume_id": volume_id, "data_id": data_id}
    raise CommandExecutionError(
        f"the Docker volume (grain {GRAIN}: {name} / {volume_id}) is not on this node: looked "
        "for an NVMe namespace with that volume serial, the device name and its /dev/xvdX form"
    )


def checked_volume(volume_group, device=None):
    """
    The Docker volume (``docker_volume``) and what it holds (``disk_verdict``): ``{"device",
    "volume_id", "data_id", "disk_id", "verdict"}``. Its identity (``disk_id``, which the PV
    marker is derived from) is the data's id, which follows the volume to any node and the
    data to a volume restored from its snapshot, else the device.

    CLI Example: ``salt '*' docker_storage.checked_volume docker_vol``
    """
    volume = docker_volume(device)
    volume["disk_id"] = volume["data_id"] or volume["device"]
    volume["verdict"] = disk_verdict(volume["device"], volume_group, volume["disk_id"])
    return volume


# --- may Docker's storage go on this disk? (fail closed: any probe error means no) ------------

MIB = 1 << 20
# What "blank" means: zeros in the first GiB (partition tables, and whatever a table ever put at
# a partition start there) and in the last MiB (backup GPT, md 0.90/1.0, DDF/IMSM RAID metadata),
# and in the first 64 KiB of every 64 MiB beyond (backup superblocks, allocation group headers).
# A new EBS volume reads as zeros; anything else is someone's data.
HEAD, TAIL, STRIDE, SAMPLE = 1024 * MIB, MIB, 64 * MIB, 64 * 1024
ZEROS = bytes(MIB)
# Offsets named with blkid per refusal, at most (~5 ms each), and findings shown.
MAX_PROBES, MAX_SHOWN = 32, 8
# lvm2 and util-linux live in sbin, which a minion's PATH may lack.
SBIN_PATH = "/usr/sbin:/sbin"
VG_TAG = "docker_host"
UUID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
EXTENDED = (0x05, 0x0F, 0x85)
PV_FIELDS = "pv_uuid,vg_name,vg_tags,pe_start,pv_size,vg_extent_size,vg_free,vg_extent_count"
LV_FIELDS = "lv_name,lv_attr,lv_size,lv_profile"
# grow()'s sizes: plan()'s names for the PV report's fields.
SIZES = tuple(zip(("pv", "extent", "vg_free", "vg_extents"), PV_FIELDS.split(",")[4:], strict=True))


def pv_marker(disk_id):
    """The PV UUID this formula gives the Docker volume ``disk_id`` (its volume id or path)."""
    digest = hashlib.sha256(f"docker_host:{disk_id}".encode()).digest()
    chars = "".join(UUID_ALPHABET[byte % len(UUID_ALPHABET)] for byte in digest[:32])
    return "-".join(chars[a:b] for a, b in itertools.pairwise((0, 6, 10, 14, 18, 22, 26, 32)))


def _run(argv, what, ok=(0,), strict=False):
    """``(exit code, stdout)`` of ``argv`` (no shell, C locale). Not running, an exit code not
    in ``ok``, or (``strict``) anything on stderr raises, naming ``what``."""
    env = {"LC_ALL": "C", "PATH": f"{os.environ.get('PATH', '')}:{SBIN_PATH}"}
    try:
        proc = __salt__["cmd.run_all"](argv, python_shell=False, env=env, ignore_retcode=True)
    except CommandExecutionError as error:  # it quotes its whole context: keep the reason
        reason = str(error).rpartition("reason: ")[2]
        raise CommandExecutionError(f"cannot run {argv[0]} ({what}): {reason}") from None
    if proc["retcode"] not in ok or (strict and proc["stderr"].strip()):
        output = " ".join((proc["stderr"] or proc["stdout"]).split()) or "no output"
        raise CommandExecutionError(f"{' '.join(argv)} ({what}) exited {proc['retcode']}: {output}")
    return proc["retcode"], proc["stdout"]


def _report(command, fields, target):
    """The rows of an lvm2 JSON report (``pvs``, ``lvs``), sizes in bytes."""
    argv = [command, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", fields, target]
    _, out = _run(argv, f"LVM's view of {target}")
    try:
        return json.loads(out)["report"][0][command[:2]]
    except (ValueError, KeyError, IndexError, TypeError):
        raise CommandExecutionError(f"{command} {target}: unreadable: {out[:200]!r}") from None


def _lsblk(device):
    """The kernel's view of ``device`` (lsblk): type, size, sector size, mounts, children."""
    argv = ["lsblk", "--json", "--bytes", "--output", "NAME,TYPE,SIZE,LOG-SEC,MOUNTPOINTS", device]
    _, out = _run(argv, "the block device", strict=True)
    try:
        (disk,) = json.loads(out)["blockdevices"]
    except (ValueError, KeyError, TypeError):
        raise CommandExecutionError(f"lsblk {device}: unreadable answer {out[:200]!r}") from None
    return disk


def _where(offset):
    return f"{offset // MIB} MiB" if offset % MIB == 0 and offset else f"byte {offset}"


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


def _mbr_entries(sector):
    """(type, first LBA, sectors) of the four entries of an MBR or EBR; [] without one."""
    if len(sector) < 512 or sector[510:512] != b"\x55\xaa":
        return []
    return [struct.unpack_from("<4xB3xII", sector, 446 + 16 * i) for i in range(4)]


def _mbr_starts(fd, sector):
    """Byte offsets of the MBR's partitions and of the logical ones its extended one chains."""
    starts, chain = set(), []
    for kind, lba, count in _mbr_entries(os.pread(fd, 512, 0)):
        if kind in EXTENDED:
            chain = [lba]
        elif kind not in (0, 0xEE) and count:  # 0xEE: GPT's protective entry
            starts.add(lba * sector)
    while 0 < len(chain) < 256:  # a chain that loops ends here
        entries = _mbr_entries(os.pread(fd, 512, chain[-1] * sector))
        (kind, lba, count), (next_kind, next_lba, _) = entries[:2] if entries else [(0,) * 3] * 2
        if kind and count:
            starts.add((chain[-1] + lba) * sector)
        if next_kind not in EXTENDED or not next_lba:
            break
        chain.append(chain[0] + next_lba)
    return starts


def _gpt_starts(fd, size):
    """Byte offsets of the partitions the primary and backup GPT list (512- or 4096-byte
    sectors), and the headers found."""
    starts, headers = set(), []
    for sector in (512, 4096):
        for which, lba in (("primary", 1), ("backup", size // sector - 1)):
            header = os.pread(fd, 92, lba * sector)
            if header[:8] != b"EFI PART":
                continue
            headers.append(f"a GPT header ({which}) at byte {lba * sector}")
            table, count, entry_size = struct.unpack_from("<QII", header, 72)
            entry_size = max(entry_size, 128)
            entries = os.pread(fd, min(count, 1024) * entry_size, table * sector)
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


def _check_blank(device, disk, start, whole):
    """Refuses, saying what is there, unless every area the gate reads holds only zeros and
    the whole-disk probe (``whole``, unless our PV starts the disk) found nothing."""
    data, first = _data_areas(device, disk["size"], start)
    if not data and not (whole and start == 0):
        return
    with open(device, "rb") as handle:
        gpt, headers = _gpt_starts(handle.fileno(), disk["size"])
        starts = sorted(gpt | _mbr_starts(handle.fileno(), disk["log-sec"]))
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
        "is the Docker volume (grain docker_volume, docker:storage:docker_volume)"
        if data
        else "run that probe by hand to see why"
    )
    state = "is not blank" if data else "could not be checked"
    raise CommandExecutionError(f"{device} {state}: {'; '.join(findings)}: refusing it. {todo}")


def _lvm_verdict(device, volume_group, disk_id):
    """``("our-vg" | "our-pv", where our data starts)``; a PV of anyone else raises."""
    (pv,) = _report("pvs", PV_FIELDS, device)
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


def disk_verdict(device, volume_group, disk_id):
    """
    May Docker's storage go on ``device``? ``"blank"``, ``"our-pv"`` (the PV an interrupted
    run left, no VG yet) or ``"our-vg"`` (volume group ``volume_group``, which this formula
    made for ``disk_id``, on this node or another). Anything else raises, saying what is in
    the way: a partition, a device-mapper device, a disk in use (mounted, swap, partitions,
    holders), data; so does any probe that fails or cannot run.

    CLI Example: ``salt '*' docker_storage.disk_verdict /dev/nvme1n1 docker_vol vol-0123``
    """
    disk = _lsblk(device)
    if disk["type"] not in ("disk", "loop"):
        kind = "a partition" if disk["type"] == "part" else f"a {disk['type']} device"
        raise CommandExecutionError(f"{device} is {kind}, not a whole disk: refusing it")
    whole, start = _probe(device), 0
    if whole.get("TYPE") == "LVM2_member" and not whole.get("PTTYPE"):
        verdict, start = _lvm_verdict(device, volume_group, disk_id)
        if verdict == "our-vg":
            return verdict
    used = [f"{c['name']} ({c['type']})" for c in disk.get("children") or []]
    used += [f"mounted at {m}" for m in disk.get("mountpoints") or [] if m]
    if used:
        raise CommandExecutionError(f"{device} is in use ({', '.join(used)}): refusing it")
    _check_blank(device, disk, start, whole)
    return "our-pv" if start else "blank"


# --- what the states change -------------------------------------------------------------------


def _steps(steps, dry_run, what):
    """Run each argument list of ``steps`` unless ``dry_run``; ``{what: [them as text]}``."""
    for step in [] if dry_run else steps:
        _run(step, what)
    return {what: [" ".join(step) for step in steps]} if steps else {}


def _lvs(volume_group):
    return {lv["lv_name"]: lv for lv in _report("lvs", LV_FIELDS, volume_group)}


def volume_group(volume_group, device, disk_id, verdict, dry_run=False):
    """
    Volume group ``volume_group`` on ``device`` as ``disk_verdict`` found it: a blank disk gets
    our PV (UUID ``pv_marker(disk_id)``) and the VG (tagged); our PV the VG; our VG (from this
    node or moved here) its logical volumes activated.
    """
    if verdict == "our-vg":
        inactive = [name for name, lv in _lvs(volume_group).items() if lv["lv_attr"][4:5] != "a"]
        steps = [["vgchange", "--activate", "y", volume_group]] if inactive else []
        return _steps(steps, dry_run, "activated")
    if os.path.exists(f"/dev/{volume_group}"):
        # /dev/<vg> becomes the new VG's directory: a name already taken there is refused.
        raise CommandExecutionError(f"/dev/{volume_group} already exists: choose another VG name")
    steps = [["vgcreate", "--addtag", VG_TAG, volume_group, device]]
    if verdict == "blank":
        steps.insert(0, ["pvcreate", "--norestorefile", "--uuid", pv_marker(disk_id), device])
    return _steps(steps, dry_run, "created")


MKFS = {"xfs": ["mkfs.xfs", "-n", "ftype=1"], "ext4": ["mkfs.ext4", "-q"]}


def filesystem(device, fstype, dry_run=False):
    """A ``fstype`` filesystem on the LV ``device``, made only when it holds nothing at all;
    one holding another filesystem is refused (Salt's blockdev.formatted would reformat it,
    and takes a failed probe for "no filesystem")."""
    found = _probe(device) if os.path.exists(device) or not dry_run else {}  # test mode
    if "error" in found:
        raise CommandExecutionError(found["error"])
    if found.get("TYPE") == fstype:
        return {}
    if found:
        what = found.get("TYPE") or f"a {found.get('PTTYPE')} partition table"
        raise CommandExecutionError(f"{device} holds {what}, not {fstype}: refusing it")
    return _steps([[*MKFS[fstype], device]], dry_run, "made")


def thin_pool(volume_group, name, metadata, extents, metadata_extents, profile, dry_run=False):  # noqa: PLR0917
    """Docker's direct-lvm thin pool ``volume_group/name`` (devicemapper, Engine <= 24): data
    and metadata LVs, converted to a thin pool, with the autoextend ``profile`` attached."""
    lvs, pool, steps = _lvs(volume_group), f"{volume_group}/{name}", []
    if not lvs.get(name, {}).get("lv_attr", "").startswith("t"):  # not a thin pool yet
        for lv, size in ((name, extents), (metadata, metadata_extents)):
            if lv not in lvs:
                steps.append(["lvcreate", "--yes", "-W", "y", "-n", lv, "-l", size, volume_group])
        steps.append(["lvconvert", "-y", "--zero", "n", "-c", "512K", "--thinpool", pool])
        steps[-1] += ["--poolmetadata", f"{volume_group}/{metadata}"]
    if lvs.get(name, {}).get("lv_profile") != profile:
        steps.append(["lvchange", "--metadataprofile", profile, pool])
    return _steps(steps, dry_run, "ran")


def plan(found, mode, grow_lv=True):
    """
    Pure: the steps (``pvresize``, ``lvextend``, ``growfs``) that grow storage of ``mode`` to
    what ``found`` (sizes in bytes: disk, pv, extent, vg_free, lv) shows. A shrunk disk raises.
    """
    extent = found["extent"]
    metadata_reserve = 2 * extent  # LVM's own metadata area: a disk is never all PV
    if found["disk"] < found["pv"]:
        raise CommandExecutionError(
            f"the disk ({found['disk']} bytes) is smaller than its LVM physical volume "
            f"({found['pv']} bytes): it shrank; refusing (shrinking is not supported)"
        )
    steps, vg_free = [], found["vg_free"]
    if found["disk"] - found["pv"] >= extent + metadata_reserve:
        steps.append("pvresize")
        vg_free += found["disk"] - found["pv"] - metadata_reserve
    if grow_lv and vg_free >= extent:
        steps += ["lvextend", "growfs"] if mode == "overlay2" else ["lvextend"]
    return steps


def _lv_may_grow(found, extents):
    """100%FREE: any free space. N%VG: only when N% of the VG's extents (rounded down, as
    lvcreate counted them; with those a pvresize adds) is more than the LV has: lvextend
    rounds up, so comparing sizes grew a new pool by one extent on the next run."""
    if extents.upper().endswith("%FREE"):
        return True
    unit, count = found["extent"], found.get("vg_extents", found["pv"] // found["extent"])
    if "pvresize" in plan(found, "devicemapper", grow_lv=False):
        count += (found["disk"] - found["pv"]) // unit - 2  # plan's metadata reserve
    share = float(extents[:-3]) if extents.upper().endswith("%VG") else 0
    return bool(share) and int(share * count // 100) > found["lv"] // unit


def grow(device, volume_group, logical_volume, mode="overlay2", extents="100%FREE", dry_run=False):  # noqa: PLR0917
    """
    Grow Docker's storage online when its disk grew (EBS ModifyVolume): the PV, then the
    overlay2 LV and its filesystem (``lvextend --resizefs``), or the devicemapper thin pool
    to ``extents`` (``N%VG``) of the grown VG. Nothing is stopped; a shrunk disk raises.

    CLI Example: ``salt '*' docker_storage.grow /dev/nvme1n1 docker_vol docker``
    """
    (pv,) = _report("pvs", PV_FIELDS, device)
    lv = _lvs(volume_group).get(logical_volume)
    if lv is None:
        raise CommandExecutionError(f"{volume_group}/{logical_volume} does not exist")
    found = {key: int(pv[field]) for key, field in SIZES} | {"lv": int(lv["lv_size"])}
    found["disk"] = _lsblk(device)["size"]
    todo = plan(found, mode, grow_lv=_lv_may_grow(found, extents))
    target = "+100%FREE" if extents.upper().endswith("%FREE") else extents
    steps = [["pvresize", device]] if "pvresize" in todo else []
    if "lvextend" in todo:
        resize = ["--resizefs"] if "growfs" in todo else []
        steps.append(["lvextend", *resize, "-l", target, f"{volume_group}/{logical_volume}"])
    return _steps(steps, dry_run, "grew")


def _mountpoint(path):
    with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
        return any(line.split()[4] == path for line in mounts if line.strip())


def move_into(path, target=None, device=None, fstype=None, services=(), dry_run=False):  # noqa: PLR0917
    """
    Before a volume is mounted over ``path``, move what ``path`` holds onto it, once, with
    ``services`` stopped: into ``target`` (a directory on the mounted Docker volume) or onto
    ``device`` (mounted for the move, as ``fstype``). A volume that already holds data (one
    moved here from a destroyed node) is never mixed with it: ``path`` is kept aside instead,
    renamed ``<path>.local-<time>``. Nothing is ever deleted.

    CLI Example: ``salt '*' docker_storage.move_into /var/lib/docker device=/dev/vg/lv fstype=xfs``
    """
    entries = sorted(os.listdir(path)) if os.path.isdir(path) and not _mountpoint(path) else []
    if not entries or dry_run:
        return {"moved": entries, "to": target or device} if entries else {}
    staging = tempfile.mkdtemp(prefix="docker-storage-") if device else None
    mounted = False
    try:
        if staging:
            _run(["mount", "-t", fstype, device, staging], f"mounting {device}")
            mounted = True
        dest = staging or target
        moving = os.path.join(dest, ".moving")  # a move in progress: never taken for data
        if os.path.isdir(moving) and os.listdir(moving):
            raise CommandExecutionError(
                f"an earlier move of {path} onto {device or target} was interrupted: {moving} "
                "holds part of it; finish that move by hand"
            )
        held = [name for name in os.listdir(dest) if name not in ("lost+found", ".moving")]
        for unit in services:
            if __salt__["service.available"](unit) and __salt__["service.status"](unit):
                __salt__["service.stop"](unit)
        if held:
            aside, mode = f"{path}.local-{time.strftime('%Y%m%d%H%M%S')}", os.stat(path)
            os.rename(path, aside)
            os.mkdir(path)
            os.chmod(path, mode.st_mode & 0o7777)
            os.chown(path, mode.st_uid, mode.st_gid)
            return {"kept_aside": aside, "because": f"{device or target} holds {held[:5]}"}
        # GNU mv, in one call: across filesystems it recreates device nodes, FIFOs and sockets
        # as such (Docker keeps a block device node, volumes/backingFsBlockDev) and keeps hard
        # links between the entries. Then renames on the volume put them in place at once.
        os.makedirs(moving, exist_ok=True)
        _run(["mv", "--", *(os.path.join(path, e) for e in entries), moving], "moving")
        for entry in entries:
            os.rename(os.path.join(moving, entry), os.path.join(dest, entry))
        os.rmdir(moving)
        return {"moved": entries, "to": device or target}
    finally:
        if mounted:
            _run(["umount", staging], f"unmounting {device}")
        if staging:
            os.rmdir(staging)


# --- consistent snapshots -----------------------------------------------------------------------

THAW_UNIT = "dockerhosts-thaw-{}"


def _volume_filesystems(device, every=False):
    """One mountpoint per filesystem on the Docker volume's logical volumes (a filesystem is
    frozen through any of its mounts, bind mounts included), or ``every`` mountpoint.
    ``device`` defaults to pillar docker:storage:docker_volume, as for the storage states."""
    # __pillar__, not pillar.get: Salt 3008's pillar.get hands a module "**********".
    device = device or ((__pillar__.get("docker") or {}).get("storage") or {}).get(GRAIN)
    found, children = [], list(_lsblk(docker_volume(device)["device"]).get("children") or [])
    while children:
        child = children.pop(0)
        mounts = sorted(m for m in child.get("mountpoints") or [] if m)
        found += mounts if every else mounts[:1]
        children += child.get("children") or []
    return found


def freeze(seconds=60, device=None):
    """
    Freeze each filesystem on the Docker volume (fsfreeze) so that a snapshot taken now holds
    it consistent: writes wait until ``thaw``. A systemd timer started first thaws each one
    after ``seconds`` whatever becomes of the caller. The frozen mountpoints; ``[]`` when the
    volume holds no filesystem (a devicemapper thin pool: its snapshot is crash-consistent).
    ``device`` as pillar docker:storage:docker_volume.

    CLI Example: ``salt db1 docker_storage.freeze 30``
    """
    mounts = _volume_filesystems(device)
    for index, mount in enumerate(mounts):
        unit, later = THAW_UNIT.format(index), f"--on-active={int(seconds)}"
        # AccuracySec: a timer may otherwise fire up to a minute late (systemd's default).
        timer = [f"--unit={unit}", later, "--timer-property=AccuracySec=1s"]
        _run(["systemd-run", *timer, "fsfreeze", "--unfreeze", mount], "timer")
        try:
            _run(["fsfreeze", "--freeze", mount], f"freezing {mount}")
        except CommandExecutionError:
            thaw(device)
            raise
    return mounts


def thaw(device=None):
    """
    Thaw the filesystems ``freeze`` froze (one not frozen is fine) and stop their timers.

    CLI Example: ``salt db1 docker_storage.thaw``
    """
    mounts = _volume_filesystems(device)
    for index, mount in enumerate(mounts):
        # 1: "Invalid argument", it was not frozen; anything else raises, the timer stays.
        _run(["fsfreeze", "--unfreeze", mount], f"thawing {mount}", ok=(0, 1))
        unit = THAW_UNIT.format(index)
        _run(["systemctl", "stop", f"{unit}.timer", f"{unit}.service"], "timer", ok=(0, 5))
    return mounts


def release(volume_group, device=None):
    """
    Before the Docker volume leaves this node (``salt-run node.replace``, state
    ``docker.release``, Docker stopped first): every filesystem on it unmounted (bind mounts
    and nested mounts first), then its volume group deactivated. The unmounted mountpoints.

    CLI Example: ``salt db1 docker_storage.release docker_vol``
    """
    mounts = sorted(_volume_filesystems(device, every=True), reverse=True)
    for mount in mounts:
        _run(["umount", mount], f"unmounting {mount}")
    _run(["vgchange", "--activate", "n", volume_group], f"deactivating {volume_group}")
    return {"unmounted": mounts, "deactivated": volume_group}
