"""Nodes' whole life on a real kernel (qemu VMs), one per Debian release, in parallel:

- Debian 12 (docker.io 20.10): devicemapper on an LVM thin pool;
- Debian 13 (docker.io 26.1): overlay2 on an XFS LV; devicemapper refused (removed in Engine 25)
  before any disk is touched.

Each: `salt-cloud -p` (the boto3_ec2 driver against the local endpoint; its own wait-for-SSH and
deploy reach the VM) and nothing else: the master's reactor converges the node (minion joins,
modules synced, highstate: Docker from the node's local apt repository, LVM storage on the EBS
volume (NVMe, serial = volume id), containers with the GPG-decrypted secret), and
`salt-run node.wait_converged` reports it -> node-specific checks -> data written into the
container volume, reboot -> storage, data, container back and a highstate changes nothing ->
`salt-cloud -d`, after which the master has forgotten the node.
"""

import copy
import hashlib
import json
import os
import re
import threading
import time

import pytest

from tools.checkout_master import node_record
from tools.stack import APP_CONTAINER, DOCKER_DISK_DEVICE, QUOTA_CONTAINER

pytestmark = pytest.mark.e2e

NODE_CLASS = "backends"
# A disk that already holds a filesystem with data, and a blank one (attached besides the EBS
# volume): storage must never be built on either.
DATA_DISK_SERIAL = "e2e-data"
BLANK_DISK_SERIAL = "e2e-blank"
NODES = {
    # name: (Debian release, storage mode, how the EBS volume is attached)
    # QEMU 7.2's NVMe device refuses block_resize ("permissions 'resize' ... unshared"), so
    # the node that proves online growth of overlay2 gets its volume on virtio-blk (resizes
    # online, the guest is told), found through docker:storage:docker_volume; the other node keeps
    # NVMe with the volume id as serial, as on Nitro.
    "e2e-deb12-dm": ("bookworm", "devicemapper", "nvme"),
    "e2e-deb13-ov": ("trixie", "overlay2", "virtio"),
}


def by_id(serial):
    return f"/dev/disk/by-id/virtio-{serial}"


def failed_states(states):
    return {
        state_id: ret.get("comment")
        for state_id, ret in states.items()
        if not isinstance(ret, dict) or ret.get("result") is not True
    }


def changed_states(states):
    return {state_id: ret["changes"] for state_id, ret in states.items() if ret.get("changes")}


