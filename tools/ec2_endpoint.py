"""A local EC2/IAM endpoint (moto) on 127.0.0.1, seeded with what the provider names.

The repository's provider and profiles (cloud.providers.d/, cloud.profiles.d/) name a
region, a key pair, a security group, an IAM instance profile and AMIs; moto must hold
them before salt-cloud can launch anything.  It also gets a VPC 127.0.0.0/16 with a
subnet 127.0.10.0/24, so instances launched there get loopback private addresses that
a local sshd can answer on.

moto lacks EC2 behaviours the driver relies on; this module adds them:
RunInstances is idempotent per ``ClientToken`` (a retry of the same call returns the first
call's reservation instead of launching again), DescribeInstances filters by
``client-token`` (``_teach_moto_client_tokens``), and requests are atomic: moto's backends
are not thread-safe, so concurrent requests (parallel salt-cloud runs) could fail with HTTP
500 where EC2 answers; the server handles one request at a time (``_serialize_moto``).

Used by the tests, the benchmark, and bin/local-ec2 (``python -m tools.ec2_endpoint``).
"""

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tools import processes

REPO_ROOT = Path(__file__).resolve().parents[1]
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
LOOPBACK_VPC_CIDR = "127.0.0.0/16"
LOOPBACK_SUBNET_CIDR = "127.0.10.0/24"


def _load_yaml_dir(path):
    merged = {}
    for conf in sorted(Path(path).glob("*.conf")):
        merged.update(yaml.safe_load(conf.read_text()) or {})
    return merged


def provider_names(config_dir=REPO_ROOT):
    """What the boto3_ec2 provider and its profiles expect to exist in EC2."""
    providers = _load_yaml_dir(Path(config_dir, "cloud.providers.d"))
    profiles = _load_yaml_dir(Path(config_dir, "cloud.profiles.d"))
    provider = next(p for p in providers.values() if p.get("driver") == "boto3_ec2")
    return {
        "region": provider["location"],
        "zone": provider.get("availability_zone", provider["location"] + "a"),
        "keyname": provider.get("keyname"),
        "securitygroup": provider.get("securitygroup"),
        "images": sorted({p["image"] for p in profiles.values() if p.get("image")}),
        "iam_profiles": sorted({p["iam_profile"] for p in profiles.values() if "iam_profile" in p}),
    }


def _ami(ami_id):
    # The shape moto's MOTO_AMIS_PATH wants; a Debian 12 image like the profiles use.
    return {
        "ami_id": ami_id,
        "name": f"debian-12-amd64-{ami_id}",
        "description": "Debian 12 (bookworm) amd64 (local endpoint)",
        "owner_id": "136693071363",
        "public": True,
        "state": "available",
        "architecture": "x86_64",
        "root_device_type": "ebs",
        "root_device_name": "/dev/xvda",
        "virtualization_type": "hvm",
        "hypervisor": "xen",
        "image_type": "machine",
        "image_location": f"136693071363/debian-12-amd64-{ami_id}",
        "sriov": "simple",
        "platform": None,
    }


@dataclass
class EC2Endpoint:
    """A running moto server and the ids of what was seeded in it."""

    url: str
    region: str
    server: object
    ids: dict = field(default_factory=dict)

    def env(self):
        """Environment that points boto3 (and so salt-cloud) at this endpoint."""
        return {
            **FAKE_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.url,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self, service):
        import boto3  # noqa: PLC0415

        return boto3.client(
            service,
            region_name=self.region,
            endpoint_url=self.url,
            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def stop(self):
        self.server.stop()


def terminate_live(ec2):
    """Terminate every instance an EC2 client sees that is not terminated (a clean-up)."""
    live = [
        instance["InstanceId"]
        for reservation in ec2.describe_instances()["Reservations"]
        for instance in reservation["Instances"]
        if instance["State"]["Name"] != "terminated"
    ]
    if live:
        ec2.terminate_instances(InstanceIds=live)
    return live


def seed(endpoint, names, public_key=None):
    """Create the key pair, security group, IAM instance profile and loopback subnet."""
    ec2 = endpoint.client("ec2")
    iam = endpoint.client("iam")
    ids = {}
    if names["keyname"]:
        if public_key:
            ec2.import_key_pair(KeyName=names["keyname"], PublicKeyMaterial=public_key.encode())
        else:
            ec2.create_key_pair(KeyName=names["keyname"])
    default_vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    vpc_id = ec2.create_vpc(CidrBlock=LOOPBACK_VPC_CIDR)["Vpc"]["VpcId"]
    ids["loopback_vpc"] = vpc_id
    ids["loopback_subnet"] = ec2.create_subnet(
        VpcId=vpc_id, CidrBlock=LOOPBACK_SUBNET_CIDR, AvailabilityZone=names["zone"]
    )["Subnet"]["SubnetId"]
    if names["securitygroup"]:
        for vpc in [v["VpcId"] for v in default_vpc] + [vpc_id]:
            group = ec2.create_security_group(
                GroupName=names["securitygroup"], Description="docker hosts", VpcId=vpc
            )["GroupId"]
            ids.setdefault("securitygroup", {})[vpc] = group
    # A role with no policy attached: the instance profile grants nothing.
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    for profile in names["iam_profiles"]:
        iam.create_role(RoleName=profile, AssumeRolePolicyDocument=json.dumps(trust))
        iam.create_instance_profile(InstanceProfileName=profile)
        iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=profile)
    endpoint.ids.update(ids)
    return ids


