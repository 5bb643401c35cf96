"""The bad-profile corpus (bad_profiles.yaml) through the real salt-cloud CLI: the entries
that need EC2's answer, and a few others as smoke cases (the whole corpus runs through the
driver's checks in tests/unit/test_profile_corpus.py, in seconds).

Each must make `salt-cloud -p` exit non-zero and name the key; together they must not write
to EC2 (a proxy in front of the local endpoint sees only Describe* calls), leave an instance
or a volume, or leave a minion key or a record on the master.
"""

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tools import cloud_harness as harness
from tools.fault_proxy import FaultProxy

from .bad_profiles import CORPUS, ENTRIES, expand

pytestmark = pytest.mark.cloud

HERE = Path(__file__).parent
ALL_STATES = ("pending", "running", "shutting-down", "terminated", "stopping", "stopped")
# salt-cloud runs at once: they are CPU-bound, and the machine has 2 cores.
CONCURRENT_RUNS = 4
SMOKE = ("name-traversal", "volume-size-string", "provider-retry-mode", "minion-id-path")
CHOSEN = sorted(entry_id for entry_id, entry in ENTRIES.items() if entry.get("ec2")) + list(SMOKE)


def node_name(entry, values):
    if entry["kind"] == "names":
        return expand(entry["name"], values)
    return f"c-{entry['id']}"


@pytest.fixture(scope="module")
def corpus(repo_root, tmp_path_factory, ec2_endpoint, ssh_client_key):
    work = tmp_path_factory.mktemp("corpus")
    (work / "big-user-data").write_text("#!/bin/sh\n" + "x" * 17000)
    (work / "binary-user-data").write_bytes(b"\xff\xfe\x00binary")
    values = {
        "loopback_subnet": ec2_endpoint.ids["loopback_subnet"],
        "big_userdata": str(work / "big-user-data"),
        "binary_userdata": str(work / "binary-user-data"),
    }
    # Deploy stays on: salt-cloud pre-accepts a minion key, which must not stay.  (Each
    # profile extends `backends` itself: salt-cloud resolves `extends` one level at a time.)
    corpus_base = {
        "extends": "backends",
        "private_key": str(ssh_client_key[0]),
        "ssh_username": "root",
        "minion": {"master": "127.0.0.1"},
    }
    base = {"corpus-base": corpus_base}
    root = harness.copy_config(work / "profiles-root", repo_root)
    profiles = dict(base)
    for entry in CORPUS["profiles"]:
        profiles[f"corpus-{entry['id']}"] = {**corpus_base, **expand(entry["profile"], values)}
    harness.write_profiles(root, profiles)

    proxy = FaultProxy(ec2_endpoint.url).start()
    runs = {}
    roots = [root]
    for entry_id in CHOSEN:
        entry = ENTRIES[entry_id]
        cli_root, profile = root, f"corpus-{entry_id}"
        if entry["kind"] != "profiles":
            profile = "corpus-base"
        if entry["kind"] == "providers":
            cli_root = harness.copy_config(
                work / entry_id, repo_root, provider=expand(entry["provider"], values)
            )
            harness.write_profiles(cli_root, base)
            roots.append(cli_root)
        cli = harness.CloudCLI.for_endpoint(cli_root, ec2_endpoint).via(proxy.url)
        runs[entry_id] = (cli, profile, node_name(entry, values))

    def run(entry_id):
        cli, profile, name = runs[entry_id]
        return cli.run("-p", profile, name, timeout=240)

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=CONCURRENT_RUNS) as pool:
            results = dict(zip(runs, pool.map(run, runs), strict=True))
        seconds = time.monotonic() - started
        yield {
            "results": results,
            "names": [name for _, _, name in runs.values()],
            "roots": roots,
            "proxy": proxy,
            "seconds": seconds,
        }
    finally:
        proxy.stop()


def refused_naming_the_key(entry, result):
    text = result.stdout + result.stderr
    key = expand(entry["key"], {})
    return (
        result.returncode != 0
        and f"'{key}'" in text
        and (entry.get("says") is None or entry["says"] in text)
    )


@pytest.mark.parametrize("entry_id", CHOSEN)
def test_bad_entry_is_refused_naming_the_key(corpus, entry_id):
    entry, result = ENTRIES[entry_id], corpus["results"][entry_id]
    text = result.stdout + result.stderr
    assert result.returncode != 0, text
    assert f"'{expand(entry['key'], {})}'" in text, text
    if entry.get("says"):
        assert entry["says"] in text, text


def test_the_cli_refuses_as_the_functions_do(corpus):
    print(f"bad-profile smoke cases: {len(CHOSEN)} through salt-cloud in {corpus['seconds']:.0f} s")
    assert all(refused_naming_the_key(ENTRIES[e], r) for e, r in corpus["results"].items())


def test_nothing_but_reads_reached_ec2(corpus):
    actions = {entry.action for entry in corpus["proxy"].log}
    assert actions, "the corpus never reached the endpoint"
    assert {action for action in actions if not action.startswith("Describe")} == set()


def test_nothing_is_left_in_ec2(cloud, corpus):
    names = corpus["names"]
    assert cloud.instances(names, states=ALL_STATES) == []
    volumes = cloud.ec2().describe_volumes(Filters=[{"Name": "tag:Name", "Values": names}])
    assert volumes["Volumes"] == []


def test_no_key_or_record_is_left_on_the_master(corpus):
    for root in corpus["roots"]:
        pki = root / ".salt" / "etc" / "salt" / "pki" / "master"
        left = [
            str(Path(directory, name).relative_to(pki))
            for directory, _, files in os.walk(pki)
            for name in files
            if Path(directory).name != "boto3_ec2_locks"
        ]
        assert left == [], root
