"""The bad-pillar corpus (bad_pillars.yaml) and how it meets the formula: each entry is a
pillar override merged over the dataserver class's pillar, as `state.apply pillar=...` merges
it, then over the formula's defaults, as map.jinja merges them."""

from pathlib import Path

import salt.utils.dictupdate
import yaml

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


def refused_summary():
    parts = [f"{tier} {sum(runs)}/{len(runs)}" for tier, runs in REFUSED.items() if runs]
    return "bad pillars refused before any change: " + ", ".join(parts) if parts else None
