"""The bad-profile corpus (tests/cloud/bad_profiles.yaml) through the driver's checks: each
entry's node config, merged as salt-cloud merges it (the repository's provider and profiles,
the corpus base, the entry), goes through `_plan`, the step every create run takes before
anything else; it must be refused naming the key. The entries that need EC2's answer run in
the cloud tier (tests/cloud/test_bad_profiles.py)."""

from pathlib import Path

import pytest
import yaml
from salt.exceptions import SaltCloudConfigError

from tests.cloud.bad_profiles import ENTRIES, expand
from tools.salt_repo import load_module

REPO = Path(__file__).resolve().parents[2]
PURE = sorted(entry_id for entry_id, entry in ENTRIES.items() if not entry.get("ec2"))

ec2 = load_module("clouds", "boto3_ec2")
profile_checks = load_module("utils", "dockerhosts_profile")
names = load_module("utils", "dockerhosts_names")
ec2_utils = load_module("utils", "dockerhosts_ec2")


def loader_utils(modules):
    """What __utils__ holds for these utils modules: their public functions, module.function."""
    return {
        f"{module_name}.{name}": value
        for module_name, module in modules.items()
        for name, value in vars(module).items()
        if callable(value) and not name.startswith("_") and not isinstance(value, type)
    }


UTILS = loader_utils(
    {
        "dockerhosts_profile": profile_checks,
        "dockerhosts_names": names,
        "dockerhosts_ec2": ec2_utils,
    }
)


def repository_config():
    providers = yaml.safe_load((REPO / "cloud.providers.d" / "aws.conf").read_text())
    profiles = yaml.safe_load((REPO / "cloud.profiles.d" / "docker-hosts.conf").read_text())
    return providers["aws"], profiles


@pytest.fixture
def work(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("not a real key\n")
    (tmp_path / "big-user-data").write_text("#!/bin/sh\n" + "x" * 17000)
    (tmp_path / "binary-user-data").write_bytes(b"\xff\xfe\x00binary")
    return {
        "key": str(key),
        "loopback_subnet": "subnet-0123456789abcdef0",
        "big_userdata": str(tmp_path / "big-user-data"),
        "binary_userdata": str(tmp_path / "binary-user-data"),
    }


def node_config(entry, values):
    """The entry's provider and merged node config, as salt-cloud hands them to the driver."""
    provider, profiles = repository_config()
    provider = {**provider, **expand(entry.get("provider", {}), values)}
    base = {"private_key": values["key"], "ssh_username": "root", "minion": {"master": "x"}}
    profile = profile_checks.deep_merge(profiles["base"], profiles["backends"])
    profile = profile_checks.deep_merge(profile, base)
    profile = profile_checks.deep_merge(profile, expand(entry.get("profile", {}), values))
    name = expand(entry["name"], values) if entry["kind"] == "names" else f"c-{entry['id']}"
    vm_ = {**provider, **profile, "name": name, "provider": "aws:boto3_ec2", "driver": "boto3_ec2"}
    return provider, vm_


@pytest.fixture
def configure_loader_modules():
    return {ec2: {"__opts__": {"deploy": True}, "__utils__": UTILS}}


@pytest.mark.parametrize("entry_id", PURE)
def test_bad_entry_is_refused_naming_the_key(entry_id, work):
    entry = ENTRIES[entry_id]
    provider, vm_ = node_config(entry, work)
    ec2.__opts__["providers"] = {"aws": {"boto3_ec2": provider}}
    with pytest.raises(SaltCloudConfigError) as refused:
        ec2._plan([vm_])
    text = str(refused.value)
    assert f"'{expand(entry['key'], {})}'" in text
    if entry.get("says"):
        assert entry["says"] in text
    assert text.endswith(": nothing was created")


def test_the_corpus_is_large():
    assert len(ENTRIES) >= 150
    assert len(PURE) >= 140


def test_the_corpus_base_itself_passes(work):
    provider, vm_ = node_config({"kind": "profiles", "id": "base"}, work)
    ec2.__opts__["providers"] = {"aws": {"boto3_ec2": provider}}
    [node] = ec2._plan([vm_])
    assert node.request["TagSpecifications"][0]["Tags"][0] == {"Key": "Name", "Value": "c-base"}
