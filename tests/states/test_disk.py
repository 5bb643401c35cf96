"""
The Docker disk gate, fail-closed, on real loop devices: the disk corpus (tests/states/
disk_corpus.py: every layout this host's tools make, zeroed tables, odd offsets, partial wipes,
probe faults), each refused, naming what was found, the image byte for byte as it was; blank
disks and our own (half-made) volume group accepted; a disk that is mounted, in use, a
partition, the root disk, not a block device, refused; then the storage states through
salt-call: the VG made on a blank disk and marked as ours, an interrupted run finished, a
foreign disk refused and left as it was, a filesystem made only on a blank LV stand-in.

This host's kernel has no device-mapper: PV and VG metadata work on loop devices, LVs need
the VM tier (tests/e2e). Every loop device, VG, mount and image is removed afterwards.
"""

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess

import pytest
from salt.exceptions import CommandExecutionError

from tests.states import disk_corpus as corpus
from tools.salt_repo import load_module, local_salt_call

pytestmark = [
    pytest.mark.states,
    pytest.mark.skipif(not shutil.which("pvcreate"), reason="lvm2 is not installed (bin/setup)"),
]

MIB, GIB = corpus.MIB, corpus.GIB
XFS_MIN = 320 * MIB  # mkfs.xfs refuses less than 300 MiB (sparse images: no real space)
# Names of this run's own: the 3008 and 3007 lanes run at the same time, LVM sees every loop
# device on the host, and two PVs with one UUID (derived from the volume id) confuse it.
VG = f"dhtest{secrets.token_hex(4)}"
VOLUME_ID = f"vol-0{secrets.token_hex(8)}"


