"""bin/demo: the main job end to end on this machine, no AWS account (see docs/e2e.md).

Local EC2 endpoint, salt-master, then per requested class one command, `salt-cloud -p` (the
boto3_ec2 driver launches the instance; its deploy reaches a qemu VM standing in for it; the
master's reactor then converges the node, which `salt-run node.wait_converged` waits for), and
a summary of what was built. Everything is removed on exit, error or Ctrl-C.
"""

import argparse
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from tools import stack as stack_module

STORAGE_MODES = ("overlay2", "devicemapper")


def class_profiles():
    profiles = {}
    for conf in sorted((stack_module.REPO_ROOT / "cloud.profiles.d").glob("*.conf")):
        profiles.update(yaml.safe_load(conf.read_text()) or {})
    return sorted(name for name, profile in profiles.items() if profile.get("class"))


def say(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def show_node(local, deployed):
    """What a user checks after provisioning: instance, tags, disk, containers, storage."""
    ec2 = local.ec2()
    instance = ec2.describe_instances(InstanceIds=[deployed.instance_id])["Reservations"][0][
        "Instances"
    ][0]
    volume = ec2.describe_volumes(VolumeIds=[deployed.volume_id])["Volumes"][0]
    tags = ", ".join(f"{t['Key']}={t['Value']}" for t in sorted(instance["Tags"], key=str))
    node = deployed.node
    lines = [
        f"== {deployed.name}",
        f"instance  {instance['InstanceId']}  {instance['InstanceType']}  "
        f"{instance['State']['Name']}  private {instance['PrivateIpAddress']}  "
        f"(VM: qemu, SSH forwarded from that address)",
        f"tags      {tags}",
        f"disk      {volume['VolumeId']}  {volume['Size']} GiB {volume['VolumeType']}  "
        f"as /dev/sdb -> in the guest {node.guest_volume_device} (NVMe serial "
        f"{deployed.volume_id.replace('-', '')})",
        "docker ps:",
        node.ssh("docker ps --format 'table {{.Names}}\\t{{.Image}}\\t{{.Status}}'", check=False)
        .stdout.rstrip()
        .replace("\n", "\n  ")
        .join(["  ", ""]),
        "storage:",
        node.ssh(
            "docker info --format 'driver {{.Driver}}'; "
            "lvs --noheadings -o lv_name,vg_name,lv_attr,lv_size,devices 2>/dev/null; "
            "findmnt -n -o SOURCE,TARGET,FSTYPE --mountpoint /var/lib/docker || true",
            check=False,
        )
        .stdout.rstrip()
        .replace("\n", "\n  ")
        .join(["  ", ""]),
    ]
    print("\n".join(lines), flush=True)


def provision(local, node_class, mode, release):
    """One command: `salt-cloud -p`; the reactor converges the node (raises if it failed)."""
    name = f"demo-{node_class}"
    deployed = local.create_node(name, node_class, mode, release=release)
    record = deployed.converge
    seconds = record.get("seconds") or {}
    say(
        f"{name}: converged by the reactor: {record.get('states')} states, "
        f"{record.get('changed')} changed (minion joined {seconds.get('minion')} s, "
        f"modules synced {seconds.get('sync')} s, highstate {seconds.get('highstate')} s)"
    )
    return deployed


def parse_args(argv):
    classes = class_profiles()
    parser = argparse.ArgumentParser(
        prog="bin/demo",
        description="Provision Docker hosts end to end on this machine: local EC2 endpoint, "
        "salt-master, one `salt-cloud -p` per class (a qemu VM plays the instance, the "
        "master's reactor converges it). Cleans up on exit.",
    )
    parser.add_argument(
        "classes", nargs="*", default=["backends"], help=f"node classes ({', '.join(classes)})"
    )
    parser.add_argument("--storage", choices=STORAGE_MODES, default="overlay2")
    parser.add_argument(
        "--release",
        choices=stack_module.vm.RELEASES,
        default="trixie",
        help="Debian release of the nodes: trixie (13, Engine 26) or bookworm (12, Engine 20.10,"
        " the only one with devicemapper)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="after the summary, wait for Enter before cleaning up"
    )
    parser.add_argument(
        "--hold",
        action="store_true",
        help="create no node: start the local EC2 endpoint and salt-master, print the shell "
        "setup, and boot a VM for each instance you launch yourself with `salt-cloud -p "
        "local-<class> <name>` (removed with its instance) until Ctrl-C",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.classes) - set(classes))
    if unknown:
        parser.error(f"unknown class {unknown}: cloud.profiles.d has {classes}")
    if args.storage == "devicemapper" and args.release != "bookworm":
        parser.error("devicemapper needs Docker Engine <= 24: use --release bookworm")
    return args


