"""A node's whole life, per storage mode, on a real kernel (qemu VM):

salt-cloud -p (the boto3_ec2 driver against the local endpoint; its own wait-for-SSH and
deploy reach the VM) -> the minion joins -> highstate installs Docker from the node's local
apt repository, builds LVM storage on the EBS volume (NVMe, serial = volume id) and starts
the containers with the GPG-decrypted secret -> highstate again changes nothing -> data
written into the container volume, reboot -> storage, data, containers (restart policy) back
and highstate still changes nothing -> the storage state pointed at a disk holding a
filesystem refuses and leaves the disk byte-for-byte intact -> salt-cloud -d.
"""

import hashlib
import json
import threading
import time

import pytest

from tools.stack import APP_CONTAINER, DOCKER_DISK_DEVICE

pytestmark = pytest.mark.e2e

# A disk that already holds a filesystem with data (attached besides the EBS volume).
DATA_DISK_SERIAL = "e2e-data"
DATA_DISK_GUEST_PATH = f"/dev/disk/by-id/virtio-{DATA_DISK_SERIAL}"
NODE_CLASS = "backends"
STORAGE_MODES = ("devicemapper", "overlay2")


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


def docker_storage(node):
    """(driver, driver status as a dict) from `docker info`."""
    info = node.ssh("docker info --format '{{json .}}'").stdout
    info = json.loads(info)
    return info["Driver"], dict(info.get("DriverStatus") or [])


def assert_storage(deployed):
    node = deployed.node
    volume = node.guest_volume_device
    pvs = node.ssh("pvs --noheadings -o pv_name,vg_name").stdout.split()
    assert pvs == [volume, "docker_vol"], f"LVM physical volumes: {pvs}"
    driver, status = docker_storage(node)
    if deployed.mode == "devicemapper":
        assert driver == "devicemapper"
        assert status.get("Pool Name") == "docker_vol-thinpool", status
        attr = node.ssh("lvs --noheadings -o lv_attr docker_vol/thinpool").stdout.strip()
        assert attr.startswith("t"), f"docker_vol/thinpool is not a thin pool: {attr}"
    else:
        assert driver == "overlay2"
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


def node_lifecycle(stack, mode, tmp_path):
    """Every stage of one node, asserting as it goes; raises at the first failure."""
    name = f"e2e-{mode}"
    stage = stack.timer
    secret_digest = hashlib.sha256(stack.app_secret.encode()).hexdigest()
    vm = stack.vm
    data_disk = vm.make_filesystem_disk(
        tmp_path / "data-disk.raw", {"keep.txt": "customer data, must survive\n"}
    )
    data_disk_digest = sha256_file(data_disk)

    deployed = stack.create_node(
        name, NODE_CLASS, mode, extra_disks=[(data_disk, "virtio", DATA_DISK_SERIAL)]
    )
    node = deployed.node
    try:
        # What salt-cloud reported and what EC2 holds.
        reported = deployed.cloud_output[name]
        assert reported["instance_id"] == deployed.instance_id
        assert reported["docker_disk"] == {
            "device": DOCKER_DISK_DEVICE,
            "volume_id": deployed.volume_id,
        }
        ec2 = stack.endpoint.client("ec2")
        instance = ec2.describe_instances(InstanceIds=[deployed.instance_id])["Reservations"][0][
            "Instances"
        ][0]
        tags = {tag["Key"]: tag["Value"] for tag in instance["Tags"]}
        assert tags["Name"] == name and tags["class"] == NODE_CLASS
        # The minion got its grains through salt-cloud's deploy.
        grains = stack.salt(name, "grains.item", "class", "docker_disk").data
        assert grains == {"class": NODE_CLASS, "docker_disk": reported["docker_disk"]}

        with stage(f"{name}: highstate 1 (Docker, storage, containers)"):
            result, states = stack.highstate(name)
        assert_converged(result, states, stack.app_secret, expect_changes=True)
        assert_storage(deployed)
        assert container_state(node) == ["true", "always"]
        token = node.ssh(
            f"docker exec {APP_CONTAINER} sh -c 'printf %s \"$APP_TOKEN\" | sha256sum'"
        ).stdout.split()[0]
        assert token == secret_digest, "the container did not get the decrypted secret"

        with stage(f"{name}: highstate 2 (no changes)"):
            result, states = stack.highstate(name)
        assert_converged(result, states, stack.app_secret, expect_changes=False)

        marker = f"written before reboot {time.time()}"
        node.ssh(f"docker exec {APP_CONTAINER} sh -c 'echo \"{marker}\" > /data/marker'")
        with stage(f"{name}: reboot, minion back, container back"):
            node.reboot()
            stack.wait_for_minion(name)
            wait_for_container(node)
        assert_storage(deployed)
        assert container_state(node) == ["true", "always"]
        kept = node.ssh(f"docker exec {APP_CONTAINER} cat /data/marker").stdout.strip()
        assert kept == marker

        with stage(f"{name}: highstate 3 after reboot (no changes)"):
            result, states = stack.highstate(name)
        assert_converged(result, states, stack.app_secret, expect_changes=False)

        with stage(f"{name}: storage state on a disk holding a filesystem (refused)"):
            override = {"docker": {"storage": {"device": DATA_DISK_GUEST_PATH}}}
            refused = stack.salt(
                name, "state.apply", "docker.storage", f"pillar={json.dumps(override)}"
            )
        # Refused while rendering (docker_host.validate), before any state ran. (The salt CLI
        # exits 0 for a render error: the minion's return is the list of errors.)
        refusal = f"{DATA_DISK_GUEST_PATH} holds a ext4 filesystem"
        assert isinstance(refused.data, list), refused.stdout[-3000:]
        assert refusal in " ".join(refused.data), refused.stdout[-3000:]
        assert node.ssh(f"blkid -o value -s TYPE {DATA_DISK_GUEST_PATH}").stdout.strip() == "ext4"
        assert sha256_file(data_disk) == data_disk_digest, "the data disk was written to"
        # The real storage is untouched by the refused run.
        assert_storage(deployed)

        with stage(f"{name}: salt-cloud -d"):
            destroyed = stack.destroy_node(name)
        assert destroyed.returncode == 0, destroyed.stderr[-3000:]
        assert stack.instance_state(deployed.instance_id) in ("shutting-down", "terminated")
        keys = json.loads(stack.run("salt-key", "--out=json", "-L", check=True).stdout)
        assert name not in keys.get("minions", []), keys
    finally:
        if name in stack.nodes:
            stack.destroy_node(name)


@pytest.fixture(scope="module")
def lifecycles(stack, tmp_path_factory):
    """Both storage modes' nodes at once: TCG runs each guest on about one host core, so two
    nodes in parallel take little longer than one. Maps mode -> the exception it raised."""
    outcome = {}

    def run(mode):
        try:
            node_lifecycle(stack, mode, tmp_path_factory.mktemp(f"node-{mode}"))
            outcome[mode] = None
        except BaseException as error:  # reported by that mode's test
            outcome[mode] = error

    threads = [threading.Thread(target=run, args=(mode,), name=mode) for mode in STORAGE_MODES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcome


@pytest.mark.parametrize("mode", STORAGE_MODES)
def test_node_lifecycle(lifecycles, mode):
    error = lifecycles[mode]
    if error is not None:
        raise error
