"""
docker_host execution module and states: disk resolution on a fake /dev + /sys tree (grains
docker_ebs_volume and the old docker_disk), the PV marker, engine check, data-root move,
daemon.json, secret resolution and masking. The disk checks run on real loop devices in
tests/states/test_disk.py.
"""

import pytest
from salt.exceptions import CommandExecutionError

from tools.salt_repo import load_module


@pytest.fixture
def docker_host():
    module = load_module("modules", "docker_host")
    module.__grains__ = {"os": "Debian", "osrelease": "12"}
    module.__pillar__ = {}
    return module


def make_tree(root, devices=(), nvme_serials=None):
    """A fake node: /dev/<name> files and /sys/block/nvmeXn1/device/serial."""
    (root / "dev").mkdir(parents=True, exist_ok=True)
    for name in devices:
        (root / "dev" / name).write_bytes(b"")
    for name, serial in (nvme_serials or {}).items():
        (root / "dev" / name).write_bytes(b"")
        serial_dir = root / "sys" / "block" / name / "device"
        serial_dir.mkdir(parents=True)
        # The kernel pads the 20-byte NVMe serial with spaces.
        (serial_dir / "serial").write_text(f"{serial:<20}\n")
    return root


# --- resolve_disk -------------------------------------------------------------------------


def test_device_that_exists_is_used_as_is(docker_host, tmp_path):
    root = make_tree(tmp_path, devices=["sda", "sdb"])
    assert docker_host.resolve_disk("/dev/sdb", "vol-0abc", root=str(root)) == "/dev/sdb"


def test_xen_names_sd_as_xvd(docker_host, tmp_path):
    root = make_tree(tmp_path, devices=["xvda", "xvdb"])
    assert docker_host.resolve_disk("/dev/sdb", "vol-0abc", root=str(root)) == "/dev/xvdb"


def test_nitro_finds_the_nvme_namespace_by_volume_serial(docker_host, tmp_path):
    root = make_tree(
        tmp_path,
        nvme_serials={"nvme0n1": "vol0rootrootroot0000", "nvme1n1": "vol0123456789abcdef0"},
    )
    found = docker_host.resolve_disk("/dev/sdb", "vol-0123456789abcdef0", root=str(root))
    assert found == "/dev/nvme1n1"


def test_nitro_without_matching_serial_is_an_error(docker_host, tmp_path):
    root = make_tree(tmp_path, nvme_serials={"nvme0n1": "vol0rootrootroot0000"})
    with pytest.raises(CommandExecutionError, match=r"the Docker disk: no block device.*/dev/sdb"):
        docker_host.resolve_disk("/dev/sdb", "vol-0123456789abcdef0", root=str(root))


def test_resolve_reads_the_docker_ebs_volume_grain(docker_host, tmp_path):
    root = make_tree(tmp_path, nvme_serials={"nvme1n1": "vol0feed"})
    docker_host.__grains__["docker_ebs_volume"] = {
        "device_name": "/dev/sdf",
        "volume_id": "vol-0feed",
    }
    assert docker_host.resolve_disk(root=str(root)) == "/dev/nvme1n1"


def test_resolve_falls_back_to_the_old_docker_disk_grain(docker_host, tmp_path):
    root = make_tree(tmp_path, devices=["xvdf"])
    docker_host.__grains__["docker_disk"] = {"device": "/dev/sdf", "volume_id": "vol-0feed"}
    assert docker_host.resolve_disk(root=str(root)) == "/dev/xvdf"


def test_new_grain_wins_over_the_old_one(docker_host, tmp_path):
    root = make_tree(tmp_path, devices=["xvdf", "xvdg"])
    docker_host.__grains__["docker_disk"] = {"device": "/dev/sdf"}
    docker_host.__grains__["docker_ebs_volume"] = {"device_name": "/dev/sdg"}
    assert docker_host.resolve_disk(root=str(root)) == "/dev/xvdg"


def test_missing_grain_names_it(docker_host, tmp_path):
    with pytest.raises(CommandExecutionError, match="grain docker_ebs_volume is missing"):
        docker_host.resolve_disk(root=str(tmp_path))


@pytest.mark.parametrize("grain", ["not-a-dict", {"volume": "x"}, {}])
def test_malformed_grain_is_refused(docker_host, tmp_path, grain):
    docker_host.__grains__["docker_ebs_volume"] = grain
    with pytest.raises(CommandExecutionError, match="docker_ebs_volume"):
        docker_host.resolve_disk(root=str(tmp_path))


def test_pv_marker_is_a_valid_lvm_uuid_fixed_per_disk(docker_host):
    marker = docker_host.pv_marker("vol-0123456789abcdef0")
    assert marker == docker_host.pv_marker("vol-0123456789abcdef0")
    assert marker != docker_host.pv_marker("vol-0123456789abcdef1")
    assert [len(part) for part in marker.split("-")] == [6, 4, 4, 4, 4, 4, 6]
    assert marker.replace("-", "").isalnum()


