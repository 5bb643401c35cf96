"""
Render the whole docker formula for every OS family a user meets on EC2 (salt-call --local
with grain overrides) and check packages, repositories, services, storage states and
daemon.json. Rendering is pure: the docker_volume grain names a disk this machine does
not have, and the render still works (the disk is found and checked by the states when they
run; those run on loop devices in test_disk.py and for real in the VM tests).
"""

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.states

SALT_CALL = str(Path(sys.executable).with_name("salt-call"))

OS_GRAINS = {
    "debian12": {
        "os_family": "Debian",
        "os": "Debian",
        "osrelease": "12",
        "oscodename": "bookworm",
    },
    "ubuntu2404": {
        "os_family": "Debian",
        "os": "Ubuntu",
        "osrelease": "24.04",
        "oscodename": "noble",
    },
    "rocky9": {"os_family": "RedHat", "os": "Rocky", "osrelease": "9.5", "oscodename": "Blue Onyx"},
    "alma9": {"os_family": "RedHat", "os": "AlmaLinux", "osrelease": "9.5", "oscodename": "x"},
    "amazon2023": {"os_family": "RedHat", "os": "Amazon", "osrelease": "2023", "oscodename": ""},
}
EXPECTED_PACKAGES = {
    "debian12": ["docker.io"],
    "ubuntu2404": ["docker.io"],
    "rocky9": ["docker-ce", "docker-ce-cli", "containerd.io"],
    "alma9": ["docker-ce", "docker-ce-cli", "containerd.io"],
    "amazon2023": ["docker"],
}
EXPECTED_STORAGE_PACKAGES = {
    "Debian": ["lvm2", "thin-provisioning-tools", "xfsprogs"],
    "RedHat": ["lvm2", "device-mapper-persistent-data", "xfsprogs"],
}


@pytest.fixture(scope="module")
def render_pillar(tmp_path_factory, repo_root):
    """The repository's pillar; the encrypted file swapped for plain test values."""
    root = tmp_path_factory.mktemp("render-pillar")
    shutil.copytree(repo_root / "pillar", root, dirs_exist_ok=True)
    secrets = {name: "not-a-secret" for name in ("postgres_user", "postgres_password")}
    secrets["postgres_db"] = "not-a-secret"
    secrets_sls = root / "classes" / "dataserver" / "secrets.sls"
    secrets_sls.write_text(yaml.safe_dump({"docker_secrets": secrets}))
    return root


ABSENT_DISK = {"device_name": "/dev/sdz", "volume_id": "vol-0123456789abcdef0"}


