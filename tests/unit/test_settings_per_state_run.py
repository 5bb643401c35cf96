"""
The formula's settings are merged and checked once per state run and never outlive it
(settings.jinja, docker_settings.check_for_state_run / state_run_settings).

A state run is set up here as salt.state.State sets it up: a copy of the caller's module
context plus the run's own file client. The caller's context is the one a minion that runs jobs
in threads (multiprocessing: False) shares between all its jobs. The same on a real threaded
minion: tests/states/test_settings_per_run.py.
"""

import pytest
from salt.exceptions import CommandExecutionError

from tests.states import corpus

SETTINGS = corpus.MODULES["settings"]


@pytest.fixture
def configure_loader_modules():
    return corpus.loader_modules()


@pytest.fixture
def settings_module():
    return SETTINGS


class FileClient:
    """A state run's file client: only its identity matters here."""


def state_run(module, minion_context):
    context = dict(minion_context)
    context["fileclient"] = FileClient()
    module.__context__ = context
    return context


def settings_of(module, pillar):
    module.__pillar__ = pillar
    return corpus.mapdata(pillar, corpus.formula_defaults()), corpus.schema()


def with_debug(value):
    return corpus.with_override(
        corpus.dataserver_pillar(), {"docker": {"config": {"debug": value}}}
    )


def test_later_sls_of_the_run_get_the_checked_settings(settings_module):
    state_run(settings_module, {})
    assert settings_module.state_run_settings("docker") is None
    kept = settings_module.check_for_state_run(
        "docker", *settings_of(settings_module, corpus.dataserver_pillar())
    )
    assert settings_module.state_run_settings("docker") is kept
    assert kept["containers"]["postgres"]["image"]
    # Another formula root (a second copy of the formula) has settings of its own.
    assert settings_module.state_run_settings("docker-staging") is None


def test_each_run_renders_with_its_own_pillar(settings_module):
    minion_context = {}
    state_run(settings_module, minion_context)
    first = settings_module.check_for_state_run(
        "docker", *settings_of(settings_module, with_debug(True))
    )
    state_run(settings_module, minion_context)
    assert settings_module.state_run_settings("docker") is None
    second = settings_module.check_for_state_run(
        "docker", *settings_of(settings_module, with_debug(False))
    )
    assert (first["config"]["debug"], second["config"]["debug"]) == (True, False)
    assert settings_module.state_run_settings("docker") is second
    assert settings_module.STATE_RUN_KEY not in minion_context


def test_a_run_never_uses_settings_it_inherited(settings_module):
    # A caller's context that holds another run's entry (e.g. one a run was started with).
    earlier = state_run(settings_module, {})
    settings_module.check_for_state_run("docker", *settings_of(settings_module, with_debug(True)))
    state_run(settings_module, earlier)
    assert settings_module.state_run_settings("docker") is None


def test_outside_a_state_run_nothing_is_kept(settings_module):
    settings_module.__context__ = {}
    result = settings_module.check_for_state_run(
        "docker", *settings_of(settings_module, corpus.dataserver_pillar())
    )
    assert result["containers"]
    assert settings_module.state_run_settings("docker") is None
    assert settings_module.STATE_RUN_KEY not in settings_module.__context__


def test_refused_settings_are_not_kept(settings_module):
    state_run(settings_module, {})
    bad = corpus.with_override(corpus.dataserver_pillar(), {"docker": {"confg": {}}})
    for _ in range(2):  # every SLS of the run that imports the settings refuses them again
        with pytest.raises(CommandExecutionError, match="docker:confg: unknown key"):
            settings_module.check_for_state_run("docker", *settings_of(settings_module, bad))
        assert settings_module.state_run_settings("docker") is None
