"""
The disk corpus: every layout this host's tools can put on a disk, built on sparse image files
(through loop devices where a tool needs a block device), for the disk gate to refuse.

Each case builds an image and names what the gate must say it found. A case may also set a
fault: a fake `blkid` (exit code and stderr) put first on PATH for the gate's run.

- whole-disk signatures: filesystems (mkfs.*), swap, bcache, LUKS1/2 (cryptsetup luksFormat),
  LVM physical volumes and groups (pvcreate, vgcreate), md superblocks 0.90/1.0/1.1/1.2 (this
  kernel has no md driver, so `mdadm --build/--create` cannot run: the superblocks are written
  here, checksummed as mdadm does; `mdadm --examine` and libblkid read them);
- partition tables (sgdisk, sfdisk): GPT with 512- and 4096-byte sectors, MBR with primary,
  extended and logical partitions, a hybrid MBR, each with and without filesystems inside;
- zeroed tables: the MBR or the primary GPT zeroed (or both GPTs zapped) with the partitions'
  filesystems left at their offsets (3 MiB, 100 MiB, 1023 MiB, 1.5 GiB through a backup GPT);
- signatures at odd offsets (63 sectors, 1 MiB + 4 KiB, 5 MiB + 512 bytes, ...);
- partial wipes (wipefs -a, the first MiB or GiB zeroed) and stray bytes;
- probe faults (blkid exiting 2 with "Operation not permitted", 4, 8, printing nothing).

Images are removed by the caller; every helper loop device is detached here.
"""

import contextlib
import hashlib
import os
import secrets
import shutil
import struct
import subprocess
from dataclasses import dataclass

import pytest

MIB = 1024 * 1024
# Random per run: the Salt 3008 and 3007 lanes run this corpus at the same time, and LVM sees
# every loop device on the host.
FOREIGN_VG = f"corpus{secrets.token_hex(4)}"
GIB = 1024 * MIB
SECTOR = 512


def run(*cmd, check=True, stdin=None):
    """Run a tool; a case whose tool is not installed here is skipped (bin/setup installs it)."""
    if not shutil.which(cmd[0]):
        pytest.skip(f"{cmd[0]} is not installed (bin/setup)")
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, check=check, input=stdin
    )


@contextlib.contextmanager
def window(image, offset=0, size=None, sector=SECTOR):
    """A loop device over ``size`` bytes of ``image`` from ``offset`` (a partition stand-in)."""
    args = ["losetup", "--find", "--show", "--offset", offset, "--sector-size", sector]
    if size is not None:
        args += ["--sizelimit", size]
    device = run(*args, image).stdout.strip()
    try:
        yield device
    finally:
        run("losetup", "-d", device, check=False)


