"""
awslogs for real against moto's CloudWatch Logs (the dockerds have test AWS credentials;
``awslogs-endpoint`` points the driver at moto): a line the container writes arrives in its
stream; a missing group fails the state naming group and region. bin/awslogs-iam makes the
least-privilege role and instance profile in moto's IAM, idempotently.
"""

import json
import os
import subprocess
import time

import boto3
import pytest

from tests.states.containers.conftest import NODE1, converge, failed
from tools.container_env import AWS_TEST_CREDENTIALS

pytestmark = pytest.mark.states

REGION = "cn-north-1"


def logs_client(env, service="logs"):
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=env.moto_url,
        aws_access_key_id=AWS_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def logging_container(env, group, create_group):
    options = {
        "awslogs-region": REGION,
        "awslogs-group": group,
        "awslogs-stream": "app",
        "awslogs-endpoint": env.moto_url,
    }
    if create_group:
        options["awslogs-create-group"] = "true"
    return {
        "docker": {
            "containers": {
                "logger": {
                    "image": "busybox:latest",
                    "command": ["sh", "-c", "echo hello-cloudwatch; exec httpd -f -p 8080"],
                    "init": True,
                    "log_driver": "awslogs",
                    "log_opt": options,
                }
            }
        }
    }


@pytest.fixture
def node(env):
    yield env
    env.write_pillar(NODE1, {})
    for name in env.dockerds[NODE1].container_names():
        env.dockerds[NODE1].cli("rm", "-f", name)


def test_a_line_the_container_writes_arrives_in_its_stream(node):
    node.write_pillar(NODE1, logging_container(node, "dh-app", create_group=True))
    converge(node, NODE1)
    logs = logs_client(node)
    deadline = time.monotonic() + 20
    messages = []
    while "hello-cloudwatch" not in messages:
        assert time.monotonic() < deadline, f"never arrived; stream has {messages}"
        time.sleep(0.5)
        try:
            events = logs.get_log_events(logGroupName="dh-app", logStreamName="app")["events"]
        except logs.exceptions.ResourceNotFoundException:
            continue
        messages = [event["message"] for event in events]


def test_missing_group_fails_naming_group_and_region(node):
    node.write_pillar(NODE1, logging_container(node, "dh-missing", create_group=False))
    states = converge(node, NODE1, ok=False)
    message = failed(states)["docker-container-logger"]
    assert "log group 'dh-missing' in region 'cn-north-1'" in message
    assert "container logger failed to start" in message
    assert "logger" not in node.dockerds[NODE1].container_names()  # nothing half-made


def run_awslogs_iam(env, repo_root):
    return subprocess.run(
        [
            str(repo_root / "bin" / "awslogs-iam"),
            "--class",
            "dataserver",
            "--group",
            "dataserver",
            "--region",
            REGION,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **AWS_TEST_CREDENTIALS, "AWS_ENDPOINT_URL": env.moto_url},
    ).stdout


def test_awslogs_iam_makes_a_least_privilege_instance_profile(env, repo_root):
    output = run_awslogs_iam(env, repo_root)
    assert "iam_profile: docker-hosts-dataserver" in output
    iam = logs_client(env, "iam")
    profile = iam.get_instance_profile(InstanceProfileName="docker-hosts-dataserver")
    assert [r["RoleName"] for r in profile["InstanceProfile"]["Roles"]] == [
        "docker-hosts-dataserver"
    ]
    role = iam.get_role(RoleName="docker-hosts-dataserver")["Role"]
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com.cn"}
    attached = iam.list_attached_role_policies(RoleName="docker-hosts-dataserver")
    [policy] = attached["AttachedPolicies"]
    arn = iam.get_policy(PolicyArn=policy["PolicyArn"])["Policy"]
    document = iam.get_policy_version(PolicyArn=arn["Arn"], VersionId=arn["DefaultVersionId"])
    document = document["PolicyVersion"]["Document"]
    document = json.loads(document) if isinstance(document, str) else document
    actions = sorted(
        action
        for statement in document["Statement"]
        for action in (
            [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        )
    )
    assert actions == ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"]
    resources = json.dumps([statement["Resource"] for statement in document["Statement"]])
    assert "arn:aws-cn:logs:cn-north-1:" in resources
    assert "*" not in resources.replace("log-group:dataserver:*", "").replace("log-stream:*", "")

    again = run_awslogs_iam(env, repo_root)
    assert "(unchanged)" in again
    assert len(iam.list_policy_versions(PolicyArn=arn["Arn"])["Versions"]) == 1
