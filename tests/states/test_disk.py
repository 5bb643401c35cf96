"""
The Docker disk check, fail-closed, on real loop devices: one case per situation (blank,
filesystems, partition tables, a backup GPT alone, a filesystem left in a partition after
its table was wiped, stray data, PVs of other groups, our own half-made PV, our own VG,
mounted, not a block device, a partition, the root disk, probe errors, lvm2 missing), then
the storage states through salt-call: the VG made on a blank disk and marked as ours, an
interrupted run finished, a foreign disk refused and left byte for byte as it was, a
filesystem made only on a blank LV stand-in.

This host's kernel has no device-mapper: PV and VG metadata work on loop devices, LVs need
the VM tier (tests/e2e). Every loop device, VG, mount and image is removed afterwards.
"""

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess

import pytest
from salt.exceptions import CommandExecutionError

from tools.salt_repo import load_module, local_salt_call

pytestmark = [
    pytest.mark.states,
    pytest.mark.skipif(not shutil.which("pvcreate"), reason="lvm2 is not installed (bin/setup)"),
]

MIB = 1024 * 1024
XFS_MIN = 320 * MIB  # mkfs.xfs refuses less than 300 MiB (sparse images: no real space)


def run(*cmd, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


@contextlib.contextmanager
def loop_device(path, size=64 * MIB, partscan=False):
    with open(path, "wb") as handle:
        handle.truncate(size)
    args = ["losetup", "--find", "--show", *(["--partscan"] if partscan else []), str(path)]
    device = run(*args).stdout.strip()
    try:
        yield device
    finally:
        run("umount", device, check=False)
        for vg in run("pvs", "--noheadings", "-o", "vg_name", device, check=False).stdout.split():
            run("vgremove", "-f", vg, check=False)
        run("pvremove", "-ff", "-y", device, check=False)
        run("losetup", "-d", device, check=False)


def partition_of(device):
    """Partition 1 (20 MiB) made on ``device``: its device node; skips on a udev-less host."""
    run("sgdisk", "-n", "1:2048:+20M", device)
    run("partx", "-u", device, check=False)
    partition = f"{device}p1"
    if not os.path.exists(partition):
        pytest.skip("no partition device node (udev-less host)")
    return partition


@pytest.fixture
def loop(tmp_path):
    with loop_device(tmp_path / "disk.img") as device:
        yield device


@pytest.fixture
def vg_name():
    return f"dhtest{secrets.token_hex(4)}"


@pytest.fixture
def docker_host():
    module = load_module("modules", "docker_host")
    module.__grains__ = {}
    return module


def head_digest(device, size=4 * MIB):
    with open(device, "rb") as handle:
        return hashlib.sha256(handle.read(size)).hexdigest()


# --- the verdict, one case per situation --------------------------------------------------------


def test_blank_disk_may_be_used(docker_host, loop, vg_name):
    assert docker_host.disk_verdict(loop, vg_name, loop) == "blank"


def test_filesystem_on_the_whole_disk_is_refused(docker_host, loop, vg_name):
    run("mkfs.ext4", "-q", "-F", loop)
    with pytest.raises(CommandExecutionError, match=r"not blank \(ext4 at 0x438"):
        docker_host.disk_verdict(loop, vg_name, loop)


def test_xfs_is_refused(docker_host, tmp_path, vg_name):
    with loop_device(tmp_path / "xfs.img", size=XFS_MIN) as device:
        run("mkfs.xfs", "-q", "-f", device)
        with pytest.raises(CommandExecutionError, match=r"not blank \(xfs at 0x0"):
            docker_host.disk_verdict(device, vg_name, device)


def test_gpt_partition_table_is_refused(docker_host, loop, vg_name):
    run("sgdisk", "-n", "1:2048:+10M", loop)
    with pytest.raises(CommandExecutionError, match=r"gpt at 0x200.*PMBR"):
        docker_host.disk_verdict(loop, vg_name, loop)


def test_dos_partition_table_is_refused(docker_host, loop, vg_name):
    with open(loop, "r+b") as handle:
        sector = bytearray(512)
        sector[446 + 4] = 0x83
        sector[446 + 8 : 446 + 16] = (2048).to_bytes(4, "little") + (8192).to_bytes(4, "little")
        sector[510:512] = b"\x55\xaa"
        handle.write(sector)
    with pytest.raises(CommandExecutionError, match="dos at 0x1fe"):
        docker_host.disk_verdict(loop, vg_name, loop)


def test_backup_gpt_alone_is_refused(docker_host, loop, vg_name):
    run("sgdisk", "-n", "1:2048:+10M", loop)
    with open(loop, "r+b") as handle:  # wipe the protective MBR, primary header and entries
        handle.write(b"\0" * 34 * 512)
    with pytest.raises(CommandExecutionError, match=rf"a GPT header at {64 * MIB - 512}"):
        docker_host.disk_verdict(loop, vg_name, loop)


def test_filesystem_left_after_the_table_was_wiped_is_refused(docker_host, tmp_path, vg_name):
    with loop_device(tmp_path / "parted.img", partscan=True) as device:
        partition = partition_of(device)
        run("mkfs.ext4", "-q", "-F", partition)
        run("sgdisk", "--zap-all", device)
        run("partx", "-d", device, check=False)
        with pytest.raises(CommandExecutionError, match="ext4 at offset 1048576"):
            docker_host.disk_verdict(device, vg_name, device)


def test_stray_data_where_tables_live_is_refused(docker_host, loop, vg_name):
    with open(loop, "r+b") as handle:
        handle.seek(300 * 1024)
        handle.write(b"leftover")
    with pytest.raises(CommandExecutionError, match=f"data at byte {300 * 1024}"):
        docker_host.disk_verdict(loop, vg_name, loop)


def test_physical_volume_of_another_group_is_refused(docker_host, loop, vg_name):
    run("pvcreate", "-q", loop)
    run("vgcreate", "-q", f"{vg_name}x", loop)
    with pytest.raises(CommandExecutionError, match=f"volume group '{vg_name}x', not"):
        docker_host.disk_verdict(loop, vg_name, loop)


def test_foreign_physical_volume_without_a_group_is_refused(docker_host, loop, vg_name):
    run("pvcreate", "-q", loop)
    with pytest.raises(CommandExecutionError, match="that this formula did not create"):
        docker_host.disk_verdict(loop, vg_name, loop)


def test_our_half_made_physical_volume_is_recognised(docker_host, loop, vg_name):
    marker = docker_host.pv_marker("vol-0123456789abcdef0")
    run("pvcreate", "-q", "--norestorefile", "--uuid", marker, loop)
    assert docker_host.disk_verdict(loop, vg_name, "vol-0123456789abcdef0") == "our-pv"
    # The same PV is not ours for another disk id.
    with pytest.raises(CommandExecutionError, match="did not create"):
        docker_host.disk_verdict(loop, vg_name, "vol-0fffffffffffffff0")


def test_our_volume_group_is_recognised(docker_host, loop, vg_name):
    run("pvcreate", "-q", loop)
    run("vgcreate", "-q", vg_name, loop)
    assert docker_host.disk_verdict(loop, vg_name, loop) == "our-vg"


def test_lvm2_missing_refuses_a_physical_volume(docker_host, loop, vg_name, monkeypatch):
    run("pvcreate", "-q", loop)
    run("vgcreate", "-q", vg_name, loop)
    monkeypatch.setattr(docker_host.shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(CommandExecutionError, match="pvs is not installed"):
        docker_host.disk_verdict(loop, vg_name, loop)


def test_mounted_disk_is_refused(docker_host, loop, vg_name, tmp_path):
    run("mkfs.ext4", "-q", "-F", loop)
    (tmp_path / "mnt").mkdir()
    run("mount", loop, str(tmp_path / "mnt"))
    try:
        with pytest.raises(CommandExecutionError, match="is mounted or swap"):
            docker_host.disk_verdict(loop, vg_name, loop)
    finally:
        run("umount", str(tmp_path / "mnt"), check=False)


def test_regular_file_is_refused(docker_host, tmp_path, vg_name):
    image = tmp_path / "file.img"
    image.write_bytes(b"\0" * MIB)
    with pytest.raises(CommandExecutionError, match="is not a block device"):
        docker_host.disk_verdict(str(image), vg_name, str(image))


def test_character_device_is_refused(docker_host, vg_name):
    with pytest.raises(CommandExecutionError, match="is a character device"):
        docker_host.disk_verdict("/dev/null", vg_name, "/dev/null")


def test_missing_device_is_refused(docker_host, vg_name):
    with pytest.raises(CommandExecutionError, match="No such file"):
        docker_host.disk_verdict("/dev/dh-no-such-disk", vg_name, "x")


def test_partition_is_refused(docker_host, tmp_path, vg_name):
    with loop_device(tmp_path / "parted.img", partscan=True) as device:
        partition = partition_of(device)
        with pytest.raises(CommandExecutionError, match="is a partition, not a whole disk"):
            docker_host.disk_verdict(partition, vg_name, partition)


def test_root_disk_is_refused(docker_host, loop, vg_name, monkeypatch):
    # The root filesystem here is not on a block device: pretend the loop device holds it.
    sys_dir = docker_host._sys_block(loop)
    monkeypatch.setattr(docker_host, "_root_disks", lambda: {sys_dir})
    with pytest.raises(CommandExecutionError, match="holds the root filesystem"):
        docker_host.disk_verdict(loop, vg_name, loop)


@pytest.mark.parametrize("failing", ["wipefs", "blkid"])
def test_probe_errors_refuse(docker_host, loop, vg_name, monkeypatch, failing):
    real_run = docker_host._run

    def broken(cmd):
        if cmd[0] == failing:
            return 1, "", f"{failing}: probe failed"
        return real_run(cmd)

    monkeypatch.setattr(docker_host, "_run", broken)
    with pytest.raises(CommandExecutionError, match=f"{failing}.*failed"):
        docker_host.disk_verdict(loop, vg_name, loop)


def test_probe_that_cannot_run_refuses(docker_host, loop, vg_name, monkeypatch):
    def missing(cmd, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", cmd[0])

    monkeypatch.setattr(docker_host.subprocess, "run", missing)
    with pytest.raises(CommandExecutionError, match="cannot probe"):
        docker_host.disk_verdict(loop, vg_name, loop)


# --- the states, through salt-call -------------------------------------------------------


@pytest.fixture(scope="module")
def salt_call(tmp_path_factory, repo_root):
    local = local_salt_call(tmp_path_factory.mktemp("disk-minion"), "disk-states", repo_root)

    def call(*args):
        returncode, answer, _ = local(*args)
        return returncode, answer

    assert call("saltutil.sync_all")[0] == 0
    return call


def single(salt_call, function, **kwargs):
    rc, ret = salt_call("state.single", function, *(f"{k}={v}" for k, v in kwargs.items()))
    (result,) = ret.values()
    return rc, result


def pv_fields(device):
    """lvm2's JSON report of the PV on ``device`` (pv_uuid, vg_name, vg_tags)."""
    out = run("pvs", "--reportformat", "json", "-o", "pv_uuid,vg_name,vg_tags", device).stdout
    (pv,) = json.loads(out)["report"][0]["pv"]
    return pv


def test_volume_group_is_made_on_a_blank_disk_and_marked(salt_call, docker_host, loop, vg_name):
    rc, checked = single(salt_call, "docker_storage.disk_checked", name=vg_name, device=loop)
    assert (rc, checked["result"]) == (0, True), checked
    rc, made = single(salt_call, "docker_storage.volume_group_present", name=vg_name, device=loop)
    assert made["result"] is True, made
    assert made["changes"]["volume_group"] == vg_name
    fields = pv_fields(loop)
    assert fields["vg_name"] == vg_name
    assert fields["vg_tags"] == "docker_host"
    assert fields["pv_uuid"] == docker_host.pv_marker(loop)
    rc, again = single(salt_call, "docker_storage.volume_group_present", name=vg_name, device=loop)
    assert (again["result"], again["changes"]) == (True, {})


def test_interrupted_run_is_finished(salt_call, docker_host, loop, vg_name):
    # What a run that stopped between pvcreate and vgcreate leaves behind.
    run("pvcreate", "-q", "--norestorefile", "--uuid", docker_host.pv_marker(loop), loop)
    _rc, checked = single(salt_call, "docker_storage.disk_checked", name=vg_name, device=loop)
    assert checked["result"] is True
    assert "a previous run made" in checked["comment"]
    _, made = single(salt_call, "docker_storage.volume_group_present", name=vg_name, device=loop)
    assert made["result"] is True, made
    assert pv_fields(loop)["vg_name"] == vg_name


@pytest.mark.parametrize("prepare", ["ext4", "foreign-pv", "gpt"])
def test_foreign_disk_is_refused_and_left_as_it_was(salt_call, loop, vg_name, prepare):
    if prepare == "ext4":
        run("mkfs.ext4", "-q", "-F", loop)
    elif prepare == "foreign-pv":
        run("pvcreate", "-q", loop)
    else:
        run("sgdisk", "-n", "1:2048:+10M", loop)
    before = head_digest(loop)
    rc, checked = single(salt_call, "docker_storage.disk_checked", name=vg_name, device=loop)
    assert rc != 0
    assert checked["result"] is False
    assert "refusing" in checked["comment"]
    rc, made = single(salt_call, "docker_storage.volume_group_present", name=vg_name, device=loop)
    assert (rc != 0, made["result"]) == (True, False)
    assert head_digest(loop) == before


def test_filesystem_is_made_once_and_never_over_another(salt_call, tmp_path):
    with loop_device(tmp_path / "lv.img", size=XFS_MIN) as lv:
        _, made = single(salt_call, "docker_storage.filesystem_present", name=lv, fstype="xfs")
        assert made["result"] is True and made["changes"] == {"filesystem": "xfs"}, made
        assert run("blkid", "-p", "-s", "TYPE", "-o", "value", lv).stdout.strip() == "xfs"
        _rc, again = single(salt_call, "docker_storage.filesystem_present", name=lv, fstype="xfs")
        assert (again["result"], again["changes"]) == (True, {})
        before = head_digest(lv)
        _, other = single(salt_call, "docker_storage.filesystem_present", name=lv, fstype="ext4")
        assert other["result"] is False
        assert "holds xfs, not ext4: refusing" in other["comment"]
        assert head_digest(lv) == before