def _load_moto_amis(images):
    """Make moto serve exactly these AMIs (plus any it already serves in this process).

    moto reads MOTO_AMIS_PATH once, when its EC2 models are imported: only these AMIs
    exist then, so an unknown AMI is unknown and --list-images stays short.
    """
    amis_module = sys.modules.get("moto.ec2.models.amis")
    if amis_module is None:
        handle, amis_file = tempfile.mkstemp(prefix="moto-amis-", suffix=".json")
        with os.fdopen(handle, "w") as out:
            json.dump([_ami(ami_id) for ami_id in images], out)
        os.environ["MOTO_AMIS_PATH"] = amis_file
        try:
            import moto.ec2.models.amis as amis_module  # noqa: PLC0415
        finally:
            Path(amis_file).unlink()
    served = {ami["ami_id"] for ami in amis_module.AMIS}
    if not set(images) <= served:
        raise RuntimeError(
            f"moto was loaded in this process with the AMIs {sorted(served)}, "
            f"not {sorted(images)} (MOTO_AMIS_PATH is read once, at import)"
        )


def _teach_moto_client_tokens():
    """Make moto honour RunInstances' ClientToken and the `client-token` filter, and MaxCount,
    as EC2 does.

    EC2: a RunInstances retried with the same ClientToken returns the original reservation
    (https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html).  moto 5.2
    stores the token but launches again, so a lost answer would show two instances here
    where EC2 holds one.  EC2 launches up to MaxCount instances (at least MinCount, as
    capacity allows); moto launches MinCount: with unlimited capacity, EC2 launches MaxCount
    (the fault proxy's `cap` fault lowers MaxCount to play short capacity). moto associates the
    instance profile with the first instance of a launch only; EC2 with each.
    """
    from moto.ec2 import utils as ec2_utils  # noqa: PLC0415
    from moto.ec2.responses.instances import InstanceResponse  # noqa: PLC0415

    ec2_utils.filter_dict_attribute_mapping.setdefault("client-token", "client_token")
    if getattr(InstanceResponse.run_instances, "honours_client_token", False):
        return
    launch = InstanceResponse.run_instances

    def run_instances(self):
        if self._get_param("MaxCount"):
            self.params["MinCount"] = self._get_param("MaxCount")
        token = self._get_param("ClientToken")
        if token:
            for reservation in self.ec2_backend.reservations.values():
                if any(i.client_token == token for i in reservation.instances):
                    from moto.core.responses import ActionResult  # noqa: PLC0415

                    return ActionResult(reservation)
        result = launch(self)
        # moto gives the instance profile to the first instance only; EC2 to each.
        profile = {
            "iam_instance_profile_name": self._get_param("IamInstanceProfile.Name"),
            "iam_instance_profile_arn": self._get_param("IamInstanceProfile.Arn"),
        }
        if any(profile.values()):
            for instance in result.result.instances[1:]:
                self.ec2_backend.associate_iam_instance_profile(instance_id=instance.id, **profile)
        return result

    run_instances.honours_client_token = True
    InstanceResponse.run_instances = run_instances


_MOTO_LOCK = threading.Lock()


def _serialize_moto():
    """One request at a time through moto's WSGI app (its backends are plain dicts)."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication  # noqa: PLC0415

    if getattr(DomainDispatcherApplication.__call__, "serialized", False):
        return
    call = DomainDispatcherApplication.__call__

    def serialized(self, environ, start_response):
        with _MOTO_LOCK:
            return call(self, environ, start_response)

    serialized.serialized = True
    DomainDispatcherApplication.__call__ = serialized


def start(config_dir=REPO_ROOT, port=0, public_key=None, extra_images=()):
    """Start moto on 127.0.0.1:port (0: any free port), seeded for config_dir's provider.

    moto keeps its state per process, not per server: starting an endpoint resets it, so
    run one endpoint at a time in a process.
    """
    names = provider_names(config_dir)
    images = sorted({*names["images"], *extra_images})
    _load_moto_amis(images)
    _teach_moto_client_tokens()
    _serialize_moto()
    from moto.server import ThreadedMotoServer  # noqa: PLC0415

    # One access-log line per API call drowns everything else.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, bound_port = server.get_host_and_port()
    endpoint = EC2Endpoint(url=f"http://{host}:{bound_port}", region=names["region"], server=server)
    try:
        # A fresh endpoint holds only what seed() creates.
        request = urllib.request.Request(f"{endpoint.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=30):
            pass
        seed(endpoint, names, public_key)
        served = {i["ImageId"] for i in endpoint.client("ec2").describe_images()["Images"]}
        if not set(images) <= served:
            raise RuntimeError(f"moto does not serve the profile AMIs {images} (got {served})")
    except BaseException:
        endpoint.stop()
        raise
    return endpoint


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Run a local EC2 endpoint (moto) seeded for this repository's provider."
    )
    parser.add_argument("--port", type=int, default=5050, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--public-key", help="SSH public key file to import as the key pair")
    args = parser.parse_args(argv)
    public_key = Path(args.public_key).read_text() if args.public_key else None
    endpoint = start(port=args.port, public_key=public_key)
    print("# Local EC2 endpoint is up. In another shell, from the repository root:")
    for key, value in endpoint.env().items():
        print(f"export {key}={value}")
    print(f"# Loopback subnet (instances get 127.0.10.x): {endpoint.ids['loopback_subnet']}")
    print("# e.g. salt-cloud -p dataserver db1 --no-deploy ; salt-cloud -F")
    print("# Ctrl-C stops it (everything it holds is lost).", flush=True)
    processes.serve_until_signalled(endpoint.stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