def assert_converged(result, states, secret, expect_changes):
    assert isinstance(result.data, dict) and states, (
        f"highstate did not return states (rc {result.returncode}):\n"
        f"{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    )
    assert not failed_states(states), json.dumps(failed_states(states), indent=1)[:6000]
    assert result.returncode == 0
    if not expect_changes:
        assert not changed_states(states), json.dumps(changed_states(states), indent=1)[:6000]
    # The decrypted secret reaches the container, never the state output.
    assert secret not in result.stdout


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as disk:
        for chunk in iter(lambda: disk.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def docker_info(node):
    return json.loads(node.ssh("docker info --format '{{json .}}'").stdout)


def assert_storage(deployed):
    node = deployed.node
    volume = node.guest_volume_device
    pvs = node.ssh("pvs --noheadings -o pv_name,vg_name").stdout.split()
    assert pvs == [volume, "docker_vol"], f"LVM physical volumes: {pvs}"
    info = docker_info(node)
    status = dict(info.get("DriverStatus") or [])
    if deployed.mode == "devicemapper":
        assert info["Driver"] == "devicemapper"
        assert status.get("Pool Name") == "docker_vol-thinpool", status
        attr = node.ssh("lvs --noheadings -o lv_attr docker_vol/thinpool").stdout.strip()
        assert attr.startswith("t"), f"docker_vol/thinpool is not a thin pool: {attr}"
    else:
        assert info["Driver"] == "overlay2"
        mount = node.ssh("findmnt -n -o SOURCE,FSTYPE --mountpoint /var/lib/docker").stdout
        assert mount.split() == ["/dev/mapper/docker_vol-docker", "xfs"], mount


def container_state(node, name=APP_CONTAINER):
    fmt = "{{.State.Running}} {{.HostConfig.RestartPolicy.Name}}"
    return node.ssh(f"docker inspect -f '{fmt}' {name}", check=False).stdout.split()


def wait_for_container(node, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if container_state(node)[:1] == ["true"]:
            return
        time.sleep(3)
    raise AssertionError(f"{APP_CONTAINER} not running {timeout} s after boot")


def refused_storage(stack, name, storage):
    """`state.apply docker.storage` with a pillar override: what it was refused with. The
    engine check and the disk gate run before any state that touches the disk, so a refusal
    is a failed state with nothing changed anywhere (or a render error: the salt CLI exits 0
    for one, the minion's return is then the list of errors)."""
    override = {"docker": {"storage": storage}}
    refused = stack.salt(name, "state.apply", "docker.storage", f"pillar={json.dumps(override)}")
    if isinstance(refused.data, list):
        return " ".join(refused.data)
    assert isinstance(refused.data, dict) and refused.data, refused.stdout[-3000:]
    assert failed_states(refused.data), "not refused"
    assert not changed_states(refused.data), changed_states(refused.data)
    return " ".join(str(comment) for comment in failed_states(refused.data).values())


def check_created(stack, deployed):
    """What salt-cloud reported, what EC2 holds, what the reactor's converge did."""
    name = deployed.name
    reported = deployed.cloud_output[name]
    assert reported["instance_id"] == deployed.instance_id
    volume = {
        "device_name": DOCKER_DISK_DEVICE,
        "volume_id": deployed.volume_id,
        "data_id": deployed.volume_id,
    }
    assert reported["docker_volume"] == volume
    # The grain the disk gate reads, pushed at deploy.
    assert stack.salt(name, "grains.get", "docker_volume").data == volume
    ec2 = stack.endpoint.client("ec2")
    instance = ec2.describe_instances(InstanceIds=[deployed.instance_id])["Reservations"][0][
        "Instances"
    ][0]
    tags = {tag["Key"]: tag["Value"] for tag in instance["Tags"]}
    assert tags["Name"] == name and tags["class"] == NODE_CLASS
    assert deployed.converge["state"] == "converged" and deployed.converge["failed"] == {}
    assert_storage(deployed)
    node = deployed.node
    assert container_state(node) == ["true", "always"]
    token = node.ssh(
        f"docker exec {APP_CONTAINER} sh -c 'printf %s \"$APP_TOKEN\" | sha256sum'"
    ).stdout.split()[0]
    assert token == hashlib.sha256(stack.app_secret.encode()).hexdigest(), "secret not delivered"


def check_devicemapper_refused_on_engine_26(stack, deployed, blank_disk):
    """Debian 13's Engine 26 has no devicemapper: refused, naming it, the blank disk untouched."""
    version = re.match(r"\d+\.\d+\.\d+", docker_info(deployed.node)["ServerVersion"]).group()
    assert version.startswith("26."), version
    before = sha256_file(blank_disk)
    errors = refused_storage(
        stack, deployed.name, {"mode": "devicemapper", "docker_volume": by_id(BLANK_DISK_SERIAL)}
    )
    assert "devicemapper" in errors and version in errors, errors
    assert sha256_file(blank_disk) == before, "the blank disk was written to"
    assert deployed.node.ssh(f"blkid -p {by_id(BLANK_DISK_SERIAL)}", check=False).returncode == 2
    assert_storage(deployed)


def check_disk_with_filesystem_refused(stack, deployed, data_disk):
    before = sha256_file(data_disk)
    errors = refused_storage(stack, deployed.name, {"docker_volume": by_id(DATA_DISK_SERIAL)})
    assert "is not blank: ext4 on the whole disk" in errors, errors
    assert sha256_file(data_disk) == before, "the data disk was written to"
    assert_storage(deployed)


def check_pquota(deployed):
    """The overlay2 LV is mounted with project quotas (and so in fstab): a container with
    storage_opt size=64M writes 40 MiB, not 100."""
    node = deployed.node
    options = node.ssh("findmnt -n -o OPTIONS --mountpoint /var/lib/docker").stdout.strip()
    assert "prjquota" in options.split(","), options
    fstab = node.ssh("grep -w /var/lib/docker /etc/fstab").stdout
    assert "pquota" in fstab, fstab
    fits = node.ssh(f"docker exec {QUOTA_CONTAINER} dd if=/dev/zero of=/fits bs=1M count=40")
    assert fits.returncode == 0
    beyond = node.ssh(
        f"docker exec {QUOTA_CONTAINER} dd if=/dev/zero of=/beyond bs=1M count=100", check=False
    )
    assert beyond.returncode != 0, beyond.stdout + beyond.stderr
    assert "quota" in beyond.stderr.lower() or "no space" in beyond.stderr.lower(), beyond.stderr
    # Free the layer again: Docker cannot even restart a container whose writable layer is at
    # its size limit (it makes the layer's `merged` directory inside the same quota).
    node.ssh(f"docker exec {QUOTA_CONTAINER} rm -f /fits /beyond")


def storage_bytes(deployed):
    """(the LV Docker's storage lives in, the filesystem on it (overlay2) or None)."""
    node = deployed.node
    lv = "docker_vol/thinpool" if deployed.mode == "devicemapper" else "docker_vol/docker"
    size = int(node.ssh(f"lvs --noheadings --units b --nosuffix -o lv_size {lv}").stdout)
    if deployed.mode == "devicemapper":
        return size, None
    filesystem = node.ssh("df -B1 --output=size /var/lib/docker | tail -1").stdout
    return size, int(filesystem)


def wait_for_disk_size(node, size, timeout=90):
    """Until the guest's kernel shows the grown disk. Nitro tells the NVMe driver with an
    event; if qemu's emulated controller does not, rescan it as that event would."""
    device = node.guest_volume_device
    controller = device.removeprefix("/dev/").split("n1")[0]
    started = time.monotonic()
    rescanned = False
    while int(node.ssh(f"blockdev --getsize64 {device}").stdout) != size:
        waited = time.monotonic() - started
        assert waited < timeout, "the guest did not see the larger disk"
        if waited > 15 and not rescanned and device.startswith("/dev/nvme"):
            print(f"{node.name}: no resize event after 15 s: rescanning {controller}")
            node.ssh(f"echo 1 > /sys/class/nvme/{controller}/rescan_controller", check=False)
            rescanned = True
        time.sleep(2)


def started_at(node):
    return node.ssh(f"docker inspect -f '{{{{.State.StartedAt}}}}' {APP_CONTAINER}").stdout


def check_growth(stack, deployed):
    """The EBS volume grows from 4 to 6 GiB under the running node (qemu block_resize, as
    EC2's ModifyVolume): the next highstate grows PV, LV and filesystem (or the thin pool)
    online; the container keeps running, its data stays."""
    node = deployed.node
    marker = f"written before growth {time.time()}"
    node.ssh(f"docker exec {APP_CONTAINER} sh -c 'echo \"{marker}\" > /data/grown'")
    lv_before, fs_before = storage_bytes(deployed)
    running_since = started_at(node)
    with stack.timer(f"{deployed.name}: disk 4 -> 6 GiB, highstate grows storage online"):
        node.grow_volume(6)
        wait_for_disk_size(node, 6 * 1024**3)
        result, states = stack.highstate(deployed.name)
    assert_converged(result, states, stack.app_secret, expect_changes=True)
    changed = changed_states(states)
    assert len(changed) == 1 and "docker-storage-grown" in next(iter(changed)), changed
    lv_after, fs_after = storage_bytes(deployed)
    assert lv_after > lv_before + 1024**3, (lv_before, lv_after)
    if fs_before is not None:
        assert fs_after > fs_before + 1024**3, (fs_before, fs_after)
    assert started_at(node) == running_since, "the container was restarted"
    assert node.ssh(f"docker exec {APP_CONTAINER} cat /data/grown").stdout.strip() == marker


# A 48 MiB image layer of random bytes, streamed into `docker import` (no file on the root fs).
IMPORT_RANDOM_IMAGE = (
    "python3 -c 'import io, os, sys, tarfile; t = tarfile.open(fileobj=sys.stdout.buffer, "
    'mode="w|"); i = tarfile.TarInfo("big"); i.size = 48 << 20; '
    "t.addfile(i, io.BytesIO(os.urandom(48 << 20))); t.close()' | docker import - {}"
)


def used_bytes(node, path):
    return int(node.ssh(f"sync; df -B1 --output=used {path} | tail -1").stdout)


def check_image_lands_on_the_volume(deployed, tag):
    """An image loaded now takes space on the Docker volume, not on the root filesystem."""
    node = deployed.node
    volume, root = used_bytes(node, "/var/lib/docker"), used_bytes(node, "/")
    node.ssh(IMPORT_RANDOM_IMAGE.format(tag))
    grown_volume = used_bytes(node, "/var/lib/docker") - volume
    grown_root = used_bytes(node, "/") - root
    assert grown_volume > 40 * 1024**2, f"volume +{grown_volume}, root +{grown_root}"
    assert grown_root < 16 * 1024**2, f"volume +{grown_volume}, root +{grown_root}"
    return grown_volume, grown_root


def check_graph_driver_store(deployed):
    """Default: the containerd image store off (daemon.json says so, whatever the engine's
    default), images in Docker's data-root on the volume."""
    node = deployed.node
    config = json.loads(node.ssh("cat /etc/docker/daemon.json").stdout)
    assert config["features"] == {"containerd-snapshotter": False}, config
    info = docker_info(node)
    assert info["Driver"] == "overlay2", info["Driver"]
    check_image_lands_on_the_volume(deployed, "e2e/random:graph-driver")


def check_containerd_store(stack, deployed):
    """containerd-snapshotter on (pillar switch): containerd's root is bind-mounted from the
    volume, so images loaded through the containerd store land on it too."""
    node = deployed.node
    stack.set_docker_pillar(
        deployed.name,
        config={"features": {"containerd-snapshotter": True}, "log-driver": "json-file"},
    )
    # The store switch only (containers made under the graph driver are not the point here).
    with stack.timer(f"{deployed.name}: containerd image store on"):
        result = stack.salt(
            deployed.name, "state.apply", "docker.containerd,docker.config,docker.service"
        )
    states = result.data if isinstance(result.data, dict) else {}
    assert_converged(result, states, stack.app_secret, expect_changes=True)
    info = docker_info(node)
    status = dict(info.get("DriverStatus") or [])
    assert status.get("driver-type") == "io.containerd.snapshotter.v1", (info["Driver"], status)
    source = node.ssh("findmnt -n -o SOURCE --mountpoint /var/lib/containerd").stdout.strip()
    assert source == "/dev/mapper/docker_vol-docker[/containerd-root]", source
    assert "/var/lib/containerd" in node.ssh("cat /etc/fstab").stdout
    check_image_lands_on_the_volume(deployed, "e2e/random:containerd")


def check_freeze(stack, deployed):
    """docker_storage.freeze, what node.snapshot_data holds around a snapshot: a write to the
    Docker volume's filesystem waits until docker_storage.thaw; a freeze nobody thaws ends by
    its timer."""
    node, name, probe = deployed.node, deployed.name, "/var/lib/docker/freeze-probe"
    started = "setsid -f touch {} </dev/null >/dev/null 2>&1; sleep 3"
    with stack.timer(f"{name}: freeze, thaw, a freeze thawed by its timer"):
        frozen = stack.salt(name, "docker_storage.freeze", "60")
        assert frozen.data == ["/var/lib/docker"], frozen.stdout + frozen.stderr
        node.ssh(started.format(f"{probe}-1"))
        assert node.ssh(f"test -e {probe}-1", check=False).returncode == 1, "written while frozen"
        assert stack.salt(name, "docker_storage.thaw").data == ["/var/lib/docker"]
        node.ssh(f"sleep 1; test -e {probe}-1")
        assert stack.salt(name, "docker_storage.freeze", "5").data == ["/var/lib/docker"]
        node.ssh(started.format(f"{probe}-2"))
        # Thawed by the timer, nobody called thaw (5 s after the freeze; a loaded TCG guest
        # may take longer to get there).
        node.ssh(f"timeout 60 sh -c 'until test -e {probe}-2; do sleep 1; done'")
        units = node.ssh("systemctl list-units --all --no-legend 'dockerhosts-thaw*'").stdout
        assert units.strip() == "", units
        node.ssh(f"rm -f {probe}-1 {probe}-2")


def check_reboot(stack, deployed):
    node = deployed.node
    marker = f"written before reboot {time.time()}"
    node.ssh(f"docker exec {APP_CONTAINER} sh -c 'echo \"{marker}\" > /data/marker'")
    with stack.timer(f"{deployed.name}: reboot, minion back, container back"):
        node.reboot()
        stack.wait_for_minion(deployed.name)
        wait_for_container(node)
    boot = node.ssh("systemd-analyze | head -1; systemd-analyze blame | head -3", check=False)
    stack.timer.note(f"{deployed.name}: after the reboot: {' / '.join(boot.stdout.split(chr(10)))}")
    assert_storage(deployed)
    assert container_state(node) == ["true", "always"]
    assert node.ssh(f"docker exec {APP_CONTAINER} cat /data/marker").stdout.strip() == marker
    with stack.timer(f"{deployed.name}: highstate after reboot (no changes)"):
        result, states = stack.highstate(deployed.name)
    assert_converged(result, states, stack.app_secret, expect_changes=False)


def check_destroyed(stack, deployed):
    name = deployed.name
    with stack.timer(f"{name}: salt-cloud -d"):
        destroyed = stack.destroy_node(name)
    assert destroyed.returncode == 0, destroyed.stderr[-3000:]
    assert stack.instance_state(deployed.instance_id) in ("shutting-down", "terminated")
    keys = json.loads(stack.run("salt-key", "--out=json", "-L", check=True).stdout)
    assert name not in keys.get("minions", []), keys
    # salt-cloud -d forgot the node on the master (its node record is gone).
    assert node_record(stack.root / ".salt" / "etc" / "salt" / "pki" / "master", name) is None


def node_lifecycle(stack, name, tmp_path):
    """Every stage of one node, asserting as it goes; raises at the first failure."""
    release, mode, disk_bus = NODES[name]
    vm = stack.vm
    data_disk = vm.make_filesystem_disk(
        tmp_path / "data-disk.raw", {"keep.txt": "customer data, must survive\n"}
    )
    blank_disk = tmp_path / "blank-disk.raw"
    with open(blank_disk, "wb") as disk:
        disk.truncate(64 * 1024**2)
    extra = [(data_disk, "virtio", DATA_DISK_SERIAL), (blank_disk, "virtio", BLANK_DISK_SERIAL)]
    deployed = stack.create_node(
        name, NODE_CLASS, mode, extra_disks=extra, release=release, disk_bus=disk_bus
    )
    try:
        check_created(stack, deployed)
        if release == "trixie":
            with stack.timer(f"{name}: devicemapper on Engine 26 (refused)"):
                check_devicemapper_refused_on_engine_26(stack, deployed, blank_disk)
            check_pquota(deployed)
            with stack.timer(f"{name}: image store: graph driver (default)"):
                check_graph_driver_store(deployed)
        else:
            with stack.timer(f"{name}: storage on a disk holding a filesystem (refused)"):
                check_disk_with_filesystem_refused(stack, deployed, data_disk)
        if disk_bus != "nvme":  # see NODES
            check_growth(stack, deployed)
        if mode == "overlay2":  # a filesystem on the volume (devicemapper: thin devices)
            check_freeze(stack, deployed)
        check_reboot(stack, deployed)
        if release == "trixie":
            check_containerd_store(stack, deployed)
        check_destroyed(stack, deployed)
    finally:
        if name in stack.nodes:
            stack.destroy_node(name)


# The data class's node: PostgreSQL (bin/build-postgres-image) on the named volume pgdata, the
# recipe's data-only container holding it, as pillar/classes/dataserver has them.
DATA_NODES = ("e2e-db-1", "e2e-db-2", "e2e-db-3")  # created, its replacement, restored
DATA_PILLAR = {
    "images": {"e2e/postgres": {"load": "salt://e2e/postgres.tar.gz", "tag": "15"}},
    "volumes": {"pgdata": {"driver": "local"}},
    "containers": {
        "pg_data": {
            "image": "e2e/busybox",
            "command": ["true"],
            "start": False,
            "binds": ["pgdata:/var/lib/postgresql"],
        },
        "postgres": {
            "image": "e2e/postgres:15",
            "volumes_from": ["pg_data"],
            "environment": {"POSTGRES_USER": "app", "POSTGRES_PASSWORD": {"secret": "app_token"}},
            "restart_policy": "always",
        },
    },
}


def psql(deployed, sql, timeout=180):
    """``sql`` run by the node's PostgreSQL (once it accepts connections): its output."""
    deadline, command = (
        time.monotonic() + timeout,
        f"docker exec postgres psql -U app -d postgres -Atc {sql!r}",
    )
    while True:
        found = deployed.node.ssh(command, check=False)
        if found.returncode == 0 or time.monotonic() > deadline:
            assert found.returncode == 0, found.stdout + found.stderr
            return found.stdout.strip()
        time.sleep(3)


def data_lifecycle(stack):
    """Issue 19: a row written to PostgreSQL on node A is read on node B after `node.replace`
    (the volume moved), and on node C created from the snapshot B's destroy took."""
    first, second, third = DATA_NODES
    marker = f"row written on {first} at {time.time()}"
    image = stack.work_dir / "files" / "e2e" / "postgres.tar.gz"
    assert image.exists(), "no PostgreSQL image for the nodes: run bin/build-postgres-image"
    try:
        with stack.timer(f"{first}: salt-cloud -p (dataserver, PostgreSQL), converge"):
            a = stack.create_node(first, "dataserver", docker_pillar=copy.deepcopy(DATA_PILLAR))
        psql(a, f"create table marker (v text); insert into marker values ('{marker}')")
        volume_id = a.volume_id
        with stack.timer(f"{first} -> {second}: node.replace (volume moved)"):
            replaced = stack.replace_node(first, second)
        assert replaced.returncode == 0, replaced.stdout[-4000:] + replaced.stderr[-3000:]
        try:
            answer = json.loads(replaced.stdout)
        except ValueError:
            raise AssertionError(f"not the runner's JSON: {replaced.stdout[-3000:]}") from None
        assert (answer["by"], answer["volume_id"]) == (second, volume_id), answer
        stack.timer.note(f"{first} -> {second}: node.replace took {answer['seconds']} s")
        b = stack.nodes[second]
        assert b.volume_id == volume_id and stack.instance_state(a.instance_id) == "terminated"
        assert psql(b, "select v from marker") == marker
        with stack.timer(f"{second}: salt-cloud -d (stopped, snapshot, volume kept)"):
            destroyed = stack.destroy_node(second)
        assert destroyed.returncode == 0, destroyed.stderr[-3000:]
        [kept] = json.loads(destroyed.stdout)["aws"]["boto3_ec2"][second]["kept_volumes"]
        assert kept["volume_id"] == volume_id and kept["snapshot_id"], kept
        restore = {"docker_volume": {"Ebs": {"SnapshotId": kept["snapshot_id"]}}}
        with stack.timer(f"{third}: salt-cloud -p from {second}'s last snapshot, converge"):
            c = stack.create_node(
                third,
                "dataserver",
                profile_extra=restore,
                docker_pillar=copy.deepcopy(DATA_PILLAR),
            )
        assert c.volume_id != volume_id
        assert stack.salt(third, "grains.get", "docker_volume").data["data_id"] == volume_id
        assert psql(c, "select v from marker") == marker
    finally:
        for name in DATA_NODES:
            if name in stack.nodes:
                stack.destroy_node(name)


@pytest.fixture(scope="module")
def lifecycles(stack, tmp_path_factory):
    """All nodes at once: TCG runs each guest on about one host core, so two nodes in parallel
    take little longer than one. Maps node name -> the exception it raised."""
    outcome = {}

    def run(name):
        try:
            node_lifecycle(stack, name, tmp_path_factory.mktemp(f"node-{name}"))
            outcome[name] = None
        except BaseException as error:  # reported by that node's test
            outcome[name] = error

    def run_data():
        try:
            data_lifecycle(stack)
            outcome[DATA_NODES[0]] = None
        except BaseException as error:  # reported by its test
            outcome[DATA_NODES[0]] = error

    # DOCKERHOSTS_E2E_NODES=e2e-deb13-ov (comma-separated) runs only those nodes.
    wanted = os.environ.get("DOCKERHOSTS_E2E_NODES")
    names = [n for n in NODES if not wanted or n in wanted.split(",")]
    threads = [threading.Thread(target=run, args=(name,), name=name) for name in names]
    if not wanted or DATA_NODES[0] in wanted.split(","):
        threads.append(threading.Thread(target=run_data, name=DATA_NODES[0]))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcome


@pytest.mark.parametrize("name", list(NODES))
def test_node_lifecycle(lifecycles, name):
    if name not in lifecycles:
        pytest.skip("not selected by DOCKERHOSTS_E2E_NODES")
    error = lifecycles[name]
    if error is not None:
        raise error


def test_data_outlives_its_node(lifecycles):
    """A PostgreSQL row survives node.replace and destroy + restore from the snapshot."""
    if DATA_NODES[0] not in lifecycles:
        pytest.skip("not selected by DOCKERHOSTS_E2E_NODES")
    error = lifecycles[DATA_NODES[0]]
    if error is not None:
        raise error
