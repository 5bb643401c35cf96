"""
docker_host execution module and states: disk resolution on a fake /dev + /sys tree, real
``blkid`` probes of disk images, storage safety verdicts, engine check, data-root move,
pillar validation, secret resolution and masking.
"""

import importlib.util
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from salt.exceptions import CommandExecutionError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load(kind, name):
    spec = importlib.util.spec_from_file_location(
        f"{kind}_{name}", REPO_ROOT / "salt" / f"_{kind}" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def docker_host():
    module = _load("modules", "docker_host")
    module.__grains__ = {"os": "Debian", "osrelease": "12"}
    module.__pillar__ = {}
    return module


@pytest.fixture
def host_states():
    return _load("states", "docker_host")


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
    with pytest.raises(CommandExecutionError, match=r"docker_disk: no block device.*/dev/sdb"):
        docker_host.resolve_disk("/dev/sdb", "vol-0123456789abcdef0", root=str(root))


def test_resolve_reads_the_docker_disk_grain(docker_host, tmp_path):
    root = make_tree(tmp_path, nvme_serials={"nvme1n1": "vol0feed"})
    docker_host.__grains__["docker_disk"] = {"device": "/dev/sdf", "volume_id": "vol-0feed"}
    assert docker_host.resolve_disk(root=str(root)) == "/dev/nvme1n1"


def test_missing_grain_names_it(docker_host, tmp_path):
    with pytest.raises(CommandExecutionError, match="grain docker_disk is missing"):
        docker_host.resolve_disk(root=str(tmp_path))


# --- what a device holds (real blkid on disk images) --------------------------------------


def _image(path, size=16 * 1024 * 1024):
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def _lvm_crc(data):
    # LVM's label CRC: reflected CRC-32 with initial value 0xf597a6cf and no final xor.
    return zlib.crc32(data, 0xF597A6CF ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def _write_lvm_label(path):
    """What pvcreate writes in sector 1: LABELONE header, CRC, "LVM2 001" and a PV UUID."""
    sector = bytearray(512)
    sector[0:8] = b"LABELONE"
    struct.pack_into("<Q", sector, 8, 1)
    struct.pack_into("<I", sector, 20, 32)
    sector[24:32] = b"LVM2 001"
    sector[32:64] = b"abcdefghijklmnopqrstuvwxyz012345"
    struct.pack_into("<I", sector, 16, _lvm_crc(bytes(sector[20:])))
    with open(path, "r+b") as handle:
        handle.seek(512)
        handle.write(sector)


def _write_mbr(path):
    sector = bytearray(512)
    # One Linux partition starting at sector 2048.
    sector[446 + 4] = 0x83
    struct.pack_into("<II", sector, 446 + 8, 2048, 8192)
    sector[510:512] = b"\x55\xaa"
    with open(path, "r+b") as handle:
        handle.write(sector)


def test_blank_disk_is_empty(docker_host, tmp_path):
    disk = _image(tmp_path / "blank.img")
    assert docker_host.probe_signatures(str(disk)) == {}
    assert docker_host.check_disk(str(disk)) == "empty"


def test_disk_with_a_filesystem_is_refused(docker_host, tmp_path):
    disk = _image(tmp_path / "ext4.img")
    subprocess.run(["mkfs.ext4", "-q", "-F", str(disk)], check=True)
    assert docker_host.device_usage(str(disk))["filesystem"] == "ext4"
    with pytest.raises(CommandExecutionError, match="holds a ext4 filesystem; refusing"):
        docker_host.check_disk(str(disk))


def test_disk_with_a_partition_table_is_refused(docker_host, tmp_path):
    disk = _image(tmp_path / "mbr.img")
    _write_mbr(disk)
    assert docker_host.device_usage(str(disk))["partition_table"] == "dos"
    with pytest.raises(CommandExecutionError, match="holds a dos partition table"):
        docker_host.check_disk(str(disk))


def test_lvm_label_is_seen_as_a_physical_volume(docker_host, tmp_path):
    disk = _image(tmp_path / "pv.img")
    _write_lvm_label(disk)
    assert docker_host.probe_signatures(str(disk))["TYPE"] == "LVM2_member"


def test_physical_volume_of_our_group_is_ours(docker_host):
    usage = {"lvm_member": True, "volume_group": "docker_vol"}
    assert docker_host.disk_verdict("/dev/xvdb", usage, "docker_vol") == "ours"


@pytest.mark.parametrize("owner", ["data_vg", None])
def test_physical_volume_of_another_group_is_refused(docker_host, owner):
    usage = {"lvm_member": True, "volume_group": owner}
    with pytest.raises(CommandExecutionError, match="physical volume of"):
        docker_host.disk_verdict("/dev/xvdb", usage, "docker_vol")


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


# --- pillar validation ------------------------------------------------------------------------


def settings(**overrides):
    base = {
        "install": {"source": "distribution", "pkgs": {"distribution": ["docker.io"]}},
        "storage": {"mode": "none", "volume_group": "docker_vol"},
        "config": {"log-driver": "json-file"},
        "containers": {
            "web": {
                "image": "busybox:latest",
                "port_bindings": ["127.0.0.1:8080:80", "53:53/udp"],
                "restart_policy": "on-failure:3",
                "environment": {"PASSWORD": {"secret": "web_password"}},
            }
        },
    }
    for dotted, value in overrides.items():
        target = base
        *parents, last = dotted.split("__")
        for key in parents:
            target = target[key]
        target[last] = value
    return base


SECRETS = {"web_password": "s3cret"}


def test_good_settings_validate(docker_host):
    validated = docker_host.validate(settings(), secrets=SECRETS)
    assert validated["daemon_json"] == {"log-driver": "json-file"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"containers__web__image": ""}, "docker:containers:web:image is missing"),
        ({"storage__mode": "zfs"}, "docker:storage:mode: 'zfs' is not one of"),
        ({"install__source": "snap"}, "docker:install:source: 'snap'"),
        ({"containers__web__port_bindings": ["80:80:80:80"]}, "port_bindings:0: malformed port"),
        ({"containers__web__port_bindings": ["70000:80"]}, "port 70000"),
        ({"containers__web__restart_policy": "sometimes"}, "restart_policy: 'sometimes'"),
        ({"containers__web__restart_policy": "always:3"}, "restart_policy: 'always:3'"),
        (
            {"containers__web__restart_policy": "always", "containers__web__restart_retries": 10},
            "docker:containers:web:restart_retries is only valid with restart_policy on-failure",
        ),
        (
            {"containers__web__environment": {"PASSWORD": {"secret": "nope"}}},
            "docker:containers:web:environment:PASSWORD refers to secret 'nope'",
        ),
        ({"absent": ["web"]}, r"docker:absent: \['web'\] are also in docker:containers"),
        ({"registries": {"https://r": {"username": "u"}}}, "docker:registries:https://r"),
    ],
)
def test_bad_settings_name_the_key(docker_host, overrides, message):
    with pytest.raises(CommandExecutionError, match=message):
        docker_host.validate(settings(**overrides), secrets=SECRETS)


