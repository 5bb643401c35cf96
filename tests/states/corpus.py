"""The bad-pillar corpus (bad_pillars.yaml) and how it meets the formula: each entry is a
pillar override merged over the dataserver class's pillar, as `state.apply pillar=...` merges
it, then over the formula's defaults, as map.jinja merges them, and checked as settings.jinja
has it checked (docker_settings with the loader modules it calls, ``loader_modules``)."""

import copy
import functools
import inspect
from pathlib import Path

import salt.utils.dictupdate
import yaml

from tools.salt_repo import load_module

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).with_name("bad_pillars.yaml")
# Per tier, whether each entry run was refused before any change (the terminal summary).
REFUSED = {"render": [], "highstate": []}
TEST_SECRETS = {
    "postgres_user": "corpus-user",
    "postgres_password": "corpus-password",
    "postgres_db": "corpus-db",
}


def entries():
    return yaml.safe_load(CORPUS.read_text())


def _yaml(path):
    return copy.deepcopy(_read_yaml(path))


@functools.cache
def _read_yaml(path):
    return yaml.safe_load((REPO_ROOT / path).read_text()) or {}


def formula_defaults(os_family="Debian", os_name="Debian"):
    merged = _yaml("salt/docker/defaults.yaml")["docker"]
    for path, key in (("osfamilymap.yaml", os_family), ("osmap.yaml", os_name)):
        overlay = _yaml(f"salt/docker/{path}").get(key, {})
        merged = salt.utils.dictupdate.merge(merged, overlay, strategy="recurse")
    return merged


def dataserver_pillar():
    pillar = {}
    for path in ("pillar/docker.sls", "pillar/classes/dataserver/init.sls"):
        pillar = salt.utils.dictupdate.merge(pillar, _yaml(path), strategy="recurse")
    pillar.pop("include")  # the class's secrets: TEST_SECRETS
    pillar["docker_secrets"] = dict(TEST_SECRETS)
    pillar["node_class"] = "dataserver"
    return pillar


def with_override(pillar, override):
    return salt.utils.dictupdate.merge(pillar, override, strategy="recurse", merge_lists=False)


def mapdata(pillar, defaults):
    """map.jinja: defaults merged with pillar docker:, or pillar docker: as it is."""
    overrides = pillar.get("docker", {})
    if not isinstance(overrides, dict):
        return overrides
    return salt.utils.dictupdate.merge(defaults, overrides, strategy="recurse")


# What tests/states/containers/test_check_vs_docker.py tried, per kind of value:
# {"tried", "refused" (by the check), "both" (accepted by the check and the consumer), "consumer"}
CONSUMER_TRIED = {}


def refused_summary():
    parts = [f"{tier} {sum(runs)}/{len(runs)}" for tier, runs in REFUSED.items() if runs]
    lines = ["bad pillars refused before any change: " + ", ".join(parts)] if parts else []
    lines += [
        f"check vs consumer, {kind}: {c['tried']} values tried, {c['refused']} refused by the "
        f"check, {c['both']} accepted by the check and all of them by {c['consumer']}"
        if c["both"] == c["tried"] - c["refused"]
        else f"check vs consumer, {kind}: {c['tried'] - c['refused'] - c['both']} accepted by the "
        f"check and refused by {c['consumer']}"
        for kind, c in CONSUMER_TRIED.items()
    ]
    return "\n".join(lines) or None


MODULES = {
    "settings": load_module("modules", "docker_settings"),
    "containers": load_module("modules", "docker_containers"),
    "host": load_module("modules", "docker_host"),
    "checks": load_module("utils", "dockerhosts_checks"),
    "names": load_module("utils", "dockerhosts_names"),
    "secrets": load_module("utils", "dockerhosts_secrets"),
}


def _functions(module, name):
    found = inspect.getmembers(module, inspect.isfunction)
    return {f"{name}.{fn}": f for fn, f in found if f.__module__ == module.__name__}


def loader_modules():
    """``configure_loader_modules`` for the check: docker_settings with what it calls."""
    utils = {}
    for key, name in (("checks", "dockerhosts_checks"), ("names", "dockerhosts_names")):
        utils.update(_functions(MODULES[key], name))
    utils.update(_functions(MODULES["secrets"], "dockerhosts_secrets"))
    salt = _functions(MODULES["containers"], "docker_containers")
    salt["docker_host.daemon_json"] = MODULES["host"].daemon_json
    return {
        MODULES["settings"]: {
            "__utils__": utils,
            "__salt__": salt,
            "__pillar__": {},
            "__context__": {},
            "__opts__": {},
        },
        MODULES["containers"]: {"__context__": {}, "__salt__": salt, "__opts__": {}},
    }


def schema():
    return _yaml("salt/docker/schema.yaml")


def kit():
    return MODULES["checks"]


def check(pillar, os_family="Debian", os_name="Debian"):
    """The settings the formula gets for ``pillar``, or the refusal (CommandExecutionError)."""
    defaults = formula_defaults(os_family, os_name)
    return MODULES["settings"].validate(mapdata(pillar, defaults), schema(), pillar)
