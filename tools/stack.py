"""The main job, run locally: a local EC2 endpoint, a salt-master, salt-cloud, qemu VM nodes.

Used by the e2e tier (tests/e2e/) and by bin/demo. Everything runs from a work directory:
a copy of the repository's salt-cloud/master configuration (Saltfile, cloud, master,
cloud.providers.d, cloud.profiles.d, cloud.deploy.d; `salt` links to the repository's states)
plus what stands in for AWS and for the operator's secrets:

- moto on 127.0.0.1 (tools/ec2_endpoint.py) with a VPC 127.0.0.0/16, so an
  instance's private address is a loopback address; the node's VM forwards SSH from exactly
  that address, so salt-cloud's own wait-for-SSH and deploy reach the VM;
- a salt-master from the copy (`salt-master -c .`), on 127.0.0.1, which the guests reach as
  10.0.2.2 (qemu user-mode networking);
- a profile per node extending the repository's class profile: private key, loopback
  subnet, the deploy script cloud.deploy.d/preinstalled-minion.sh (the image has Salt; no
  salt-bootstrap download), the master's address as the guest sees it;
- a throwaway GPG key for the master and a pillar whose container secret is encrypted for it;
- a busybox image (docker save format, built from the host's static busybox) the highstate
  loads from salt://: the guests have no registry to pull from.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tools import checkout_paths, ec2_endpoint, gpg, images, salt_repo, vm
from tools.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent
STACK_MARKER = "DOCKERHOSTS_STACK"
CONFIG_PATHS = ("Saltfile", "cloud", "cloud.providers.d", "cloud.profiles.d", "cloud.deploy.d")
# The Docker volume's device name in the class profiles (cloud.profiles.d, docker_volume).
DOCKER_DISK_DEVICE = "/dev/sdb"
# Containers name it without a tag (docker adds :latest); docker_image.present with `load`
# wants the repository and the tag apart.
APP_IMAGE = "e2e/busybox"
APP_IMAGE_TAG = "latest"
APP_CONTAINER = "app"
# overlay2 nodes: a container limited to QUOTA_SIZE of writable layer (storage_opt size:
# XFS project quotas, the LV mounted with pquota).
QUOTA_CONTAINER = "quota"
QUOTA_SIZE = "64M"
APP_DATA_CONTAINER = "app_data"
# What the app container's PID 1 runs: it exits on SIGTERM at once (Docker stops it fast on
# reboot) and otherwise sleeps.
APP_COMMAND = ["sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1; done']


def json_document(text):
    """The JSON document at the end of `text`: salt-cloud prints the deploy's output first."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads("\n".join(lines[index:]))
    raise ValueError(f"no JSON document in output:\n{text[-2000:]}")


class StageTimer:
    """Records how long each named stage took; `report()` is the table the docs quote."""

    def __init__(self, log=None):
        self.stages: list[tuple[str, float]] = []
        self.notes: list[str] = []
        self.log = log or (lambda message: None)

    @contextlib.contextmanager
    def __call__(self, name):
        self.log(f"-> {name}")
        started = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - started
            self.stages.append((name, seconds))
            self.log(f"<- {name}: {seconds:.1f} s")

    def note(self, text):
        """A line printed under the stages (e.g. where a stage spent its time)."""
        self.notes.append(text)

    def report(self):
        lines = [f"{seconds:7.1f} s  {name}" for name, seconds in self.stages]
        return "\n".join(lines + [f"  {text}" for text in self.notes])


@dataclass
class DeployedNode:
    name: str
    mode: str
    node: object  # tools.vm.Node
    instance_id: str
    private_address: str
    volume_id: str
    cloud_output: dict = field(default_factory=dict)
    converge: dict = field(default_factory=dict)
    # Merged over the node's docker: pillar (e.g. {"config": {"features": {...}}}).
    docker_pillar: dict = field(default_factory=dict)

    def ssh(self, command, **kwargs):
        return self.node.ssh(command, **kwargs)


