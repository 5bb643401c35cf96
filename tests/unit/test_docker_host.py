"""
The docker_storage and docker_host execution modules, pure parts and small trees: finding the
Docker volume on a fake /dev + /sys tree (grain docker_volume, the pillar override, the old
grains refused), the PV marker, the data-root move, the engine check, daemon.json, the docker
SDK. The disk gate runs on real loop devices in tests/states/test_disk.py. Dunders come the
loader's way (configure_loader_modules); commands run through Salt's own cmd.run_all.
"""

import json
import os

import pytest
from salt.exceptions import CommandExecutionError

from tests.states.disk_corpus import loader_modules
from tools.salt_repo import load_module

docker_host = load_module("modules", "docker_host")
storage = load_module("modules", "docker_storage")
VOLUME = {"device_name": "/dev/sdf", "volume_id": "vol-0feed0feed0feed0f"}
IDS = {"volume_id": "vol-0feed0feed0feed0f", "data_id": "vol-0feed0feed0feed0f"}


@pytest.fixture
def grains():
    return {"id": "db1", "os": "Debian", "osrelease": "12"}


@pytest.fixture
def configure_loader_modules(grains):
    never_running = {"service.available": lambda unit: False}
    return {**loader_modules(storage, grains, never_running), docker_host: {"__grains__": grains}}


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
    return str(root)


# --- finding the Docker volume -----------------------------------------------------------------


def test_nitro_finds_the_nvme_namespace_by_volume_serial(grains, tmp_path):
    grains["docker_volume"] = VOLUME
    # /dev/sdf exists too (another disk): the volume id decides.
    root = make_tree(tmp_path, ["sdf"], {"nvme0n1": "vol0root", "nvme1n1": "vol0feed0feed0feed0f"})
    found = storage.docker_volume(root=root)
    assert found == {"device": "/dev/nvme1n1", **IDS}


def test_device_name_as_is(grains, tmp_path):
    grains["docker_volume"] = VOLUME
    assert storage.docker_volume(root=make_tree(tmp_path, ["sda", "sdf"]))["device"] == "/dev/sdf"


def test_xen_names_sd_as_xvd(grains, tmp_path):
    grains["docker_volume"] = VOLUME
    assert storage.docker_volume(root=make_tree(tmp_path, ["xvda", "xvdf"]))["device"] == (
        "/dev/xvdf"
    )


def test_volume_not_on_this_node_is_an_error(grains, tmp_path):
    grains["docker_volume"] = VOLUME
    root = make_tree(tmp_path, ["sda"], {"nvme0n1": "vol0root"})
    with pytest.raises(CommandExecutionError, match=r"/dev/sdf / vol-0feed0feed0feed0f\) is not"):
        storage.docker_volume(root=root)


def test_pillar_device_overrides_the_grain_and_keeps_its_volume_id(grains):
    grains["docker_volume"] = VOLUME
    found = storage.docker_volume("/dev/vdb")
    assert found == {"device": "/dev/vdb", **IDS}


def test_pillar_device_alone(grains):
    assert storage.docker_volume("/dev/vdb") == {
        "device": "/dev/vdb",
        "volume_id": None,
        "data_id": None,
    }


def test_missing_grain_says_how_to_set_it(tmp_path):
    with pytest.raises(CommandExecutionError) as missing:
        storage.docker_volume(root=str(tmp_path))
    message = str(missing.value)
    assert message.startswith("grain docker_volume is missing")
    assert (
        "salt db1 grains.setval docker_volume '{device_name: /dev/sdX, volume_id: vol-" in message
    )
    assert "docker:storage:docker_volume" in message


@pytest.mark.parametrize("old", ["docker_ebs_volume", "docker_disk"])
def test_old_grains_are_refused_naming_the_new_one(grains, tmp_path, old):
    grains[old] = {"device_name": "/dev/sdf", "device": "/dev/sdf", "volume_id": "vol-0feed"}
    make_tree(tmp_path, ["sdf"])
    with pytest.raises(CommandExecutionError) as refused:
        storage.docker_volume(root=str(tmp_path))
    assert str(refused.value) == (
        f"grain {old} was renamed docker_volume: run `salt db1 grains.setval docker_volume "
        f"'{{device_name: /dev/sdX, volume_id: vol-...}}'` (the values of {old}), or re-deploy "
        "the node"
    )


def test_the_new_grain_is_read_when_an_old_one_is_left(grains, tmp_path):
    grains.update(docker_volume=VOLUME, docker_ebs_volume={"device_name": "/dev/sdg"})
    assert storage.docker_volume(root=make_tree(tmp_path, ["sdf", "sdg"]))["device"] == ("/dev/sdf")


