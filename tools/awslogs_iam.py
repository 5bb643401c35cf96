"""The IAM role and instance profile a class of nodes needs for Docker's awslogs log driver,
with the least privilege: create its own log group, create streams in it and write to them
(iam/awslogs-policy.json), nothing else. Run on the master (or wherever salt-cloud runs) with
credentials allowed to manage IAM; idempotent: a second run changes nothing, a changed
policy becomes the policy's new default version.

    bin/awslogs-iam --class dataserver --group dataserver --region cn-north-1

prints the instance profile name for the class's profile in cloud.profiles.d
(``iam_profile: docker-hosts-dataserver``). boto3's usual credential chain applies;
``AWS_ENDPOINT_URL`` points it elsewhere (tests: moto).
"""

import argparse
import json
import string
import sys
from pathlib import Path

import boto3
import botocore.exceptions
import botocore.loaders

REPO_ROOT = Path(__file__).resolve().parents[1]
POLICY_TEMPLATE = REPO_ROOT / "iam" / "awslogs-policy.json"
PREFIX = "docker-hosts"
MAX_POLICY_VERSIONS = 5


def _dns_suffix(partition):
    loader = botocore.loaders.create_loader()
    for entry in loader.load_data("endpoints")["partitions"]:
        if entry["partition"] == partition:
            return entry["dnsSuffix"]
    raise ValueError(f"unknown AWS partition {partition!r}")


def policy_document(partition, region, account, group):
    """iam/awslogs-policy.json for one log group."""
    text = string.Template(POLICY_TEMPLATE.read_text()).substitute(
        partition=partition, region=region, account=account, group=group
    )
    return json.loads(text)


def trust_document(partition):
    """EC2 instances may assume the role (``ec2.amazonaws.com.cn`` in China)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": f"ec2.{_dns_suffix(partition)}"},
                "Action": "sts:AssumeRole",
            }
        ],
    }


def _policy_arn(iam, name, document):
    """Create the managed policy, or make ``document`` its default version."""
    account_policies = iam.list_policies(Scope="Local")["Policies"]
    found = next((p for p in account_policies if p["PolicyName"] == name), None)
    if found is None:
        created = iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(document))
        return created["Policy"]["Arn"], "created"
    current = iam.get_policy_version(PolicyArn=found["Arn"], VersionId=found["DefaultVersionId"])[
        "PolicyVersion"
    ]["Document"]
    if isinstance(current, str):
        current = json.loads(current)
    if current == document:
        return found["Arn"], "unchanged"
    versions = iam.list_policy_versions(PolicyArn=found["Arn"])["Versions"]
    if len(versions) >= MAX_POLICY_VERSIONS:
        oldest = min(
            (v for v in versions if not v["IsDefaultVersion"]), key=lambda v: v["CreateDate"]
        )
        iam.delete_policy_version(PolicyArn=found["Arn"], VersionId=oldest["VersionId"])
    iam.create_policy_version(
        PolicyArn=found["Arn"], PolicyDocument=json.dumps(document), SetAsDefault=True
    )
    return found["Arn"], "updated"


def _role(iam, name, trust):
    try:
        iam.get_role(RoleName=name)
        return "unchanged"
    except iam.exceptions.NoSuchEntityException:
        iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(trust),
            Description="docker-hosts nodes: awslogs to their class's log group",
        )
        return "created"


def _instance_profile(iam, name):
    try:
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except iam.exceptions.NoSuchEntityException:
        profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    if name not in [role["RoleName"] for role in profile.get("Roles", [])]:
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return profile["Arn"]


def ensure(node_class, group, region, session=None):
    """Create or update the class's policy, role and instance profile; returns their names."""
    session = session or boto3.session.Session()
    partition = session.get_partition_for_region(region)
    account = session.client("sts", region_name=region).get_caller_identity()["Account"]
    iam = session.client("iam", region_name=region)
    name = f"{PREFIX}-{node_class}"
    document = policy_document(partition, region, account, group)
    policy_arn, policy_state = _policy_arn(iam, f"{name}-awslogs", document)
    role_state = _role(iam, name, trust_document(partition))
    iam.attach_role_policy(RoleName=name, PolicyArn=policy_arn)
    profile_arn = _instance_profile(iam, name)
    return {
        "iam_profile": name,
        "instance_profile_arn": profile_arn,
        "role": f"{name} ({role_state})",
        "policy": f"{policy_arn} ({policy_state})",
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--class", dest="node_class", required=True, help="node class")
    parser.add_argument("--group", required=True, help="the class's CloudWatch log group")
    parser.add_argument("--region", required=True, help="region of the log group")
    args = parser.parse_args(argv)
    try:
        result = ensure(args.node_class, args.group, args.region)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        print(f"awslogs-iam: {error}", file=sys.stderr)
        return 1
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
