"""Running the real salt-cloud against a local EC2 endpoint: used by the cloud tests and by
bench/cloud_create_destroy.py.

salt-cloud runs with cwd = a copy of the repository's salt-cloud config (Saltfile, cloud,
master, cloud.providers.d, cloud.profiles.d, salt/_clouds), so it reads the repository's
provider and profiles through the repository's Saltfile, and its runtime state (.salt/)
lands in the copy.  A real salt-master runs from the same copy: salt-cloud fires its
events to it (without one, every event waits a 1 s timeout) and accepts minion keys into
its pki dir.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tools import processes, salt_repo
from tools.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent
CONFIG_PATHS = ("Saltfile", "cloud", "master", "cloud.providers.d", "cloud.profiles.d")
LIVE_STATES = ("pending", "running", "stopping", "stopped")


def copy_config(dest, repo_root=REPO_ROOT, provider=None):
    """Copy the salt-cloud config of the repository into dest; master on loopback ports.

    provider: keys merged into the repository's boto3_ec2 provider in the copy.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for relative in CONFIG_PATHS:
        source = repo_root / relative
        if source.is_dir():
            shutil.copytree(source, dest / relative)
        else:
            shutil.copy2(source, dest / relative)
    (dest / "salt").mkdir()
    # The driver, the shared layer it calls (the node record) and the runner its destroy calls.
    for part in ("_clouds", "_utils", "_runners"):
        shutil.copytree(
            repo_root / "salt" / part,
            dest / "salt" / part,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    with (dest / "master").open("a") as master:
        master.write(
            "\n# Test harness: a master on loopback, on ports of its own.\n"
            f"interface: 127.0.0.1\npublish_port: {free_port()}\nret_port: {free_port()}\n"
        )
    if provider:
        for conf in (dest / "cloud.providers.d").glob("*.conf"):
            providers = yaml.safe_load(conf.read_text()) or {}
            for settings in providers.values():
                if settings.get("driver") == "boto3_ec2":
                    settings.update(provider)
            conf.write_text(yaml.safe_dump(providers))
    return dest


def write_profiles(root, profiles, name="zz-tests.conf"):
    """Add profiles to a config copy (they may extend the repository's)."""
    # In order: salt-cloud resolves `extends` in file order, one level at a time.
    (Path(root) / "cloud.profiles.d" / name).write_text(yaml.safe_dump(profiles, sort_keys=False))


class SaltMaster:
    """salt-master -c <config copy>, stopped by PID."""

    def __init__(self, root):
        self.root = Path(root)
        self.log_path = self.root / "salt-master.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BIN_DIR / "salt-master"), "-c", ".", "-l", "warning"],
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        pull_socket = self.root / ".salt/var/run/salt/master/master_event_pull.ipc"
        deadline = time.monotonic() + 60
        while not pull_socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"salt-master did not start:\n{self.log_path.read_text()}")
            time.sleep(0.1)

    def stop(self):
        processes.stop(self.process, 30)


@dataclass
class CloudCLI:
    """The real salt-cloud, run from the config copy against the local endpoint."""

    root: Path
    env: dict
    ec2_endpoint: object

    @classmethod
    def for_endpoint(cls, root, ec2_endpoint):
        env = {
            "PATH": f"{BIN_DIR}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            # ~ of the provider's private_key resolves inside the copy, not to a real key.
            "HOME": str(root),
            "LANG": "C.UTF-8",
            **ec2_endpoint.env(),
        }
        return cls(root=Path(root), env=env, ec2_endpoint=ec2_endpoint)

    def run(self, *args, timeout=300):
        return salt_repo.run_cli("salt-cloud", args, cwd=self.root, env=self.env, timeout=timeout)

    def via(self, endpoint_url):
        """The same CLI pointed at another endpoint (e.g. a fault proxy in front of this one)."""
        return dataclasses.replace(self, env={**self.env, "AWS_ENDPOINT_URL": endpoint_url})

    def json(self, *args, timeout=300):
        """Run with --out=json and return the parsed output; raise on rc != 0."""
        result = self.run("--out=json", *args, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(
                f"salt-cloud {' '.join(args)} -> {result.returncode}\n{result.stderr}"
            )
        return json.loads(result.stdout)

    def popen(self, *args, **kwargs):
        return subprocess.Popen(
            [str(BIN_DIR / "salt-cloud"), *args],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kwargs,
        )

    @property
    def pki_dir(self):
        return self.root / ".salt" / "etc" / "salt" / "pki" / "master"

    def ec2(self):
        return self.ec2_endpoint.client("ec2")

    def instances(self, name=None, states=LIVE_STATES):
        """Instances in states, named name (a name or a list of names; None: any)."""
        filters = [{"Name": "instance-state-name", "Values": list(states)}]
        if name:
            names = [name] if isinstance(name, str) else list(name)
            filters.append({"Name": "tag:Name", "Values": names})
        reservations = self.ec2().describe_instances(Filters=filters)["Reservations"]
        return [i for r in reservations for i in r["Instances"]]

    def instance(self, name):
        found = self.instances(name)
        assert len(found) == 1, f"expected one live instance named {name}, found {found}"
        return found[0]

    def volume(self, volume_id):
        return self.ec2().describe_volumes(VolumeIds=[volume_id])["Volumes"][0]

    def live_count(self):
        return len(self.instances())

    def terminate_all(self):
        """Terminate whatever is still live (clean-up after failures)."""
        leftovers = [i["InstanceId"] for i in self.instances()]
        if leftovers:
            self.ec2().terminate_instances(InstanceIds=leftovers)
        return leftovers