class Stack:
    """Endpoint + master + config copy; `create_node` runs `salt-cloud -p` and boots the VM."""

    def __init__(self, work_dir: Path, log=None, app_secret: str | None = None):
        self.work_dir = Path(work_dir)
        self.root = self.work_dir / "config"
        self.log = log or (lambda message: None)
        self.timer = StageTimer(self.log)
        self.app_secret = app_secret or os.urandom(12).hex()
        self.endpoint = None
        self.master = None
        self.gpg_home = None
        self.nodes: dict[str, DeployedNode] = {}
        # Nodes of several storage modes are created and driven from parallel threads.
        self.lock = threading.Lock()
        self._ec2 = None
        self.ret_port = free_port()
        self.publish_port = free_port()
        self.vm = vm
        self.env = {
            "PATH": f"{BIN_DIR}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
            "HOME": str(self.work_dir),
            "LANG": "C.UTF-8",
            # Every process the stack starts, and every one they start (the master's reactor
            # runs its converges detached from the master's process group), carries this: the
            # teardown finds them by it.
            STACK_MARKER: str(self.work_dir),
        }

    # --- setup ---------------------------------------------------------------------------

    def start(self, releases=("bookworm",)):
        # Fail first if an image is not built.
        self.image_dirs = {release: self.vm.node_image_dir(release) for release in releases}
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.key = self.work_dir / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "e2e", "-f", str(self.key)],
            check=True,
        )
        with self.timer("config copy, GPG key, pillar, busybox image"):
            self._write_config()
        with self.timer("local EC2 endpoint (moto)"):
            self.endpoint = ec2_endpoint.start(
                self.root, public_key=self.key.with_suffix(".pub").read_text()
            )
            self.env.update(self.endpoint.env())
        with self.timer("salt-master"):
            self._start_master()
        return self

    def _write_config(self):
        self.root.mkdir(parents=True)
        for relative in CONFIG_PATHS:
            source = REPO_ROOT / relative
            if source.is_dir():
                shutil.copytree(source, self.root / relative)
            else:
                shutil.copy2(source, self.root / relative)
        # The states, modules and the driver are the repository's own, unchanged.
        (self.root / "salt").symlink_to(REPO_ROOT / "salt")
        files = self.work_dir / "files"
        (files / "e2e").mkdir(parents=True)
        images.busybox_image_tar(files / "e2e" / "busybox.tar", f"{APP_IMAGE}:{APP_IMAGE_TAG}")
        postgres = Path(
            subprocess.run(
                [str(REPO_ROOT / "bin" / "build-postgres-image"), "--print-path"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        if postgres.is_file():  # data nodes load it (bin/build-postgres-image, from bin/setup)
            (files / "e2e" / postgres.name).symlink_to(postgres)
        self.gpg_home = self.work_dir / "gpg"
        self.gpg_public = gpg.make_key(self.gpg_home, name="e2e-salt-master")
        (self.work_dir / "pillar").mkdir()
        master = yaml.safe_load((REPO_ROOT / "master").read_text())
        # The repository's master with its paths absolute (as bin/salt-master makes them):
        # reactor, module_dirs, ...; then the stack's own pki/cache, pillar and ports.
        master.pop("default_include", None)
        master.update(checkout_paths.absolute_paths(master, REPO_ROOT))
        master.update(
            {
                "root_dir": str(self.root / ".salt"),
                "file_roots": {"base": [str(REPO_ROOT / "salt"), str(files)]},
                "pillar_roots": {"base": [str(self.work_dir / "pillar")]},
                "gpg_keydir": str(self.gpg_home),
                # On the host's loopback; the guests reach it through qemu as 10.0.2.2.
                "interface": "127.0.0.1",
                "ret_port": self.ret_port,
                "publish_port": self.publish_port,
                "log_level_logfile": "info",
                # The salt CLI asks a minion whether a job still runs every
                # gather_job_timeout seconds, a new process on the minion each time: costly
                # under TCG during a long highstate.
                "gather_job_timeout": 60,
            }
        )
        (self.root / "master").write_text(yaml.safe_dump(master))
        self._write_pillar()

    def _write_pillar(self):
        """Pillar per node: its storage mode, the app containers, the encrypted secret."""
        pillar_dir = self.work_dir / "pillar"
        top = {"base": {name: [f"node_{name}"] for name in self.nodes}}
        (pillar_dir / "top.sls").write_text(yaml.safe_dump(top))
        secret = gpg.armored(self.gpg_public, self.app_secret)
        for name, deployed in self.nodes.items():
            pillar = {
                "docker": {
                    "storage": {"mode": deployed.mode, "volume_group": "docker_vol"},
                    "images": {APP_IMAGE: {"load": "salt://e2e/busybox.tar", "tag": APP_IMAGE_TAG}},
                    "containers": {
                        APP_DATA_CONTAINER: {
                            "image": APP_IMAGE,
                            "command": ["true"],
                            "start": False,
                            "volumes": ["/data"],
                        },
                        APP_CONTAINER: {
                            "image": APP_IMAGE,
                            "command": APP_COMMAND,
                            "volumes_from": [APP_DATA_CONTAINER],
                            "environment": {"APP_TOKEN": {"secret": "app_token"}},
                            "restart_policy": "always",
                        },
                    },
                },
                "docker.update_mine": False,
                "docker_secrets": {"app_token": secret},
            }
            for key, value in deployed.docker_pillar.items():
                if isinstance(value, dict) and isinstance(pillar["docker"].get(key), dict):
                    pillar["docker"][key] = {**pillar["docker"][key], **value}
                else:
                    pillar["docker"][key] = value
            if deployed.mode == "overlay2":
                pillar["docker"]["containers"][QUOTA_CONTAINER] = {
                    "image": APP_IMAGE,
                    "command": APP_COMMAND,
                    "storage_opt": {"size": QUOTA_SIZE},
                    # Back after a reboot like the app, so that a highstate then changes nothing.
                    "restart_policy": "always",
                }
            (pillar_dir / f"node_{name}.sls").write_text(
                "#!yaml|gpg\n" + yaml.safe_dump(pillar, default_style=None, width=1000)
            )

    def _start_master(self):
        log = open(self.work_dir / "salt-master.out", "ab")
        with log:
            self.master = subprocess.Popen(
                [str(BIN_DIR / "salt-master"), "-c", ".", "-l", "warning"],
                cwd=self.root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while True:
            if self.master.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "salt-master did not start:\n"
                    + (self.work_dir / "salt-master.out").read_text(errors="replace")
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.ret_port), timeout=1),
            ):
                break
            time.sleep(0.2)

    # --- commands --------------------------------------------------------------------------

    def run(self, program, *args, timeout=600, check=False):
        """Run a Salt CLI (salt, salt-cloud, salt-key, salt-run) from the config copy."""
        result = salt_repo.run_cli(program, args, cwd=self.root, env=self.env, timeout=timeout)
        with open(self.work_dir / "commands.log", "a") as log:
            log.write(
                f"$ {program} {' '.join(args)}  (rc {result.returncode}, {result.seconds:.1f} s)\n"
                f"{result.stdout}\n{result.stderr}\n"
            )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} exited {result.returncode}\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result

    def popen(self, program, *args):
        """A Salt CLI from the config copy, in the background, its output piped."""
        return subprocess.Popen(
            [str(BIN_DIR / program), *args],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def salt(self, target, function, *args, timeout=900):
        """`salt <target> <function>` through the master; returns the target's parsed return."""
        result = self.run(
            "salt",
            "--out=json",
            "--static",
            f"--timeout={timeout}",
            target,
            function,
            *args,
            # The CLI may wait gather_job_timeout (60 s, below) after its own timeout.
            timeout=timeout + 180,
        )
        try:
            data = json.loads(result.stdout) if result.stdout.strip() else {}
        except json.JSONDecodeError:
            data = {}
        result.data = data.get(target) if isinstance(data, dict) else None
        return result

    def wait_for_minion(self, name, timeout=600):
        # One ping at a time, each given 30 s: under TCG every job is a slow new process.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                if self.salt(name, "test.ping", timeout=30).data is True:
                    return
            time.sleep(5)
        raise RuntimeError(f"minion {name} did not answer test.ping within {timeout} s")

    def highstate(self, name, timeout=1200):
        """Run a highstate; returns (ProcessResult, {state id: ret}) with every state's ret."""
        result = self.salt(name, "state.apply", timeout=timeout)
        states = result.data if isinstance(result.data, dict) else {}
        return result, states

    # --- nodes -----------------------------------------------------------------------------

    def add_profile(self, profile, base_class, **extra):
        """A profile extending the repository's class profile, for nodes run as local VMs;
        ``extra``: more keys of the profile."""
        overrides = {
            profile: {
                **extra,
                "extends": base_class,
                "subnetid": self.endpoint.ids["loopback_subnet"],
                "ssh_interface": "private_ips",
                "private_key": str(self.key),
                # The image has Salt: configure and start it (no salt-bootstrap download).
                "script": "preinstalled-minion",
                # The VM boots under TCG (~40 s to sshd): salt-cloud keeps trying meanwhile.
                "wait_for_passwd_maxtries": 240,
                "ssh_connect_timeout": 10,
                "minion": {
                    "master": self.vm.HOST_ADDRESS_FROM_GUEST,
                    "master_port": self.ret_port,
                    "publish_port": self.publish_port,
                    # No resolver in the guest: do not wait on reverse lookups.
                    "enable_fqdns_grains": False,
                    # Under TCG each highstate's automatic sync of all ~20 extension module
                    # types costs ~85 s; create_node syncs modules and states once instead.
                    "autoload_dynamic_modules": False,
                },
            }
        }
        path = self.root / "cloud.profiles.d" / f"zz-{profile}.conf"
        if not path.exists():  # nodes of one class share it; salt-cloud may be reading it
            path.write_text(yaml.safe_dump(overrides))

    def create_node(
        self,
        name,
        base_class="backends",
        mode="overlay2",
        *,
        extra_disks=(),
        release="bookworm",
        disk_bus="nvme",
        profile_extra=None,
        docker_pillar=None,
    ):
        """`salt-cloud -p` a node, booting its VM as soon as EC2 gives it an address; the
        master's reactor then converges it: `salt-run node.wait_converged` waits for that.
        ``profile_extra``: keys of a profile of its own; ``docker_pillar``: sections merged
        over its docker: pillar."""
        profile = f"local-{name}" if profile_extra else f"local-{base_class}"
        with self.lock:
            self.add_profile(profile, base_class, **(profile_extra or {}))
            placeholder = DeployedNode(name, mode, None, "", "", "")
            placeholder.docker_pillar.update(docker_pillar or {})
            if disk_bus == "virtio":
                # No NVMe serial to find the volume by (and /dev/sdb is not its name): the
                # operator's override, docker:storage:docker_volume. The root disk is vda.
                placeholder.docker_pillar["storage"] = {"docker_volume": "/dev/vdb"}
            self.nodes[name] = placeholder
            self._write_pillar()
        ec2 = self.ec2()
        with self.timer(f"{name}: salt-cloud -p {profile} (launch, boot VM, SSH, deploy)"):
            cloud = self.popen("salt-cloud", "--out=json", "-p", profile, name)
            try:
                instance = self._wait_for_instance(ec2, name, cloud)
                deployed = self.start_vm(
                    instance,
                    mode,
                    release,
                    docker_pillar=placeholder.docker_pillar,
                    disk_bus=disk_bus,
                    extra_disks=extra_disks,
                )
                node = deployed.node
                stdout, stderr = _communicate_while_running(cloud, node, timeout=900)
            finally:
                if cloud.poll() is None:
                    cloud.kill()
                    cloud.communicate()
            with open(self.work_dir / "commands.log", "a") as log:
                log.write(f"$ salt-cloud -p {profile} {name} (rc {cloud.returncode})\n")
                log.write(f"{stdout}\n{stderr}\n")
            if cloud.returncode != 0:
                raise RuntimeError(
                    f"salt-cloud -p {profile} {name} exited {cloud.returncode}\n{stderr[-4000:]}"
                    f"\n{node.console_tail()}"
                )
            deployed.cloud_output = json_document(stdout)
        with self.timer(f"{name}: reactor: minion joins, modules synced, highstate"):
            deployed.converge = self.wait_converged(name, node=node)
        seconds = deployed.converge.get("seconds") or {}
        self.timer.note(f"{name}: converge {seconds}; slowest states: {self.slowest_states(name)}")
        return deployed

    def start_vm(
        self, instance, mode, release, *, docker_pillar=None, disk_bus="nvme", extra_disks=()
    ):
        """Boot the VM that plays ``instance`` (at its loopback private address, its Docker
        volume as an NVMe disk carrying the volume id as serial); the node joins ``nodes``."""
        name = next(tag["Value"] for tag in instance["Tags"] if tag["Key"] == "Name")
        volume_id = next(
            mapping["Ebs"]["VolumeId"]
            for mapping in instance["BlockDeviceMappings"]
            if mapping["DeviceName"] == DOCKER_DISK_DEVICE
        )
        node = self.vm.Node(
            name=name,
            work_dir=self.work_dir / "vms" / name,
            ssh_address=instance["PrivateIpAddress"],
            public_key=self.key.with_suffix(".pub"),
            private_key=self.key,
            volume_id=volume_id,
            volume_file=self.volume_file(volume_id),
            volume_size_gib=4,
            image_dir=self.image_dirs.get(release) or self.vm.node_image_dir(release),
            release=release,
            disk_bus=disk_bus,
            extra_disks=list(extra_disks),
        )
        deployed = DeployedNode(
            name,
            mode,
            node,
            instance["InstanceId"],
            instance["PrivateIpAddress"],
            volume_id,
            docker_pillar=docker_pillar or {},
        )
        with self.lock:
            self.nodes[name] = deployed
            self._write_pillar()
        node.start()
        return deployed

    def volume_file(self, volume_id):
        """The file that is EBS volume ``volume_id``: it outlives nodes, as the volume does.
        A volume EC2 restored from a snapshot starts as a copy of the snapshot's volume's
        file (snapshots are taken of stopped nodes, whose VMs are gone by then)."""
        path = self.work_dir / "volumes" / f"{volume_id}.raw"
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            ec2 = self.ec2()
            volume = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
            if volume.get("SnapshotId"):
                snapshot = ec2.describe_snapshots(SnapshotIds=[volume["SnapshotId"]])
                source = self.volume_file(snapshot["Snapshots"][0]["VolumeId"])
                subprocess.run(["cp", "--sparse=always", str(source), str(path)], check=True)
        return path

    def replace_node(self, old, new, release="bookworm", disk_bus="nvme"):
        """`salt-run node.replace <old> new=<new>`, playing EC2 for the VMs as it goes: the
        old node's VM shut down when EC2 says it stopped, the new one booted on the moved
        volume's file as soon as EC2 runs it. Returns the runner's ProcessResult."""
        deployed = self.nodes[old]
        with self.lock:
            placeholder = DeployedNode(new, deployed.mode, None, "", "", "")
            placeholder.docker_pillar.update(deployed.docker_pillar)
            self.nodes[new] = placeholder
            self._write_pillar()
        args = ["--out=json", "node.replace", old, f"new={new}", "wait=900"]
        runner = self.popen("salt-run", *args)
        try:
            self._shut_down_when_stopped(deployed, runner)
            instance = self._wait_for_instance(self.ec2(), new, runner, timeout=600)
            started = self.start_vm(
                instance,
                deployed.mode,
                release,
                docker_pillar=placeholder.docker_pillar,
                disk_bus=disk_bus,
            )
            stdout, stderr = _communicate_while_running(runner, started.node, timeout=3600)
        finally:
            if runner.poll() is None:
                runner.kill()
                runner.communicate()
        with self.lock:
            self.nodes.pop(old, None)
            self._write_pillar()
        deployed.node.destroy()
        return subprocess.CompletedProcess(runner.args, runner.returncode, stdout, stderr)

    def _shut_down_when_stopped(self, deployed, process, timeout=600):
        """When EC2 says ``deployed``'s instance stopped (or went), its VM shuts down cleanly,
        as the instance would have; returns then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.instance_state(deployed.instance_id) != "running":
                deployed.node.power_off()
                return
            if process.poll() is not None:
                raise RuntimeError(
                    f"{' '.join(map(str, process.args))} exited {process.returncode} before "
                    f"{deployed.name} stopped:\n{process.stdout.read()[-3000:]}"
                    f"\n{process.stderr.read()[-3000:]}"
                )
            time.sleep(0.5)
        raise RuntimeError(f"{deployed.name} did not stop within {timeout} s")

    def slowest_states(self, name, count=6):
        """The converge highstate's slowest states, from the master's job cache: where a slow
        first converge spends its time."""
        jid = (self.nodes[name].converge or {}).get("jid")
        if not jid:
            return "unknown (no job id)"
        found = self.run("salt-run", "--out=json", "jobs.lookup_jid", jid, "missing=False")
        try:
            states = json.loads(found.stdout).get(name) or {}
            durations = {
                state.get("__id__", key): state.get("duration", 0) / 1000
                for key, state in states.items()
                if isinstance(state, dict)
            }
        except (json.JSONDecodeError, AttributeError, TypeError):
            return "unknown (job cache not readable)"
        slowest = sorted(durations.items(), key=lambda item: item[1], reverse=True)[:count]
        return ", ".join(f"{state} {seconds:.0f} s" for state, seconds in slowest)

    def wait_converged(self, name, timeout=1800, node=None):
        """`salt-run node.wait_converged <name>`: the converge the reactor started (raises if it
        did not finish or failed, or as soon as ``node``'s VM is found dead)."""
        args = ("--out=json", "node.wait_converged", name, f"timeout={timeout}")
        if node is None:
            result = self.run("salt-run", *args, timeout=timeout + 120)
        else:
            waiting = self.popen("salt-run", *args)
            stdout, stderr = _communicate_while_running(waiting, node, timeout=timeout + 120)
            result = subprocess.CompletedProcess(waiting.args, waiting.returncode, stdout, stderr)
        try:
            record = json.loads(result.stdout).get(name) or {}
        except (json.JSONDecodeError, AttributeError):
            record = {}
        if result.returncode != 0 or record.get("state") != "converged":
            raise RuntimeError(
                f"{name} did not converge (rc {result.returncode}):\n{result.stdout[-4000:]}"
            )
        # The converge's summary (states, changed, failed, jid, seconds), with the node
        # record's state and source.
        return {**record["converge"], "state": record["state"], "source": record.get("source")}

    def set_docker_pillar(self, name, **sections):
        """Change sections of node `name`'s docker: pillar (the next highstate applies it)."""
        with self.lock:
            self.nodes[name].docker_pillar.update(sections)
            self._write_pillar()

    def ec2(self):
        """One EC2 client for all threads (creating boto3 clients is not thread-safe)."""
        with self.lock:
            if self._ec2 is None:
                self._ec2 = self.endpoint.client("ec2")
            return self._ec2

    def _wait_for_instance(self, ec2, name, cloud, timeout=120):
        """The instance as soon as it runs with a private address and its Docker disk."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cloud.poll() is not None:
                raise RuntimeError(
                    f"salt-cloud exited {cloud.returncode} before the instance ran:\n"
                    + cloud.stderr.read()[-4000:]
                )
            reservations = ec2.describe_instances(
                Filters=[
                    {"Name": "tag:Name", "Values": [name]},
                    {"Name": "instance-state-name", "Values": ["running"]},
                ]
            )["Reservations"]
            for reservation in reservations:
                for instance in reservation["Instances"]:
                    disks = [m["DeviceName"] for m in instance.get("BlockDeviceMappings", [])]
                    if instance.get("PrivateIpAddress") and DOCKER_DISK_DEVICE in disks:
                        return instance
            time.sleep(0.3)
        raise RuntimeError(f"EC2 did not report a running instance {name} within {timeout} s")

    def destroy_node(self, name):
        """`salt-cloud -d` (terminates the instance, removes the key), then the VM goes (shut
        down cleanly when EC2 stopped it first: a data node); so does its volume's file when
        EC2 deleted the volume."""
        deployed = self.nodes.get(name)
        node = deployed.node if deployed else None
        clean = bool(node and node.running() and self.keeps_data(name))
        destroy = self.popen("salt-cloud", "--out=json", "-y", "-d", name)
        with contextlib.suppress(RuntimeError):
            if clean:
                self._shut_down_when_stopped(deployed, destroy, timeout=300)
        stdout, stderr = destroy.communicate(timeout=300)
        result = subprocess.CompletedProcess(destroy.args, destroy.returncode, stdout, stderr)
        with self.lock:
            self.nodes.pop(name, None)
            self._write_pillar()
        if node:
            node.destroy()
            volume_id = deployed.volume_id
            found = self.ec2().describe_volumes(
                Filters=[{"Name": "volume-id", "Values": [volume_id]}]
            )
            if not found["Volumes"] or found["Volumes"][0]["State"] == "deleting":
                node.volume.unlink(missing_ok=True)
        return result

    def keeps_data(self, name):
        """Whether node ``name``'s Docker volume outlives it (EC2 stops it before a destroy)."""
        instance_id = self.nodes[name].instance_id
        reservations = self.ec2().describe_instances(InstanceIds=[instance_id])["Reservations"]
        return any(
            m["DeviceName"] == DOCKER_DISK_DEVICE and not m["Ebs"].get("DeleteOnTermination", True)
            for m in reservations[0]["Instances"][0].get("BlockDeviceMappings", [])
        )

    def instance_state(self, instance_id):
        ec2 = self.ec2()
        reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return reservations[0]["Instances"][0]["State"]["Name"]

    # --- teardown --------------------------------------------------------------------------

    def close(self):
        """Stop every VM, instance, the master, the endpoint; delete the work dir."""
        errors = []
        for deployed in list(self.nodes.values()):
            if deployed.node:
                try:
                    deployed.node.destroy()
                except Exception as error:
                    errors.append(error)
        self.nodes.clear()
        if self.endpoint is not None:
            with contextlib.suppress(Exception):
                ec2_endpoint.terminate_live(self.ec2())
            self.endpoint.stop()
            self.endpoint = None
        if self.master is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.master.pid, 15)
            try:
                self.master.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.master.pid, 9)
                self.master.wait(30)
            self.master = None
        _stop_marked_processes(self.env[STACK_MARKER])
        if self.gpg_home is not None:
            gpg.stop_agent(self.gpg_home)
            self.gpg_home = None
        if errors:
            raise errors[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _communicate_while_running(process, node, timeout):
    """``process.communicate()``, but raise as soon as ``node``'s VM is found dead (its qemu
    exited): nothing else would notice, and the wait would run to its timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return process.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        if not node.running():
            process.kill()
            process.communicate()
            raise vm.NodeError(
                f"node {node.name}: its VM died (qemu exited)\n{node.console_tail()}"
            )
        if time.monotonic() > deadline:
            process.kill()
            process.communicate()
            raise TimeoutError(f"{' '.join(map(str, process.args))}: no answer in {timeout} s")


def _marked_pids(marker_value):
    """PIDs of the processes whose environment carries STACK_MARKER=marker_value."""
    wanted = f"{STACK_MARKER}={marker_value}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if wanted in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                pids.append(int(entry))
    return pids


def _stop_marked_processes(marker_value, grace=10):
    """SIGTERM, then SIGKILL after ``grace`` s, every process the stack started that is still
    running (e.g. a converge the master's reactor started, detached from the master)."""
    for signum in (15, 9):
        pids = _marked_pids(marker_value)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = _marked_pids(marker_value)
        if not pids:
            return
