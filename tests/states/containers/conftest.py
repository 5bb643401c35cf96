"""
The container tests' own nodes (tools/container_env.py): a salt-master, two minions
(``c-node1``, ``c-node2``), a private dockerd for each, a real registry (Debian's
docker-registry, htpasswd + TLS from a test CA, under a name that resolves to a non-loopback
address for the dockerds only) and moto for CloudWatch Logs and IAM. Shared by the modules
of this package; each test writes the pillar it needs (``node-<id>.sls``).
"""

import secrets as random_secrets

import pytest

from tools.container_env import running_env

NODE1, NODE2 = "c-node1", "c-node2"
REGISTRY_USER = "deploy"


@pytest.fixture(scope="package")
def secret_values():
    # Random per run: finding one in a file or log proves it leaked there.
    names = ("registry_password", "postgres_user", "postgres_password", "postgres_db", "token")
    return {name: f"{name}-{random_secrets.token_hex(12)}" for name in names}


@pytest.fixture(scope="package")
def env(secret_values):
    users = {REGISTRY_USER: secret_values["registry_password"]}
    # Debug logs on the minions: the tests look for secrets in them.
    extra = {"log_level_logfile": "debug"}
    with running_env([NODE1, NODE2], registry_users=users, moto=True, minion_extra=extra) as e:
        e.write_secrets(secret_values)
        yield e


def states_of(result):
    code, states, output = result
    assert isinstance(states, dict), f"state.apply did not run (rc {code}): {output[-3000:]}"
    return states


def failed(states):
    return {v["__id__"]: v["comment"] for v in states.values() if v["result"] is False}


def changed(states):
    return {v["__id__"]: v["changes"] for v in states.values() if v["changes"]}


def converge(env, minion_id, *args, ok=True):
    """state.apply docker on ``minion_id``; with ``ok``, assert it succeeded. Returns states."""
    result = env.salt.apply(minion_id, "docker", *args)
    states = states_of(result)
    if ok:
        assert result[0] == 0 and failed(states) == {}, failed(states) or result[2][-3000:]
    return states