@pytest.fixture(scope="module", autouse=True)
def lvm_system_dir(tmp_path_factory):
    """LVM's metadata backups and archives of the tests' VGs go to a temp dir (LVM_SYSTEM_DIR,
    inherited by the module's commands and salt-call), not into the host's /etc/lvm."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LVM_SYSTEM_DIR", str(tmp_path_factory.mktemp("lvm")))
        yield


def run(*cmd, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


@contextlib.contextmanager
def attached(image, sector=512, partscan=False):
    """``image`` on a loop device; our test VGs on it removed and the device detached after."""
    args = ["losetup", "--find", "--show", "--sector-size", str(sector)]
    device = run(*args, *(["--partscan"] if partscan else []), str(image)).stdout.strip()
    try:
        yield device
    finally:
        run("umount", device, check=False)
        for vg in run("pvs", "--noheadings", "-o", "vg_name", device, check=False).stdout.split():
            if vg.startswith("dhtest"):
                run("vgremove", "-f", vg, check=False)
        run("losetup", "-d", device, check=False)


@contextlib.contextmanager
def loop_device(path, size=64 * MIB, partscan=False):
    with attached(corpus.make_image(path, size), partscan=partscan) as device:
        yield device


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
    return VG


@pytest.fixture
def volume_id():
    return VOLUME_ID


STORAGE = load_module("modules", "docker_storage")


@pytest.fixture
def configure_loader_modules():
    return corpus.loader_modules(STORAGE)


@pytest.fixture
def storage():
    return STORAGE


def refusal(storage, device, vg_name, disk_id):
    with pytest.raises(CommandExecutionError) as refused:
        storage.disk_verdict(device, vg_name, disk_id)
    return str(refused.value)


# --- the corpus: every layout refused, naming what was found, the disk untouched ---------------


@pytest.mark.parametrize("item", corpus.refused_cases(), ids=lambda item: item.id)
def test_corpus_layout_is_refused_untouched(storage, tmp_path, item, monkeypatch):
    image = corpus.make_image(tmp_path / "disk.img", item.size)
    item.build(image)
    before = corpus.digest(image)
    if item.blkid:
        fakes = tmp_path / "bin"
        fakes.mkdir()
        corpus.fake_blkid(fakes, *item.blkid)
        monkeypatch.setenv("PATH", f"{fakes}:{os.environ['PATH']}")
    with attached(image, item.sector) as device:
        message = refusal(storage, device, VG, VOLUME_ID)
        assert corpus.digest(image) == before, "the gate wrote to the disk"
    assert message.startswith(device) and "refusing it" in message, message
    for expected in item.expect if isinstance(item.expect, tuple) else (item.expect,):
        assert re.search(expected, message), message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("size", "sector"),
    [(64 * MIB, 512), (64 * MIB + 7 * 512, 512), (GIB, 512), (3 * GIB, 512), (256 * MIB, 4096)],
    ids=["64MiB", "odd-size", "1GiB", "3GiB", "4k-sectors"],
)
def test_blank_disk_may_be_used(storage, tmp_path, size, sector):
    image = corpus.make_image(tmp_path / "blank.img", size)
    with attached(image, sector) as device:
        assert storage.disk_verdict(device, VG, VOLUME_ID) == "blank"
    assert corpus.digest(image) == corpus.digest(corpus.make_image(tmp_path / "ref.img", size))


# --- LVM: ours or not ----------------------------------------------------------------------


def test_our_half_made_physical_volume_is_recognised(storage, loop, vg_name, volume_id):
    marker = storage.pv_marker(volume_id)
    run("pvcreate", "-q", "--norestorefile", "--uuid", marker, loop)
    assert storage.disk_verdict(loop, vg_name, volume_id) == "our-pv"
    # The same PV is not ours for another disk id.
    message = refusal(storage, loop, vg_name, "vol-0fffffffffffffff0")
    assert "did not make for vol-0fffffffffffffff0" in message


def test_our_half_made_physical_volume_with_data_after_it_is_refused(
    storage, loop, vg_name, volume_id
):
    run("pvcreate", "-q", "--norestorefile", "--uuid", storage.pv_marker(volume_id), loop)
    corpus.write_at(loop, 5 * MIB, b"not ours")
    assert "data at byte 5242880" in refusal(storage, loop, vg_name, volume_id)


def test_our_volume_group_is_recognised(storage, loop, vg_name, volume_id):
    run("pvcreate", "-q", "--norestorefile", "--uuid", storage.pv_marker(volume_id), loop)
    run("vgcreate", "-q", "--addtag", "docker_host", vg_name, loop)
    assert storage.disk_verdict(loop, vg_name, volume_id) == "our-vg"


def our_volume_group(image, volume_id, vg=VG, *, tag="docker_host", uuid=None):
    """What a node's highstate leaves on its Docker volume (PV with the marker UUID, tagged
    VG; this kernel makes no LVs), and a filesystem with Docker data where the first LV sits."""
    with corpus.window(image) as device:
        uuid = uuid or STORAGE.pv_marker(volume_id)
        run("pvcreate", "-q", "--norestorefile", "--uuid", uuid, device)
        run("vgcreate", "-q", *(["--addtag", tag] if tag else []), vg, device)
        pe_start = int(run("pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pe_start",
                           device).stdout)  # fmt: skip
    corpus.mkfs(image, "ext4", pe_start, 32 * MIB)
    return pe_start


def test_our_volume_group_moved_from_another_node_is_ours(storage, tmp_path, volume_id):
    """Node A's volume (any device name there) attached to node B under another name: the
    same volume id makes it ours, whole, without a change; nothing else does."""
    image = corpus.make_image(tmp_path / "ebs.img", 256 * MIB)
    our_volume_group(image, volume_id)
    before = corpus.digest(image)
    with attached(corpus.make_image(tmp_path / "other.img", MIB)), attached(image) as device:
        assert device != "/dev/loop0"  # another device name than node A's window had
        assert storage.disk_verdict(device, VG, volume_id) == "our-vg"
        assert storage.volume_group(VG, device, volume_id, "our-vg") == {}
        message = refusal(storage, device, VG, "vol-0ffffffffffffffff")
        assert f"volume group '{VG}' that this formula did not make for vol-0ffff" in message
        message = refusal(storage, device, "docker_data", volume_id)
        assert (
            f"which this formula made for {volume_id}, but docker:storage:volume_group" in message
        )
        assert corpus.digest(image) == before


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"tag": None}, "that this formula did not make"),
        ({"uuid": "abcdef-abcd-abcd-abcd-abcd-abcd-abcdef"}, "that this formula did not make"),
    ],
    ids=["untagged-vg", "foreign-pv-uuid"],
)
def test_a_volume_group_with_our_name_that_is_not_ours_is_refused(
    storage, tmp_path, volume_id, change, expect
):
    image = corpus.make_image(tmp_path / "ebs.img", 256 * MIB)
    our_volume_group(image, volume_id, **change)
    before = corpus.digest(image)
    with attached(image) as device:
        assert expect in refusal(storage, device, VG, volume_id)
        assert corpus.digest(image) == before  # (detaching removes the test VG)


def test_our_volume_group_under_a_partition_table_is_refused(storage, tmp_path, volume_id):
    image = corpus.make_image(tmp_path / "ebs.img", 256 * MIB)
    our_volume_group(image, volume_id)
    corpus.sfdisk(image, "label: dos\nstart=2048, size=20480, type=83\n")  # sector 0 only
    with attached(image) as device:
        assert "a dos partition table on the whole disk" in refusal(storage, device, VG, volume_id)


def test_lvm2_missing_refuses_a_physical_volume(storage, loop, vg_name, tmp_path, monkeypatch):
    run("pvcreate", "-q", loop)
    run("vgcreate", "-q", vg_name, loop)
    (tmp_path / "bin").mkdir()
    for tool in ("blkid", "lsblk"):
        (tmp_path / "bin" / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(storage, "SBIN_PATH", "/nonexistent")
    assert "cannot run pvs" in refusal(storage, loop, vg_name, loop)


def test_failing_pvs_refuses(storage, loop, tmp_path, monkeypatch):
    run("pvcreate", "-q", "--norestorefile", "--uuid", storage.pv_marker(VOLUME_ID), loop)
    run("vgcreate", "-q", "--addtag", "docker_host", VG, loop)
    fakes = tmp_path / "bin"
    fakes.mkdir()
    (fakes / "pvs").write_text("#!/bin/sh\necho '  Cannot use device: locked' >&2\nexit 5\n")
    (fakes / "pvs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fakes}:{os.environ['PATH']}")
    assert "Cannot use device: locked" in refusal(storage, loop, VG, VOLUME_ID)


# --- not a blank whole disk of its own ------------------------------------------------------


def test_mounted_disk_is_refused(storage, loop, vg_name, tmp_path):
    run("mkfs.ext4", "-q", "-F", loop)
    (tmp_path / "mnt").mkdir()
    run("mount", loop, str(tmp_path / "mnt"))
    try:
        assert f"is in use (mounted at {tmp_path}/mnt)" in refusal(storage, loop, vg_name, loop)
    finally:
        run("umount", str(tmp_path / "mnt"), check=False)


@pytest.mark.parametrize("path", ["file.img", "/dev/null", "/dev/dh-no-such-disk"])
def test_what_is_not_a_block_device_is_refused(storage, tmp_path, vg_name, path):
    path = str(corpus.make_image(tmp_path / path, MIB)) if path == "file.img" else path
    assert f"{path}: not a block device" in refusal(storage, path, vg_name, path)


def test_partition_is_refused(storage, tmp_path, vg_name):
    with loop_device(tmp_path / "parted.img", partscan=True) as device:
        partition = partition_of(device)
        message = refusal(storage, partition, vg_name, partition)
        assert "is a partition, not a whole disk" in message
        # And the disk: in use through its partition.
        assert "is in use (loop" in refusal(storage, device, vg_name, device)


def test_root_disk_is_refused(storage, loop, vg_name, tmp_path, monkeypatch):
    # The root filesystem here is not on a block device: lsblk says the loop device holds it.
    answer = {"name": "loop0", "type": "loop", "size": 1, "log-sec": 512, "mountpoints": ["/"]}
    fake = tmp_path / "bin" / "lsblk"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho '{json.dumps({'blockdevices': [answer]})}'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    assert "is in use (mounted at /)" in refusal(storage, loop, vg_name, loop)


@pytest.mark.parametrize(
    "error", [PermissionError(1, "Operation not permitted"), OSError(5, "I/O")]
)
def test_unreadable_disk_is_refused(storage, loop, vg_name, monkeypatch, error):
    def unreadable(*args):
        raise error

    monkeypatch.setattr(storage.os, "preadv", unreadable)
    message = refusal(storage, loop, vg_name, loop)
    assert f"cannot read {loop}" in message and error.strerror in message


def test_short_read_is_refused(storage, loop, vg_name, monkeypatch):
    monkeypatch.setattr(storage.os, "preadv", lambda fd, buffers, offset: 4096)
    assert "short read" in refusal(storage, loop, vg_name, loop)


def test_probe_that_cannot_run_refuses(storage, loop, vg_name, tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "lsblk").symlink_to(shutil.which("lsblk"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(storage, "SBIN_PATH", "/nonexistent")
    message = refusal(storage, loop, vg_name, loop)
    assert message.startswith(f"{loop} could not be checked: cannot run blkid (probe at byte 0)")


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


def test_volume_group_is_made_on_a_blank_disk_and_marked(salt_call, storage, loop, vg_name):
    rc, checked = single(salt_call, "docker_storage.disk_checked", name=vg_name, device=loop)
    assert (rc, checked["result"]) == (0, True), checked
    rc, made = single(salt_call, "docker_storage.volume_group_present", name=vg_name, device=loop)
    assert made["result"] is True, made
    marker = storage.pv_marker(loop)
    assert made["changes"] == {
        "created": [
            f"pvcreate --norestorefile --uuid {marker} {loop}",
            f"vgcreate --addtag docker_host {vg_name} {loop}",
        ]
    }
    fields = pv_fields(loop)
    assert fields["vg_name"] == vg_name
    assert fields["vg_tags"] == "docker_host"
    assert fields["pv_uuid"] == storage.pv_marker(loop)
    rc, again = single(salt_call, "docker_storage.volume_group_present", name=vg_name, device=loop)
    assert (again["result"], again["changes"]) == (True, {})


def test_the_volume_is_probed_once_per_state_run(salt_call, loop, tmp_path, monkeypatch):
    """docker.storage.disk (the gate, then the VG) through state.apply: one blkid probe of
    the volume per run (each state probed it before), the VG made; the next run finds it."""
    calls = tmp_path / "blkid.calls"
    wrapper = tmp_path / "bin" / "blkid"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {shutil.which("blkid")} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{os.environ['PATH']}")
    storage = {"docker_volume": loop, "volume_group": VG, "mode": "overlay2"}
    pillar = json.dumps({"docker": {"storage": storage, "storage_pkgs": []}})
    for verdict in ("blank", "already holds volume group"):
        calls.write_text("")
        rc, ret = salt_call("state.apply", "docker.storage.disk", f"pillar={pillar}")
        assert rc == 0, ret
        gate = next(r for k, r in ret.items() if "docker-storage-disk" in k)
        assert verdict in gate["comment"], gate
        assert calls.read_text().splitlines() == [f"-p -o export {loop}"]
    assert pv_fields(loop)["vg_name"] == VG


def test_a_moved_volume_passes_the_storage_states_unchanged(
    tmp_path, repo_root, volume_id, storage
):
    """Node B (its own minion, grain docker_volume naming the volume id it was given) with
    node A's volume under another device name: the gate takes it as ours, the VG state changes
    nothing, the volume is left as it was; so with the grain of a volume restored from its
    snapshot (another volume id, data_id the first volume's); with another volume id and no
    data_id it is refused."""
    (tmp_path / "node-b").mkdir()
    call = local_salt_call(tmp_path / "node-b", "node-b", repo_root)
    assert call("saltutil.sync_all")[0] == 0
    image = corpus.make_image(tmp_path / "ebs.img", 256 * MIB)
    our_volume_group(image, volume_id)
    before = corpus.digest(image)
    with attached(corpus.make_image(tmp_path / "other.img", MIB)), attached(image) as device:
        storage_pillar = {"docker_volume": device, "volume_group": VG, "mode": "overlay2"}
        pillar = json.dumps({"docker": {"storage": storage_pillar, "storage_pkgs": []}})
        restored = {"volume_id": "vol-0eeeeeeeeeeeeeeee", "data_id": volume_id}
        for ids, expect_rc in (
            ({"volume_id": volume_id}, 0),
            (restored, 0),
            ({"volume_id": "vol-0ffffffffffffffff"}, 1),
        ):
            grain = json.dumps({"device_name": "/dev/sdb", **ids})
            assert call("grains.setval", "docker_volume", grain)[0] == 0
            rc, ret, output = call("state.apply", "docker.storage.disk", f"pillar={pillar}")
            assert rc == expect_rc, output
            states = {key.split("_|-")[1]: result for key, result in ret.items()}
            gate = states["docker-storage-disk"]
            if expect_rc == 0:
                assert gate["comment"] == f"{device} already holds volume group {VG}"
                assert states["docker-storage-vg"]["changes"] == {}
            else:
                assert "that this formula did not make for vol-0ffff" in gate["comment"]
            assert corpus.digest(image) == before


def test_test_mode_on_a_blank_volume_says_what_would_change_and_changes_nothing(
    salt_call, loop, tmp_path
):
    """state.apply docker.storage test=True on a new node: nothing fails (the LV, its
    filesystem and growth are what this run would make), the volume stays blank."""
    (tmp_path / "data-root" / "containers").mkdir(parents=True)
    storage = {
        "docker_volume": loop,
        "volume_group": VG,
        "overlay2": {"mountpoint": str(tmp_path / "data-root")},
    }
    config = {"data-root": storage["overlay2"]["mountpoint"]}
    pillar = json.dumps({"docker": {"storage": storage, "storage_pkgs": [], "config": config}})
    rc, ret = salt_call("state.apply", "docker.storage", f"pillar={pillar}", "test=True")
    assert rc == 0, ret
    results = {key.split("_|-")[1]: (r["result"], r["comment"]) for key, r in ret.items()}
    assert results["docker-storage-grown"] == (True, f"{VG} is new on {loop}: nothing to grow")
    assert results["docker-storage-filesystem"][0] is None, results
    assert results["docker-storage-data-root-moved"][0] is None, results
    assert not any(changes for changes in (r["changes"] for r in ret.values())), ret
    blank = corpus.digest(corpus.make_image(tmp_path / "zero", 64 * MIB))
    assert corpus.digest(tmp_path / "disk.img") == blank  # the loop fixture's image


def test_interrupted_run_is_finished(salt_call, storage, loop, vg_name):
    # What a run that stopped between pvcreate and vgcreate leaves behind.
    run("pvcreate", "-q", "--norestorefile", "--uuid", storage.pv_marker(loop), loop)
    _rc, checked = single(salt_call, "docker_storage.disk_checked", name=vg_name, device=loop)
    assert checked["result"] is True
    assert "a previous run made" in checked["comment"]
    _, made = single(salt_call, "docker_storage.volume_group_present", name=vg_name, device=loop)
    assert made["result"] is True, made
    assert pv_fields(loop)["vg_name"] == vg_name


@pytest.mark.parametrize(
    ("prepare", "expect"),
    [
        (lambda image: corpus.mkfs(image, "ext4"), "ext4 on the whole disk"),
        (corpus.pv, "physical volume without a volume group"),
        (lambda image: corpus.sgdisk(image, "-n", "1:2048:+10M"), "gpt partition table"),
        (lambda image: corpus.mkfs(image, "ext4", 3 * MIB, 40 * MIB), "ext4 at 3 MiB"),
    ],
    ids=["ext4", "foreign-pv", "gpt", "ext4-at-3MiB"],
)
def test_foreign_disk_is_refused_and_left_as_it_was(salt_call, tmp_path, vg_name, prepare, expect):
    image = corpus.make_image(tmp_path / "foreign.img", 64 * MIB)
    prepare(image)
    before = corpus.digest(image)
    with attached(image) as device:
        rc, checked = single(salt_call, "docker_storage.disk_checked", name=vg_name, device=device)
        assert (rc != 0, checked["result"]) == (True, False)
        assert expect in checked["comment"] and "refusing it" in checked["comment"], checked
        rc, made = single(
            salt_call, "docker_storage.volume_group_present", name=vg_name, device=device
        )
        assert (rc != 0, made["result"]) == (True, False)
        assert corpus.digest(image) == before


def test_filesystem_is_made_once_and_never_over_another(salt_call, tmp_path):
    with loop_device(tmp_path / "lv.img", size=XFS_MIN) as lv:
        _, made = single(salt_call, "docker_storage.filesystem_present", name=lv, fstype="xfs")
        assert made["changes"] == {"made": [f"mkfs.xfs -n ftype=1 {lv}"]}, made
        assert run("blkid", "-p", "-s", "TYPE", "-o", "value", lv).stdout.strip() == "xfs"
        _rc, again = single(salt_call, "docker_storage.filesystem_present", name=lv, fstype="xfs")
        assert (again["result"], again["changes"]) == (True, {})
        before = corpus.digest(tmp_path / "lv.img")
        _, other = single(salt_call, "docker_storage.filesystem_present", name=lv, fstype="ext4")
        assert other["result"] is False
        assert other["comment"] == f"{lv}: {lv} holds xfs, not ext4: refusing it"
        assert corpus.digest(tmp_path / "lv.img") == before