def provision_all(local, args):
    """One VM per class, all at once (each guest keeps about one host core busy); returns
    {class: deployed node or the exception it failed with}."""
    outcome = {}

    def run(node_class):
        try:
            outcome[node_class] = provision(local, node_class, args.storage, args.release)
        except Exception as error:
            outcome[node_class] = error

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in args.classes]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)
    return outcome


def run_demo(local, args):
    local.start(releases=(args.release,))
    outcome = provision_all(local, args)
    failures = {c: e for c, e in outcome.items() if isinstance(e, Exception)}
    for node_class, deployed in outcome.items():
        if node_class not in failures:
            show_node(local, deployed)
    for node_class, error in failures.items():
        say(f"FAILED {node_class}: {error}")
    if args.keep:
        input("Press Enter to destroy everything... ")
    for name in list(local.nodes):
        with local.timer(f"{name}: salt-cloud -d"):
            local.destroy_node(name)
    return 1 if failures else 0


# Where a holding demo tells `bin/demo --shell` how to join it (its PID, inside the demo's
# network namespace, and the shell setup file).
HOLD_STATE = stack_module.REPO_ROOT / ".salt" / "demo-hold.env"


def write_shell_setup(local):
    """<work>/env.sh (what `bin/demo --shell` sources: config dir, venv, endpoint), and
    HOLD_STATE pointing at it."""
    exports = {key: value for key, value in local.env.items() if key != "HOME"}
    lines = [f"cd {shlex.quote(str(local.root))}"]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in sorted(exports.items())]
    lines.append("PS1='(docker-hosts demo) \\w \\$ '")
    path = local.work_dir / "env.sh"
    path.write_text("\n".join(lines) + "\n")
    HOLD_STATE.parent.mkdir(parents=True, exist_ok=True)
    HOLD_STATE.write_text(f"DEMO_PID={os.getpid()}\nDEMO_ENV={shlex.quote(str(path))}\n")
    return path


def serve_instances(local, args, stop, poll=1.0):
    """Boot a VM for every running instance of the local endpoint's loopback subnet that has
    none, and remove the VM of every instance that is gone, until ``stop`` is set."""
    subnet = local.endpoint.ids["loopback_subnet"]
    while not stop.is_set():
        live = {}
        for reservation in local.ec2().describe_instances()["Reservations"]:
            for instance in reservation["Instances"]:
                if instance.get("SubnetId") == subnet and instance["State"]["Name"] == "running":
                    live[instance["InstanceId"]] = instance
        served = {deployed.instance_id: name for name, deployed in local.nodes.items()}
        for instance_id, instance in live.items():
            if instance_id not in served:
                deployed = local.start_vm(instance, args.storage, args.release)
                say(f"{deployed.name}: instance {instance_id} is running: its VM boots")
        for instance_id, name in served.items():
            if instance_id not in live:
                local.nodes.pop(name).node.destroy()
                say(f"{name}: instance {instance_id} is gone: its VM was removed")
        stop.wait(poll)


def hold(local, args):
    """--hold: the local stack serves the operator's own salt-cloud commands (README)."""
    local.start(releases=(args.release,))
    classes = class_profiles()
    for node_class in classes:
        local.add_profile(f"local-{node_class}", node_class)
    write_shell_setup(local)
    print(
        "\nThe local EC2 endpoint and salt-master are up. In another shell, from the "
        "repository:\n\n"
        "  bin/demo --shell\n"
        f"  salt-cloud -p local-{classes[0]} web1      # profiles: "
        + ", ".join(f"local-{c}" for c in classes)
        + "\n  salt-run node.wait_converged web1\n"
        "  salt web1 cmd.run 'docker ps'\n"
        "  salt-cloud -d web1 -y\n\n"
        "Each instance launched there gets a VM (Ctrl-C here removes everything).\n",
        flush=True,
    )
    try:
        serve_instances(local, args, threading.Event())
    finally:
        HOLD_STATE.unlink(missing_ok=True)
    return 0


def main(argv=None):
    args = parse_args(argv)
    # SIGTERM cleans up like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="dockerhosts-demo-"))
    local = stack_module.Stack(work, log=say)
    try:
        return hold(local, args) if args.hold else run_demo(local, args)
    except KeyboardInterrupt:
        say("interrupted: cleaning up")
        return 130
    finally:
        with local.timer("cleanup (VMs, instances, master, endpoint)"):
            local.close()
        shutil.rmtree(work, ignore_errors=True)
        print("\nstage timings:\n" + local.timer.report(), flush=True)
        say(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
