"""
Every pillar of the bad-pillar corpus (tests/states/bad_pillars.yaml) is refused by the
formula's check, with the key path and reason the corpus expects; the shipped pillars and
pillar.example pass. The same corpus runs through salt-call and a real highstate in
tests/states/test_bad_pillars.py.
"""

import pytest
from salt.exceptions import CommandExecutionError

from tests.states import corpus

ENTRIES = corpus.entries()


def check(settings_module, consumers, pillar):
    defaults = corpus.formula_defaults()
    return settings_module.validate(
        corpus.mapdata(pillar, defaults), defaults=defaults, pillar=pillar, consumers=consumers
    )


def test_corpus_is_large_and_unique():
    ids = [entry["id"] for entry in ENTRIES]
    assert len(ids) >= 150
    assert len(set(ids)) == len(ids)


def test_shipped_dataserver_pillar_passes(settings_module, consumers):
    checked = check(settings_module, consumers, corpus.dataserver_pillar())
    assert checked["containers"]["postgres"]["port_bindings"] == ["5432:5432"]


def test_pillar_example_passes(settings_module, consumers):
    example = corpus.yaml.safe_load((corpus.REPO_ROOT / "pillar.example").read_text())
    example["docker_secrets"] = {"postgres_password": "x", "registry_password": "y"}
    checked = check(settings_module, consumers, example)
    assert checked["storage"]["mode"] == "overlay2"


def test_string_maps_take_integers_as_strings(settings_module, consumers):
    pillar = corpus.with_override(
        corpus.dataserver_pillar(),
        {"docker": {"containers": {"postgres": {"log_opt": {"max-file": 3}, "labels": {"v": 2}}}}},
    )
    checked = check(settings_module, consumers, pillar)["containers"]["postgres"]
    assert checked["log_opt"]["max-file"] == "3"
    assert checked["labels"] == {"v": "2"}


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["id"] for e in ENTRIES])
def test_bad_pillar_is_refused_naming_the_key(settings_module, consumers, entry):
    pillar = corpus.with_override(corpus.dataserver_pillar(), entry["pillar"])
    with pytest.raises(CommandExecutionError) as refused:
        check(settings_module, consumers, pillar)
    assert entry["expect"] in str(refused.value)
    for value in corpus.TEST_SECRETS.values():
        assert value not in str(refused.value)


def test_sdk_container_args_fallback_is_the_installed_sdks(settings_module):
    # The fallback list (used before the docker SDK is installed on a node) is the pinned
    # SDK's own: regenerate it when requirements-common.txt moves the docker version.
    import salt.utils.dockermod  # noqa: PLC0415

    accepted = salt.utils.dockermod.get_client_args(["create_container", "host_config"])
    installed = set(accepted["create_container"]) | set(accepted["host_config"])
    assert set(settings_module.SDK_CONTAINER_ARGS) == installed