@pytest.mark.parametrize(
    "grain",
    [
        "not-a-dict",
        {},
        {"volume": "x"},
        {"device_name": "/dev/../etc/passwd"},
        {"device_name": "sdb"},
        {"volume_id": "vol-xyz"},
        {"volume_id": "vol-0abc/../../x"},
        {"device_name": "/dev/sdb", "volume_id": 5},
        {"device_name": "/dev/sdb", "volume_id": "vol-0feed0feed", "data_id": "snap-0feed0feed"},
    ],
)
def test_malformed_grain_is_refused(grains, tmp_path, grain):
    grains["docker_volume"] = grain
    with pytest.raises(CommandExecutionError, match="grain docker_volume must be"):
        storage.docker_volume(root=str(tmp_path))
    # Also beside a pillar override: a grain that is there is read.
    with pytest.raises(CommandExecutionError, match="grain docker_volume must be"):
        storage.docker_volume("/dev/vdb")


def test_checked_volume_names_the_volume_by_its_id_else_its_device(grains, monkeypatch):
    seen = []
    monkeypatch.setattr(storage, "disk_verdict", lambda *args: seen.append(args) or "blank")
    assert storage.checked_volume("docker_vol", "/dev/vdb")["disk_id"] == "/dev/vdb"
    grains["docker_volume"] = VOLUME
    assert storage.checked_volume("docker_vol", "/dev/vdb") == {
        "device": "/dev/vdb",
        **IDS,
        "disk_id": "vol-0feed0feed0feed0f",
        "verdict": "blank",
    }
    # Restored from a snapshot of another volume: the data keeps its first volume's id.
    grains["docker_volume"] = {**VOLUME, "data_id": "vol-0aaaa0aaaa0aaaa0a"}
    assert storage.checked_volume("docker_vol", "/dev/vdb")["disk_id"] == "vol-0aaaa0aaaa0aaaa0a"
    assert seen == [
        ("/dev/vdb", "docker_vol", "/dev/vdb"),
        ("/dev/vdb", "docker_vol", "vol-0feed0feed0feed0f"),
        ("/dev/vdb", "docker_vol", "vol-0aaaa0aaaa0aaaa0a"),
    ]


def test_pv_marker_is_a_valid_lvm_uuid_fixed_per_disk():
    marker = storage.pv_marker("vol-0123456789abcdef0")
    assert marker == storage.pv_marker("vol-0123456789abcdef0")
    assert marker != storage.pv_marker("vol-0123456789abcdef1")
    assert [len(part) for part in marker.split("-")] == [6, 4, 4, 4, 4, 4, 6]
    assert marker.replace("-", "").isalnum()


# --- engine version -------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["20.10.24", "23.0.6", "24.0.9"])
def test_devicemapper_works_up_to_engine_24(version):
    assert docker_host.check_storage_driver("devicemapper", version)


@pytest.mark.parametrize("version", ["25.0.0", "28.2.2"])
def test_devicemapper_stops_on_engine_25_and_later(version):
    with pytest.raises(
        CommandExecutionError, match=r"devicemapper was removed in Docker Engine 25"
    ):
        docker_host.check_storage_driver("devicemapper", version)


def test_overlay2_works_on_any_engine():
    assert docker_host.check_storage_driver("overlay2", "28.2.2")


def test_engine_version_parses_dockerd_output():
    text = "Docker version 20.10.24+dfsg1, build 5d6db84"
    assert docker_host.parse_engine_version(text) == (20, 10, 24)


# --- moving /var/lib/docker -----------------------------------------------------------------


def test_data_root_is_moved_once_and_never_deleted(tmp_path):
    source, volume = tmp_path / "var-lib-docker", tmp_path / "volume"
    (source / "overlay2" / "abc").mkdir(parents=True)
    (source / "overlay2" / "abc" / "file").write_text("layer")
    (source / "containers").mkdir()
    (volume / "lost+found").mkdir(parents=True)
    assert storage.move_into(str(source), str(volume), dry_run=True) == {
        "moved": ["containers", "overlay2"],
        "to": str(volume),
    }
    assert (source / "overlay2").is_dir()
    moved = storage.move_into(str(source), str(volume))
    assert moved == {"moved": ["containers", "overlay2"], "to": str(volume)}
    assert (volume / "overlay2" / "abc" / "file").read_text() == "layer"
    assert source.is_dir() and not list(source.iterdir())
    # A second run finds nothing to move and leaves the volume alone.
    assert storage.move_into(str(source), str(volume)) == {}
    assert (volume / "overlay2" / "abc" / "file").read_text() == "layer"


def test_nothing_to_move_from_a_missing_or_empty_directory_or_a_mountpoint(tmp_path):
    assert storage.move_into(str(tmp_path / "missing"), str(tmp_path)) == {}
    (tmp_path / "empty").mkdir()
    assert storage.move_into(str(tmp_path / "empty"), str(tmp_path)) == {}
    assert storage.move_into("/proc", str(tmp_path)) == {}