def test_storage_without_a_disk_is_refused(docker_host, tmp_path):
    with pytest.raises(CommandExecutionError, match="grain docker_disk is missing"):
        docker_host.validate(
            settings(storage__mode="overlay2"), secrets=SECRETS, root=str(tmp_path)
        )


def test_storage_on_a_disk_with_a_filesystem_is_refused(docker_host, tmp_path):
    (tmp_path / "dev").mkdir()
    disk = _image(tmp_path / "dev" / "xvdb")
    subprocess.run(["mkfs.ext4", "-q", "-F", str(disk)], check=True)
    docker_host.__grains__["docker_disk"] = {"device": "/dev/sdb", "volume_id": "vol-1"}
    with pytest.raises(CommandExecutionError, match=r"docker:storage: .*xvdb holds a ext4"):
        docker_host.validate(
            settings(storage__mode="overlay2"), secrets=SECRETS, root=str(tmp_path)
        )


def test_storage_on_a_blank_disk_resolves_it(docker_host, tmp_path):
    (tmp_path / "dev").mkdir()
    _image(tmp_path / "dev" / "xvdb")
    docker_host.__grains__["docker_disk"] = {"device": "/dev/sdb", "volume_id": "vol-1"}
    validated = docker_host.validate(
        settings(storage__mode="overlay2"), secrets=SECRETS, root=str(tmp_path)
    )
    assert validated["storage"]["device"] == "/dev/xvdb"
    assert validated["daemon_json"]["storage-driver"] == "overlay2"


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


# --- secrets in the container state -----------------------------------------------------------


def test_secret_references_resolve_and_mask(host_states):
    used = []
    resolved = host_states._resolve(
        {"environment": {"A": {"secret": "a"}, "B": "plain"}, "command": ["x"]},
        {"a": "hunter2"},
        used,
    )
    assert resolved == {"environment": {"A": "hunter2", "B": "plain"}, "command": ["x"]}
    output = {"changes": {"env": {"old": ["A=old"], "new": ["A=hunter2"]}}, "comment": "hunter2"}
    masked = host_states._mask(output, used)
    assert "hunter2" not in repr(masked)
    assert masked["changes"]["env"]["new"] == ["A=**********"]


def test_missing_secret_fails_the_container_state(host_states):
    host_states.__pillar__ = {"docker_secrets": {}}
    ret = host_states.container_running("web", image="x", environment={"A": {"secret": "a"}})
    assert ret["result"] is False
    assert "secret 'a' is not in pillar docker_secrets" in ret["comment"]


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
