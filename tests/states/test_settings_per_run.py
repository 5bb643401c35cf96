"""
The formula's settings are fetched, merged and checked once per state run, not once per SLS
(salt/docker/settings.jinja), and never outlive the run. Shown on the minion where a leak
would show: one that runs jobs in threads (multiprocessing: False), so every job shares one
module context. Each run renders with its own pillar, a refused pillar is refused in every
SLS, and the next good run is not affected by it.
"""

import json

import pytest

from tests.states.conftest import set_node_class, start_minion

pytestmark = pytest.mark.states

MINION = "dh-threaded"


@pytest.fixture(scope="module")
def threaded_minion(salt_master, salt_run, salt_cli, dockerd):
    factory = start_minion(salt_master, salt_run, MINION, dockerd, multiprocessing=False)
    with factory.started():
        set_node_class(salt_run, MINION, "backends")
        assert salt_cli.run("saltutil.sync_all", minion_tgt=MINION).returncode == 0
        yield factory


def show_sls(salt_cli, pillar):
    # docker.config includes docker.storage: three SLS of one run import the settings.
    return salt_cli.run(
        "state.show_sls",
        "docker.config,docker.service",
        f"pillar={json.dumps(pillar)}",
        minion_tgt=MINION,
    )


def daemon_json(ret):
    assert ret.returncode == 0, ret.stdout
    arguments = ret.data["docker-config"]["file"]
    return next(arg["dataset"] for arg in arguments if isinstance(arg, dict) and "dataset" in arg)


def test_each_run_renders_with_its_own_pillar(salt_cli, threaded_minion):
    seen = [
        daemon_json(show_sls(salt_cli, {"docker": {"config": {"debug": value}}}))["debug"]
        for value in (True, False, True)
    ]
    assert seen == [True, False, True]


def test_refused_pillar_is_refused_in_every_sls_and_forgotten(salt_cli, threaded_minion):
    ret = show_sls(salt_cli, {"docker": {"confg": {"debug": True}}})
    assert ret.returncode != 0
    # Both SLS render the settings and refuse them (the refused docker.config's include of
    # docker.storage is not followed).
    for sls in ("docker.config", "docker.service"):
        assert f"Rendering SLS 'base:{sls}' failed" in ret.stdout, ret.stdout
    assert "docker:confg: unknown key (did you mean config?)" in ret.stdout
    assert daemon_json(show_sls(salt_cli, {"docker": {"config": {"debug": True}}}))["debug"]
