"""
The bad-pillar corpus (tests/states/bad_pillars.yaml) through the formula's check, as the
render calls it: every entry is refused with the key path and reason the corpus expects, no
secret value in the message; the shipped pillars and pillar.example pass. The schema file is
a valid JSON Schema, and the jsonschema package gives the checker kit's verdict on every
entry. A few entries also run through salt-call and a real highstate
(tests/states/test_bad_pillars.py).
"""

import jsonschema
import pytest
from salt.exceptions import CommandExecutionError

from tests.states import corpus

ENTRIES = corpus.entries()


@pytest.fixture
def configure_loader_modules():
    return corpus.loader_modules()


@pytest.fixture(autouse=True)
def no_dockerd(monkeypatch):
    """The check as on a node without a dockerd that validates files (whatever this host
    has); the tests that want one put it in place."""
    monkeypatch.setattr(corpus.MODULES["settings"].salt.utils.path, "which", lambda name: None)


def check(pillar):
    return corpus.check(pillar)


def test_corpus_is_large_and_unique():
    ids = [entry["id"] for entry in ENTRIES]
    assert len(ids) >= 250
    assert len(set(ids)) == len(ids)


def test_shipped_dataserver_pillar_passes():
    checked = check(corpus.dataserver_pillar())
    assert checked["containers"]["postgres"]["port_bindings"] == ["5432:5432"]


def test_pillar_example_passes():
    example = corpus.yaml.safe_load((corpus.REPO_ROOT / "pillar.example").read_text())
    example["docker_secrets"] = {"postgres_password": "x", "registry_password": "y"}
    checked = check(example)
    assert checked["storage"]["mode"] == "overlay2"


def test_string_maps_take_integers_as_strings():
    pillar = corpus.with_override(
        corpus.dataserver_pillar(),
        {"docker": {"containers": {"pg_data": {"log_opt": {"max-file": 3}, "labels": {"v": 2}}}}},
    )
    checked = check(pillar)["containers"]["pg_data"]
    assert checked["log_opt"]["max-file"] == "3"
    assert checked["labels"] == {"v": "2"}


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["id"] for e in ENTRIES])
def test_bad_pillar_is_refused_naming_the_key(entry):
    pillar = corpus.with_override(corpus.dataserver_pillar(), entry["pillar"])
    with pytest.raises(CommandExecutionError) as refused:
        check(pillar)
    assert entry["expect"] in str(refused.value)
    for value in corpus.TEST_SECRETS.values():
        assert value not in str(refused.value)


def test_the_schema_is_a_json_schema():
    jsonschema.Draft202012Validator.check_schema(corpus.schema())


def test_jsonschema_and_the_kit_agree_on_every_entry():
    """The kit reads a subset of JSON Schema: on each corpus entry (and the shipped pillar)
    the jsonschema package finds problems exactly when the kit does."""
    schema = corpus.schema()
    validator = jsonschema.Draft202012Validator(schema)
    kit = corpus.kit()
    pillars = [corpus.dataserver_pillar()]
    pillars += [corpus.with_override(pillars[0], e["pillar"]) for e in ENTRIES]
    disagree = []
    for pillar in pillars:
        document = {**pillar, "docker": corpus.mapdata(pillar, corpus.formula_defaults())}
        document.pop("docker.update_mine", None)
        theirs = [error.message for error in validator.iter_errors(document)]
        ours = kit.validate(document, schema, "pillar")
        if bool(theirs) != bool(ours):
            disagree.append((pillar.get("docker"), theirs[:2], ours[:2]))
    assert not disagree, disagree[:5]


def test_a_registry_with_a_port_takes_its_password_from_a_secret():
    login = {"username": "deploy", "password": {"secret": "postgres_password"}}
    pillar = corpus.with_override(
        corpus.dataserver_pillar(), {"docker": {"registries": {"registry.example.com:5000": login}}}
    )
    assert check(pillar)["registries"]["registry.example.com:5000"] == login


FAKE_DOCKERD = """#!/bin/sh
# Engine 26's answers to --version and --validate (the node's own dockerd checks daemon.json).
case "$1" in
  --version) echo "Docker version 26.1.5+dfsg1, build a72d7cd"; exit 0;;
  --validate)
    if grep -q '"default-shm-size": "64Q"' "$3"; then
      echo "unable to configure the Docker daemon with file $3: invalid size: '64Q'" >&2
      exit 1
    fi
    echo "configuration OK"; exit 0;;
esac
exit 2
"""


def test_daemon_json_goes_to_the_nodes_dockerd_when_it_can_validate(tmp_path, monkeypatch):
    dockerd = tmp_path / "dockerd"
    dockerd.write_text(FAKE_DOCKERD)
    dockerd.chmod(0o755)
    settings = corpus.MODULES["settings"]
    monkeypatch.setattr(settings.salt.utils.path, "which", lambda name: str(dockerd))
    assert check(corpus.dataserver_pillar())["config"]
    bad = corpus.with_override(
        corpus.dataserver_pillar(), {"docker": {"config": {"default-shm-size": "64Q"}}}
    )
    with pytest.raises(CommandExecutionError) as refused:
        check(bad)
    assert (
        "docker:config: the node's dockerd refuses it: unable to configure the Docker daemon "
        "with file daemon.json: invalid size: '64Q'"
    ) in str(refused.value)


def test_a_key_of_the_nodes_engine_only_goes_to_its_dockerd(tmp_path, monkeypatch):
    """cdi-spec-dirs is Engine 25's, not 20.10's: refused where no dockerd can say, taken
    where the node's dockerd validates the file."""
    pillar = corpus.with_override(
        corpus.dataserver_pillar(), {"docker": {"config": {"cdi-spec-dirs": ["/etc/cdi"]}}}
    )
    with pytest.raises(CommandExecutionError, match="docker:config:cdi-spec-dirs: unknown key"):
        check(pillar)
    dockerd = tmp_path / "dockerd"
    dockerd.write_text(FAKE_DOCKERD)
    dockerd.chmod(0o755)
    settings = corpus.MODULES["settings"]
    monkeypatch.setattr(settings.salt.utils.path, "which", lambda name: str(dockerd))
    assert check(pillar)["config"]["cdi-spec-dirs"] == ["/etc/cdi"]