def salt_call(config_dir, *args):
    proc = subprocess.run(
        [SALT_CALL, "-c", str(config_dir), "--local", "--out", "json", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc


PILLAR_VARIANTS = (
    None,
    {"docker": {"storage": {"mode": "devicemapper"}}},
    {"docker": {"install": {"source": "docker"}}},
)


@pytest.fixture(scope="module")
def renders(tmp_path_factory, repo_root, render_pillar):
    """salt-call results of `state.show_sls docker` per (OS, pillar variant), made up front
    in parallel (each salt-call spends ~2 s starting up)."""
    base = tmp_path_factory.mktemp("render")
    configs = {}
    for name, os_grains in OS_GRAINS.items():
        config_dir = base / name
        config_dir.mkdir()
        grains = dict(os_grains, docker_volume=ABSENT_DISK)
        config = {
            "id": f"render-{name}",
            "file_client": "local",
            "root_dir": str(config_dir),
            "file_roots": {"base": [str(repo_root / "salt")]},
            "pillar_roots": {"base": [str(render_pillar)]},
            "grains": grains,
            # A masterless minion's class (pillar/top.sls through node_record.class_of).
            "node_class": "dataserver",
        }
        (config_dir / "minion").write_text(yaml.safe_dump(config))
        configs[name] = config_dir

    def render_os(name):
        synced = salt_call(configs[name], "saltutil.sync_all")
        assert synced.returncode == 0, synced.stderr
        results = {}
        for pillar in PILLAR_VARIANTS:
            args = ["state.show_sls", "docker"]
            if pillar:
                args.append(f"pillar={json.dumps(pillar)}")
            results[(name, json.dumps(pillar))] = salt_call(configs[name], *args)
        return results

    renders = {}
    with ThreadPoolExecutor(max_workers=len(OS_GRAINS)) as pool:
        for results in pool.map(render_os, OS_GRAINS):
            renders.update(results)
    return renders


@pytest.fixture(params=sorted(OS_GRAINS))
def node_os(request, renders):
    name = request.param

    def show(pillar=None):
        return renders[(name, json.dumps(pillar))]

    return name, show


def show_sls(show, pillar=None):
    proc = show(pillar)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)["local"]


def state(rendered, state_id):
    """(module.function, merged arguments) of one rendered state."""
    body = rendered[state_id]
    module = next(key for key in body if not key.startswith("__"))
    function = next(item for item in body[module] if isinstance(item, str))
    args = {}
    for item in body[module]:
        if isinstance(item, dict):
            args.update(item)
    args.pop("order", None)
    return f"{module}.{function}", args


def test_overlay2_storage_packages_and_service(node_os):
    name, show = node_os
    rendered = show_sls(show)
    family = OS_GRAINS[name]["os_family"]

    assert state(rendered, "docker-packages") == (
        "pkg.installed",
        {"pkgs": EXPECTED_PACKAGES[name]},
    )
    assert (
        state(rendered, "docker-storage-packages")[1]["pkgs"] == (EXPECTED_STORAGE_PACKAGES[family])
    )
    if name in ("rocky9", "alma9"):
        repo = state(rendered, "docker-repo")[1]
        assert (
            repo["baseurl"] == "https://download.docker.com/linux/rhel/$releasever/$basearch/stable"
        )
    else:
        assert "docker-repo" not in rendered

    # The disk is named only by the grain: found and checked when the states run.
    disk = state(rendered, "docker-storage-disk")
    assert disk == (
        "docker_storage.disk_checked",
        {
            "name": "docker_vol",
            "device": None,
            "require": ["docker-storage-packages"],
        },
    )
    vg = state(rendered, "docker-storage-vg")
    assert vg[0] == "docker_storage.volume_group_present"
    assert vg[1]["require"] == [{"docker_storage": "docker-storage-disk"}]
    assert state(rendered, "docker-storage-lv") == (
        "lvm.lv_present",
        {
            "name": "docker",
            "vgname": "docker_vol",
            "extents": "100%FREE",
            "require": [{"docker_storage": "docker-storage-vg"}],
        },
    )
    assert state(rendered, "docker-storage-filesystem")[:2] == (
        "docker_storage.filesystem_present",
        {
            "name": "/dev/docker_vol/docker",
            "fstype": "xfs",
            "require": [{"lvm": "docker-storage-lv"}],
        },
    )
    mounted = state(rendered, "docker-storage-mounted")
    assert mounted[0] == "mount.mounted"
    assert mounted[1]["name"] == "/var/lib/docker"
    assert mounted[1]["persist"] is True
    assert {"docker_storage": "docker-storage-data-root-moved"} in mounted[1]["require"]
    # No state runs a shell.
    assert not [sid for sid, body in rendered.items() if "cmd" in body]

    service = state(rendered, "docker-service")
    assert service[0] == "service.running"
    assert service[1]["name"] == "docker"
    assert service[1]["enable"] is True
    assert service[1]["watch"] == [{"file": "docker-config"}]
    assert {"test": "docker-storage-ready"} in service[1]["require"]

    config = state(rendered, "docker-config")[1]
    assert config["name"] == "/etc/docker/daemon.json"
    assert config["dataset"]["storage-driver"] == "overlay2"
    # daemon.json names the storage: written only after the storage states succeeded.
    assert config["require"] == [{"test": "docker-storage-ready"}]


def test_devicemapper_direct_lvm(node_os):
    _, show = node_os
    rendered = show_sls(show, {"docker": {"storage": {"mode": "devicemapper"}}})
    # The engine check gates the disk: nothing touches it on Engine >= 25.
    assert state(rendered, "docker-storage-driver-supported") == (
        "docker_storage.storage_driver_supported",
        {
            "name": "devicemapper",
            "require": [{"pkg": "docker-packages"}],
            "require_in": [{"docker_storage": "docker-storage-disk"}],
        },
    )
    assert state(rendered, "docker-storage-thinpool") == (
        "docker_storage.thin_pool_present",
        {
            "name": "thinpool",
            "vgname": "docker_vol",
            "metadata": "thinpoolmeta",
            "extents": "95%VG",
            "metadata_extents": "1%VG",
            "profile": "docker-thinpool",
            "require": [{"file": "docker-storage-thinpool-profile"}],
            "require_in": [{"test": "docker-storage-ready"}],
        },
    )
    profile = state(rendered, "docker-storage-thinpool-profile")[1]
    assert profile["name"] == "/etc/lvm/profile/docker-thinpool.profile"
    assert "thin_pool_autoextend_threshold=80" in profile["contents"]
    assert "thin_pool_autoextend_percent=20" in profile["contents"]
    assert state(rendered, "docker-config")[1]["dataset"]["storage-opts"] == [
        "dm.thinpooldev=/dev/mapper/docker_vol-thinpool",
        "dm.use_deferred_removal=true",
        "dm.use_deferred_deletion=true",
    ]
    assert "docker-storage-mounted" not in rendered
    assert not [sid for sid, body in rendered.items() if "cmd" in body]


def test_docker_repository_option(node_os):
    name, show = node_os
    override = {"docker": {"install": {"source": "docker"}}}
    if name == "amazon2023":
        proc = show(override)
        assert proc.returncode != 0
        assert "docker:install:source: 'docker' has no packages for this OS" in proc.stdout
        assert "did you mean" not in proc.stdout
        return
    rendered = show_sls(show, override)
    assert state(rendered, "docker-packages")[1]["pkgs"] == [
        "docker-ce",
        "docker-ce-cli",
        "containerd.io",
    ]
    if OS_GRAINS[name]["os_family"] == "Debian":
        distro = OS_GRAINS[name]["os"].lower()
        codename = OS_GRAINS[name]["oscodename"]
        assert state(rendered, "docker-repo")[1]["name"] == (
            "deb [signed-by=/etc/apt/keyrings/docker.asc] "
            f"https://download.docker.com/linux/{distro} {codename} stable"
        )


def test_shipped_dataserver_containers(node_os):
    _, show = node_os
    rendered = show_sls(show)
    kind, postgres = state(rendered, "docker-container-postgres")
    assert kind == "docker_containers.running"
    assert postgres["log_driver"] == "awslogs"
    assert postgres["log_opt"] == {
        "awslogs-region": "cn-north-1",
        "awslogs-group": "dataserver",
        "awslogs-stream": "postgres",
        "awslogs-create-group": "true",
    }
    assert postgres["restart_policy"] == "always"
    assert "restart_retries" not in postgres
    assert postgres["volumes_from"] == ["pg_data"]
    # Secrets stay references in the rendered states; resolved only when the state runs.
    assert postgres["environment"]["POSTGRES_PASSWORD"] == {"secret": "postgres_password"}
    assert {"docker_containers": "docker-container-pg_data"} in postgres["require"]
    pg_data = state(rendered, "docker-container-pg_data")[1]
    assert pg_data["start"] is False
    # The database is on a named volume, which outlives every container that mounts it.
    assert pg_data["binds"] == ["pgdata:/var/lib/postgresql"]
    assert {"docker_containers": "docker-volume-pgdata"} in postgres["require"]