def make_image(path, size):
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def digest(path):
    """sha256 of the image's content: each 1 MiB that is not all zeros, with where it is (the
    holes of a sparse image are skipped; reading through a loop device may turn them into
    cached zero pages, which SEEK_DATA then reports, so zeros are never hashed)."""
    hasher, seen = hashlib.sha256(), set()
    with open(path, "rb") as handle:
        end, offset = os.fstat(handle.fileno()).st_size, 0
        hasher.update(str(end).encode())
        while offset < end:
            try:
                offset = os.lseek(handle.fileno(), offset, os.SEEK_DATA)
            except OSError:  # no data after offset
                break
            hole = os.lseek(handle.fileno(), offset, os.SEEK_HOLE)
            for chunk in range(offset // MIB, (hole + MIB - 1) // MIB):
                if chunk not in seen:
                    seen.add(chunk)
                    handle.seek(chunk * MIB)
                    data = handle.read(MIB)
                    if data.count(0) != len(data):
                        hasher.update(f"@{chunk}".encode() + data)
            offset = hole
    return hasher.hexdigest()


def write_at(path, offset, data):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def zero(path, offset, length):
    """Zeros over ``length`` bytes at ``offset`` (a hole punched: no real space, fast)."""
    run("fallocate", "--punch-hole", "--offset", offset, "--length", length, path)


# --- filesystems and other signatures ------------------------------------------------------

MKFS = {
    "ext2": ["mkfs.ext2", "-q", "-F"],
    "ext3": ["mkfs.ext3", "-q", "-F"],
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
    "vfat": ["mkfs.vfat"],
    "exfat": ["mkfs.exfat"],
    "ntfs": ["mkfs.ntfs", "-q", "-F", "-f"],
    "f2fs": ["mkfs.f2fs", "-q", "-f"],
    "nilfs2": ["mkfs.nilfs2", "-q", "-f"],
    "jfs": ["mkfs.jfs", "-q"],
    "swap": ["mkswap"],
    "bcache": ["make-bcache", "-B"],
}
# The smallest size each one accepts (xfs: 300 MiB; nilfs2: a little over 128 MiB).
MIN_SIZE = {"xfs": 320 * MIB, "nilfs2": 160 * MIB, "btrfs": 128 * MIB}


def mkfs(image, kind, offset=0, size=None):
    """Filesystem ``kind`` in ``size`` bytes of ``image`` at ``offset``."""
    with window(image, offset, size) as device:
        run(*MKFS[kind], device)


def luks(image, version, offset=0, size=None):
    with window(image, offset, size) as device:
        run(
            "cryptsetup",
            "luksFormat",
            "--batch-mode",
            "--type",
            f"luks{version}",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            "-",
            device,
            stdin="corpus passphrase",
        )


def pv(image, *args, vg=None, offset=0, size=None):
    """An LVM physical volume (and volume group ``vg``) that this formula did not make."""
    with window(image, offset, size) as device:
        try:
            run("pvcreate", "-q", "--norestorefile", *args, device)
            if vg:
                run("vgcreate", "-q", vg, device)
        finally:
            if vg:
                # vgchange -an needs device-mapper; forget the VG from the cache only.
                run("pvscan", "--cache", check=False)


# md superblocks, as mdadm writes them (mdadm's super1.c / super0.c).
MD_MAGIC = 0xA92B4EFC


def md_superblock_1(data_sectors, super_offset):
    block = bytearray(1024)
    struct.pack_into("<IIII", block, 0, MD_MAGIC, 1, 0, 0)
    block[16:32] = os.urandom(16)
    block[32:64] = b"corpus:0".ljust(32, b"\0")
    struct.pack_into("<QIIQII", block, 64, 0, 1, 0, data_sectors, 128, 2)
    struct.pack_into("<QQQ", block, 128, 2048, data_sectors, super_offset)
    block[168:184] = os.urandom(16)
    struct.pack_into("<I", block, 220, 2)  # max_dev: the checksum covers 256 + 2 * 2 bytes
    total = sum(struct.unpack_from("<65I", block, 0))
    struct.pack_into("<I", block, 216, ((total & 0xFFFFFFFF) + (total >> 32)) & 0xFFFFFFFF)
    return bytes(block)


def md(image, version, offset=0, size=None):
    """An md RAID member superblock (``version`` 0.90, 1.0, 1.1 or 1.2) in that area."""
    size = size if size is not None else os.path.getsize(image) - offset
    sectors = size // SECTOR
    if version == "0.90":
        block = bytearray(4096)
        struct.pack_into("<IIII", block, 0, MD_MAGIC, 0, 90, 0)
        block[20:24] = os.urandom(4)
        write_at(image, offset + (size & ~(64 * 1024 - 1)) - 64 * 1024, bytes(block))
    elif version == "1.0":
        at = (sectors - 16) & ~7
        write_at(image, offset + at * SECTOR, md_superblock_1(at - 8, at))
    else:
        at = {"1.1": 0, "1.2": 8}[version]
        write_at(image, offset + at * SECTOR, md_superblock_1(sectors - 2048, at))


# --- partition tables ----------------------------------------------------------------------


def sfdisk(image, script, sector=SECTOR):
    with window(image, sector=sector) as device:
        run("sfdisk", "-q", "--no-reread", "--no-tell-kernel", device, stdin=script)


def sgdisk(image, *args, sector=SECTOR):
    with window(image, sector=sector) as device:
        run("sgdisk", *args, device)


def gpt_with(image, kind, start_mib, size_mib, sector=SECTOR):
    """A GPT with one partition holding ``kind`` (None: empty)."""
    first = start_mib * MIB // sector
    sgdisk(image, "-n", f"1:{first}:+{size_mib}M", sector=sector)
    if kind:
        mkfs(image, kind, start_mib * MIB, size_mib * MIB)


def dos_with(image, kind, start_mib, size_mib):
    sfdisk(image, f"label: dos\nstart={start_mib * 2048}, size={size_mib * 2048}, type=83\n")
    if kind:
        mkfs(image, kind, start_mib * MIB, size_mib * MIB)


def primary_gpt_zeroed(image, sector=SECTOR):
    """The protective MBR, primary GPT header and its entries gone; the backup stays."""
    zero(image, 0, 34 * sector if sector == SECTOR else 6 * sector)


# --- the cases -----------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    build: object  # build(image) -> None
    expect: object  # a regex, or a tuple of them, the refusal must match (what was found)
    size: int = 256 * MIB
    sector: int = SECTOR
    # A fake blkid for the gate's run: (exit code, stderr, stdout), or None.
    blkid: tuple | None = None


def case(id, build, expect, size=256 * MIB, **kwargs):
    return Case(id, build, expect, size, **kwargs)


def whole_disk_cases():
    cases = []
    for kind in MKFS:
        expected = {"swap": "swap", "bcache": "bcache"}.get(kind, kind)
        cases.append(
            case(
                f"whole-{kind}",
                lambda image, kind=kind: mkfs(image, kind),
                f"{expected} on the whole disk",
                size=MIN_SIZE.get(kind, 256 * MIB),
            )
        )
    for version in (1, 2):
        cases.append(
            case(
                f"whole-luks{version}",
                lambda image, version=version: luks(image, version),
                "crypto_LUKS on the whole disk",
            )
        )
    for version in ("0.90", "1.0", "1.1", "1.2"):
        cases.append(
            case(
                f"whole-md-{version}",
                lambda image, version=version: md(image, version),
                "linux_raid_member on the whole disk",
            )
        )
    cases += [
        case("foreign-pv", pv, "physical volume without a volume group"),
        case(
            "foreign-vg",
            lambda image: pv(image, vg=FOREIGN_VG),
            f"physical volume of volume group '{FOREIGN_VG}'",
        ),
        case(
            "foreign-pv-two-metadata-copies",
            lambda image: pv(image, "--pvmetadatacopies", "2"),
            "physical volume without a volume group",
        ),
        case(
            "foreign-pv-label-in-sector-3",
            lambda image: pv(image, "--labelsector", "3"),
            "physical volume without a volume group",
        ),
    ]
    return cases


def table_cases():
    logical = (
        "label: dos\n"
        "start=2048, size=20480, type=83\n"
        "start=22528, size=409600, type=5\n"
        "start=24576, size=40960, type=83\n"
        "start=67584, size=40960, type=83\n"
    )
    return [
        case("gpt-empty", lambda image: sgdisk(image, "-o"), "gpt partition table"),
        case(
            "gpt-partition-blank",
            lambda image: gpt_with(image, None, 1, 20),
            r"gpt partition table.*a partition at 1 MiB",
        ),
        case(
            "gpt-partition-ext4",
            lambda image: gpt_with(image, "ext4", 1, 20),
            "ext4 in a partition at 1 MiB",
        ),
        case(
            "gpt-4k-sectors-xfs",
            lambda image: gpt_with(image, "xfs", 1, 310, sector=4096),
            "xfs in a partition at 1 MiB",
            size=400 * MIB,
            sector=4096,
        ),
        case(
            "gpt-many-partitions",
            lambda image: sgdisk(image, *[f"-n{i}:0:+4M" for i in range(1, 41)]),
            r"a partition at 1 MiB.*and \d+ more",
        ),
        case(
            "dos-partition-ext4",
            lambda image: dos_with(image, "ext4", 1, 20),
            "ext4 in a partition at 1 MiB",
        ),
        case("dos-empty-table", lambda image: sfdisk(image, "label: dos\n"), "dos partition table"),
        case(
            "dos-logical-partitions",
            lambda image: (sfdisk(image, logical), mkfs(image, "ext4", 33 * MIB, 20 * MIB)),
            r"ext4 in a partition at 33 MiB",
        ),
        case(
            "dos-63-sector-start",
            lambda image: (
                sfdisk(image, "label: dos\nstart=63, size=40000, type=83\n"),
                mkfs(image, "ext4", 63 * SECTOR, 40000 * SECTOR),
            ),
            "ext4 in a partition at byte 32256",
        ),
        case(
            "hybrid-mbr",
            lambda image: (gpt_with(image, "ext4", 1, 20), sgdisk(image, "-h", "1")),
            "ext4 in a partition at 1 MiB",
        ),
    ]


def zeroed_table_cases():
    def mbr_zeroed(kind, start_mib, size_mib=40):
        def build(image):
            dos_with(image, kind, start_mib, size_mib)
            zero(image, 0, SECTOR)

        return build

    def gpt_zapped(kind, start_mib, size_mib=40):
        def build(image):
            gpt_with(image, kind, start_mib, size_mib)
            sgdisk(image, "--zap-all")

        return build

    def backup_gpt_only(kind, start_mib, size_mib=40):
        def build(image):
            gpt_with(image, kind, start_mib, size_mib)
            primary_gpt_zeroed(image)

        return build

    return [
        # The cases: a partition's filesystem left after its table was zeroed.
        case("ext4-at-3MiB-mbr-zeroed", mbr_zeroed("ext4", 3), "ext4 at 3 MiB"),
        case("ext4-at-100MiB-mbr-zeroed", mbr_zeroed("ext4", 100), "ext4 at 100 MiB"),
        case("xfs-at-1MiB-gpt-zapped", gpt_zapped("xfs", 1, 310), "xfs at 1 MiB", size=400 * MIB),
        case("btrfs-at-7MiB-gpt-zapped", gpt_zapped("btrfs", 7, 130), "btrfs at 7 MiB"),
        case("vfat-at-2MiB-mbr-zeroed", mbr_zeroed("vfat", 2), "vfat at 2 MiB"),
        case("swap-at-9MiB-gpt-zapped", gpt_zapped("swap", 9), "swap at 9 MiB"),
        case(
            "ext4-at-1023MiB-gpt-zapped",
            gpt_zapped("ext4", 1023, 40),
            "ext4 at 1023 MiB",
            size=1100 * MIB,
        ),
        case(
            "backup-gpt-lists-ext4-at-1MiB",
            backup_gpt_only("ext4", 1),
            r"a GPT header \(backup\).*ext4 in a partition at 1 MiB",
        ),
        case(
            "backup-gpt-lists-ext4-beyond-the-first-GiB",
            backup_gpt_only("ext4", 1536),
            "ext4 in a partition at 1536 MiB",
            size=2 * GIB,
        ),
        case(
            "backup-gpt-4k-sectors",
            lambda image: (
                gpt_with(image, "ext4", 2, 40, sector=4096),
                primary_gpt_zeroed(image, sector=4096),
            ),
            r"a GPT header \(backup\).*ext4 in a partition at 2 MiB",
            sector=4096,
        ),
        case(
            "luks-at-10MiB-table-zeroed",
            lambda image: (
                dos_with(image, None, 10, 40),
                luks(image, 2, 10 * MIB, 40 * MIB),
                zero(image, 0, SECTOR),
            ),
            "crypto_LUKS at 10 MiB",
        ),
        case(
            "pv-at-1MiB-table-zeroed",
            lambda image: (
                dos_with(image, None, 1, 40),
                pv(image, offset=MIB, size=40 * MIB),
                zero(image, 0, SECTOR),
            ),
            "LVM2_member at 1 MiB",
        ),
        case(
            "md-1.2-at-2MiB-table-zeroed",
            lambda image: md(image, "1.2", 2 * MIB, 40 * MIB),
            "linux_raid_member at 2 MiB",
        ),
        case(
            "md-0.90-in-the-last-MiB",
            lambda image: md(image, "0.90", 200 * MIB, 56 * MIB),
            "linux_raid_member",
        ),
    ]


def odd_offset_cases():
    # (id, filesystem, its offset, its size, the image's size): starts no table would give.
    odd = [
        ("ext4-at-1MiB-plus-4KiB", "ext4", MIB + 4096, 40 * MIB, 256 * MIB),
        ("xfs-at-5MiB-plus-512", "xfs", 5 * MIB + 512, 310 * MIB, 400 * MIB),
        ("ext4-at-63-sectors", "ext4", 63 * SECTOR, 40 * MIB, 256 * MIB),
        ("btrfs-at-513MiB-plus-64KiB", "btrfs", 513 * MIB + 65536, 200 * MIB, 800 * MIB),
    ]
    return [
        case(
            name,
            lambda image, kind=kind, at=at, length=length: mkfs(image, kind, at, length),
            f"data at byte {at}" if kind == "xfs" else "data at byte",
            size=size,
        )
        for name, kind, at, length, size in odd
    ]


def partial_wipe_cases():
    def wiped(kind):
        def build(image):
            mkfs(image, kind)
            with window(image) as device:
                run("wipefs", "-a", "-q", device)

        return build

    def head_zeroed(kind, length, size=None):
        def build(image):
            mkfs(image, kind, 0, size)
            zero(image, 0, length)

        return build

    return [
        case("ext4-wipefs-a", wiped("ext4"), "data at byte"),
        case("xfs-wipefs-a", wiped("xfs"), "data at byte", size=MIN_SIZE["xfs"]),
        case("ext4-first-MiB-zeroed", head_zeroed("ext4", MIB), "data at byte"),
        case(
            "ext4-first-GiB-zeroed",
            head_zeroed("ext4", GIB),
            "data at byte",
            size=3 * GIB,
        ),
        case(
            "stray-bytes-at-4MiB",
            lambda image: write_at(image, 4 * MIB, b"x"),
            "data at byte 4194304",
        ),
        case(
            "one-byte-at-the-end-of-the-first-GiB",
            lambda image: write_at(image, GIB - 1, b"\1"),
            f"data at byte {GIB - 1}",
            size=2 * GIB,
        ),
        case(
            "one-byte-in-the-last-MiB",
            lambda image: write_at(image, 256 * MIB - 300, b"\1"),
            f"data at byte {256 * MIB - 300}",
        ),
        case(
            "last-byte",
            lambda image: write_at(image, 3 * GIB - 1, b"\1"),
            f"data at byte {3 * GIB - 1}",
            size=3 * GIB,
        ),
    ]


def fault_cases():
    eperm = (2, "blkid: Operation not permitted\n", "")
    return [
        # The case: data at 4 MiB while blkid exits 2 ("nothing") on a probe error.
        case(
            "data-at-4MiB-blkid-eperm",
            lambda image: mkfs(image, "ext4", 4 * MIB, 40 * MIB),
            (r"data at byte 41953\d\d", "blkid.*Operation not permitted"),
            blkid=eperm,
        ),
        case("blank-disk-blkid-eperm", lambda image: None, "Operation not permitted", blkid=eperm),
        case("blank-disk-blkid-exit-4", lambda image: None, "exited 4", blkid=(4, "", "")),
        case(
            "blank-disk-blkid-ambivalent",
            lambda image: None,
            "exited 8",
            blkid=(8, "ambivalent result\n", ""),
        ),
        case(
            "blank-disk-blkid-found-nothing-named",
            lambda image: None,
            "exited 0",
            blkid=(0, "", ""),
        ),
    ]


def refused_cases():
    return [
        *whole_disk_cases(),
        *table_cases(),
        *zeroed_table_cases(),
        *odd_offset_cases(),
        *partial_wipe_cases(),
        *fault_cases(),
    ]


def fake_blkid(directory, returncode, stderr, stdout):
    """A `blkid` that prints ``stdout``/``stderr`` and exits ``returncode``."""
    path = directory / "blkid"
    path.write_text(
        "#!/bin/sh\n"
        f"printf %s {shell_quote(stdout)}\n"
        f"printf %s {shell_quote(stderr)} >&2\n"
        f"exit {returncode}\n"
    )
    path.chmod(0o755)
    return directory


def shell_quote(text):
    return "'" + text.replace("'", "'\\''") + "'"


def loader_modules(storage, grains=None, functions=None):
    """configure_loader_modules for the docker_storage module ``storage``: its commands run
    through Salt's own cmd.run_all, as on a minion."""
    from salt.config import DEFAULT_MINION_OPTS  # noqa: PLC0415 - only the tests that use it
    from salt.modules import cmdmod  # noqa: PLC0415

    os_grains = {"kernel": "Linux", "os": "Debian", "os_family": "Debian"}
    return {
        storage: {
            "__grains__": grains if grains is not None else {},
            "__salt__": {"cmd.run_all": cmdmod.run_all, **(functions or {})},
            "__context__": {},
        },
        cmdmod: {
            "__opts__": DEFAULT_MINION_OPTS.copy(),
            "__grains__": os_grains,
            "__salt__": {},
            "__context__": {},
        },
    }