def test_an_interrupted_move_is_refused_not_taken_for_data_from_elsewhere(tmp_path):
    """The move goes through <volume>/.moving: a crash mid-move leaves part of it there, and
    the next run refuses (finish by hand) instead of keeping the rest aside."""
    source, volume = tmp_path / "src", tmp_path / "volume"
    (source / "volumes").mkdir(parents=True)
    (volume / ".moving" / "image").mkdir(parents=True)
    with pytest.raises(CommandExecutionError, match=r"an earlier move of .*src onto .* was inter"):
        storage.move_into(str(source), str(volume))
    assert (source / "volumes").is_dir() and (volume / ".moving" / "image").is_dir()
    (volume / ".moving" / "image").rmdir()  # an empty one: the move had finished
    assert storage.move_into(str(source), str(volume))["moved"] == ["volumes"]
    assert sorted(p.name for p in volume.iterdir()) == ["volumes"]


def test_a_volume_with_data_is_never_mixed_with_the_local_directory(tmp_path):
    source, volume = tmp_path / "src", tmp_path / "volume"
    (source / "image").mkdir(parents=True)
    (volume / "image").mkdir(parents=True)
    kept = storage.move_into(str(source), str(volume))
    assert kept["kept_aside"].startswith(f"{source}.local-")
    assert kept["because"] == f"{volume} holds ['image']"
    assert (tmp_path / kept["kept_aside"] / "image").is_dir()
    assert source.is_dir() and not list(source.iterdir())


# --- daemon.json ------------------------------------------------------------------------------


def test_overlay2_daemon_json_names_the_driver():
    config = docker_host.daemon_json(
        {"config": {"log-driver": "json-file"}, "storage": {"mode": "overlay2"}}
    )
    assert config == {"log-driver": "json-file", "storage-driver": "overlay2"}


def test_overlay2_with_the_containerd_store_leaves_the_snapshotter_to_containerd():
    features = {"containerd-snapshotter": True}
    config = docker_host.daemon_json(
        {"config": {"features": features}, "storage": {"mode": "overlay2"}}
    )
    assert config == {"features": features}


def test_devicemapper_daemon_json_points_at_the_thin_pool():
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


def test_sdk_is_installed_with_salt_pip_on_onedir(tmp_path, monkeypatch):
    (tmp_path / "salt-pip").write_text("#!/bin/sh\n")
    monkeypatch.setattr(docker_host.sys, "RELENV", tmp_path, raising=False)
    assert docker_host.python_sdk()["bin_env"] == str(tmp_path / "salt-pip")


def test_sdk_is_installed_into_a_pip_installed_salts_own_python(monkeypatch):
    monkeypatch.delattr(docker_host.sys, "RELENV", raising=False)
    sdk = docker_host.python_sdk()
    assert sdk["bin_env"] == docker_host.sys.executable
    # This test environment has docker 7.2 (requirements-common.txt).
    assert sdk["usable"] is True


# --- a volume group moved here from another node ----------------------------------------------


@pytest.mark.parametrize(
    ("attr", "steps"),
    [("-wi-------", {"activated": ["vgchange --activate y docker_vol"]}), ("-wi-ao----", {})],
    ids=["inactive", "active"],
)
def test_our_moved_volume_group_gets_its_logical_volumes_activated(
    tmp_path, monkeypatch, attr, steps
):
    """Attached after boot (no udev autoactivation yet), our VG's LVs are inactive: the VG
    state activates them; made or formatted, nothing."""
    report = {
        "report": [
            {"lv": [{"lv_name": "docker", "lv_attr": attr, "lv_size": "1", "lv_profile": ""}]}
        ]
    }
    (tmp_path / "lvs").write_text(f"#!/bin/sh\necho '{json.dumps(report)}'\n")
    (tmp_path / "lvs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert (
        storage.volume_group("docker_vol", "/dev/nvme1n1", "vol-0a", "our-vg", dry_run=True)
        == steps
    )


def test_a_new_thin_pool_is_not_grown_on_the_next_run():
    """lvcreate -l 95%VG rounds down (971 of 1023 extents), lvextend -l 95%VG rounds up: the
    rule counts extents as lvcreate did, so a pool just made is left alone (the VM tier saw
    `lvextend -l 95%VG` on the highstate after a reboot: a change where none may be); a disk
    that grew still grows it."""
    extent = 4 * 1024**2
    made = {"disk": 4 * 1024**3, "pv": 4 * 1024**3 - 1024**2, "extent": extent}
    made.update(vg_free=42 * extent, vg_extents=1023, lv=971 * extent)
    assert storage._lv_may_grow(made, "95%VG") is False
    assert storage.plan(made, "devicemapper", grow_lv=storage._lv_may_grow(made, "95%VG")) == []
    grown = {**made, "disk": 6 * 1024**3}
    assert storage._lv_may_grow(grown, "95%VG") is True
    assert storage.plan(grown, "devicemapper") == ["pvresize", "lvextend"]
