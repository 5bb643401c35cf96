"""Fixtures the unit tests of the formula's settings share."""

import pytest

from tools.salt_repo import load_module


@pytest.fixture(scope="package")
def settings_module():
    """salt/_modules/docker_settings.py, loaded alone (its dunders set by each test)."""
    return load_module("modules", "docker_settings")


@pytest.fixture(scope="package")
def consumers(settings_module):
    """What each pillar section accepts, read from the checkout's and the installed states."""
    own_states = {name: load_module("states", name) for name in settings_module.OWN_STATE_MODULES}

    def lookup(ref):
        module, _, function = ref.partition(".")
        if module in own_states:
            return getattr(own_states[module], function, None)
        return settings_module._imported_state(ref)

    return settings_module.build_consumer_options(lookup)
