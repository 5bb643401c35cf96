"""
docker_storage.moved_into for real (salt-call --local): an existing Docker data root is moved
into a new volume (a loop device with a filesystem, standing in for the LV the VM tests create)
once, then the volume is mounted there; nothing is deleted, and a second run changes nothing.
A volume that already holds a data root (moved here from a destroyed node) keeps it: the local
one is kept aside, renamed, never mixed in.
"""

import os
import stat
import subprocess

import pytest

from tools.salt_repo import local_salt_call

pytestmark = pytest.mark.states


@pytest.fixture
def volume(tmp_path):
    """A loop device holding an empty ext4 filesystem; detached afterwards."""
    image = tmp_path / "volume.img"
    with open(image, "wb") as handle:
        handle.truncate(32 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


@pytest.fixture
def salt_call(tmp_path, repo_root):
    config_dir = tmp_path / "minion-config"
    config_dir.mkdir()
    call = local_salt_call(config_dir, "data-root", repo_root)

    def run(*args):
        returncode, answer, output = call(*args)
        assert returncode == 0, output
        return answer

    run("saltutil.sync_all")
    return run


def data_root_moved(data_root, volume):
    """salt-call's arguments for the state that moves ``data_root`` into ``volume``."""
    return [
        "state.single",
        "docker_storage.moved_into",
        f"name={data_root}",
        f"device={volume}",
        "fstype=ext4",
        # The host's own Docker service is not this test's to stop.
        "services=[]",
    ]


def only_result(ret):
    (result,) = ret.values()
    return result


def test_existing_data_root_is_moved_once_then_mounted(tmp_path, volume, salt_call):
    data_root = tmp_path / "var-lib-docker"
    (data_root / "image" / "overlay2").mkdir(parents=True)
    (data_root / "image" / "overlay2" / "repositories.json").write_text('{"Repositories": {}}')
    (data_root / "volumes").mkdir()
    # Docker keeps a device node of its backing filesystem here; it must move as a node, not
    # be copied by reading the device (which would fill the volume).
    backing_node = data_root / "volumes" / "backingFsBlockDev"
    os.mknod(backing_node, stat.S_IFBLK | 0o600, os.stat(volume).st_rdev)
    move = data_root_moved(data_root, volume)
    try:
        moved = only_result(salt_call(*move))
        assert moved["result"] is True
        assert moved["changes"] == {"moved": ["image", "volumes"], "to": volume}
        assert list(data_root.iterdir()) == []

        mounted = only_result(
            salt_call(
                "state.single",
                "mount.mounted",
                f"name={data_root}",
                f"device={volume}",
                "fstype=ext4",
                "persist=False",
            )
        )
        assert mounted["result"] is True
        content = data_root / "image" / "overlay2" / "repositories.json"
        assert content.read_text() == '{"Repositories": {}}'
        assert stat.S_ISBLK(backing_node.lstat().st_mode)
        assert backing_node.lstat().st_rdev == os.stat(volume).st_rdev

        # Second run: the data root is the volume's mountpoint; nothing to move.
        again = only_result(salt_call(*move))
        assert again["result"] is True
        assert again["changes"] == {}
        assert content.exists()
    finally:
        subprocess.run(["umount", str(data_root)], check=False, capture_output=True)


def test_empty_data_root_needs_no_move(tmp_path, volume, salt_call):
    data_root = tmp_path / "fresh"
    data_root.mkdir()
    ret = only_result(salt_call(*data_root_moved(data_root, volume)))
    assert ret["result"] is True
    assert ret["changes"] == {}
    assert ret["comment"] == f"{data_root} is as it should be"


def test_a_volume_holding_a_data_root_keeps_it_and_the_local_one_is_kept_aside(
    tmp_path, volume, salt_call
):
    # The volume comes from another node: its data root has containers and a volume's data.
    staging = tmp_path / "staging"
    staging.mkdir()
    subprocess.run(["mount", volume, str(staging)], check=True)
    (staging / "volumes" / "pgdata" / "_data").mkdir(parents=True)
    (staging / "volumes" / "pgdata" / "_data" / "PG_VERSION").write_text("15\n")
    subprocess.run(["umount", str(staging)], check=True)
    # This node's package install started Docker, which wrote a fresh data root.
    data_root = tmp_path / "var-lib-docker"
    (data_root / "containers").mkdir(parents=True)
    (data_root / "engine-id").write_text("new node")
    data_root.chmod(0o710)
    ret = only_result(salt_call(*data_root_moved(data_root, volume)))
    assert ret["result"] is True, ret
    aside = ret["changes"]["kept_aside"]
    assert aside.startswith(f"{data_root}.local-")
    assert "holds ['lost+found', 'volumes']" not in ret["changes"]["because"]
    assert sorted(os.listdir(aside)) == ["containers", "engine-id"]
    assert list(data_root.iterdir()) == []
    assert stat.S_IMODE(data_root.stat().st_mode) == 0o710
    try:
        subprocess.run(["mount", volume, str(data_root)], check=True)
        assert (data_root / "volumes" / "pgdata" / "_data" / "PG_VERSION").read_text() == "15\n"
        assert not (data_root / "engine-id").exists()
    finally:
        subprocess.run(["umount", str(data_root)], check=False)
    # The next run: the mounted data root is left alone.
    subprocess.run(["mount", volume, str(data_root)], check=True)
    try:
        again = only_result(salt_call(*data_root_moved(data_root, volume)))
        assert (again["result"], again["changes"]) == (True, {})
    finally:
        subprocess.run(["umount", str(data_root)], check=False)