# --- engine version -------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["20.10.24", "23.0.6", "24.0.9"])
def test_devicemapper_works_up_to_engine_24(docker_host, version):
    assert docker_host.check_storage_driver("devicemapper", version)


@pytest.mark.parametrize("version", ["25.0.0", "28.2.2"])
def test_devicemapper_stops_on_engine_25_and_later(docker_host, version):
    with pytest.raises(
        CommandExecutionError, match=r"devicemapper was removed in Docker Engine 25"
    ):
        docker_host.check_storage_driver("devicemapper", version)


def test_overlay2_works_on_any_engine(docker_host):
    assert docker_host.check_storage_driver("overlay2", "28.2.2")


def test_engine_version_parses_dockerd_output(docker_host):
    text = "Docker version 20.10.24+dfsg1, build 5d6db84"
    assert docker_host.parse_engine_version(text) == (20, 10, 24)


# --- moving /var/lib/docker -----------------------------------------------------------------


def test_data_root_is_moved_once_and_never_deleted(docker_host, tmp_path):
    source, volume = tmp_path / "var-lib-docker", tmp_path / "volume"
    (source / "overlay2" / "abc").mkdir(parents=True)
    (source / "overlay2" / "abc" / "file").write_text("layer")
    (source / "containers").mkdir()
    volume.mkdir()
    (volume / "lost+found").mkdir()
    assert docker_host.move_data_root(str(source), str(volume)) == ["containers", "overlay2"]
    assert (volume / "overlay2" / "abc" / "file").read_text() == "layer"
    assert source.is_dir() and not list(source.iterdir())
    # A second run finds nothing to move and leaves the volume alone.
    assert docker_host.move_data_root(str(source), str(volume)) == []
    assert (volume / "overlay2" / "abc" / "file").read_text() == "layer"


def test_data_root_move_refuses_a_volume_with_content(docker_host, tmp_path):
    source, volume = tmp_path / "src", tmp_path / "volume"
    (source / "image").mkdir(parents=True)
    (volume / "image").mkdir(parents=True)
    with pytest.raises(CommandExecutionError, match="already holds"):
        docker_host.move_data_root(str(source), str(volume))
    assert (source / "image").is_dir()


def test_entries_to_move_or_why_there_are_none(docker_host, tmp_path):
    data = tmp_path / "data"
    assert docker_host.entries_to_move(str(data)) == ([], f"{data} is empty: nothing to move")
    data.mkdir()
    assert docker_host.entries_to_move(str(data)) == ([], f"{data} is empty: nothing to move")
    (data / "volumes").mkdir()
    (data / "containers").mkdir()
    assert docker_host.entries_to_move(str(data)) == (["containers", "volumes"], "")
    assert docker_host.entries_to_move("/proc") == ([], "/proc is already a mountpoint")


# --- daemon.json ------------------------------------------------------------------------------


def test_overlay2_daemon_json_names_the_driver(docker_host):
    config = docker_host.daemon_json(
        {"config": {"log-driver": "json-file"}, "storage": {"mode": "overlay2"}}
    )
    assert config == {"log-driver": "json-file", "storage-driver": "overlay2"}


def test_overlay2_with_the_containerd_store_leaves_the_snapshotter_to_containerd(docker_host):
    features = {"containerd-snapshotter": True}
    config = docker_host.daemon_json(
        {"config": {"features": features}, "storage": {"mode": "overlay2"}}
    )
    assert config == {"features": features}


def test_devicemapper_daemon_json_points_at_the_thin_pool(docker_host):
    config = docker_host.daemon_json(
        {
            "config": {},
            "storage": {
                "mode": "devicemapper",
                "volume_group": "docker_vol",
                "devicemapper": {"thinpool": "thinpool"},
            },
        }
    )
    assert config == {
        "storage-driver": "devicemapper",
        "storage-opts": [
            "dm.thinpooldev=/dev/mapper/docker_vol-thinpool",
            "dm.use_deferred_removal=true",
            "dm.use_deferred_deletion=true",
        ],
    }


# --- docker SDK for the minion's own Python ----------------------------------------------------


def test_sdk_is_installed_with_salt_pip_on_onedir(docker_host, tmp_path, monkeypatch):
    (tmp_path / "salt-pip").write_text("#!/bin/sh\n")
    monkeypatch.setattr(docker_host.sys, "RELENV", tmp_path, raising=False)
    assert docker_host.python_sdk()["bin_env"] == str(tmp_path / "salt-pip")


def test_sdk_is_installed_into_a_pip_installed_salts_own_python(docker_host, monkeypatch):
    monkeypatch.delattr(docker_host.sys, "RELENV", raising=False)
    sdk = docker_host.python_sdk()
    assert sdk["bin_env"] == docker_host.sys.executable
    # This test environment has docker 7.2 (requirements-common.txt).
    assert sdk["usable"] is True
