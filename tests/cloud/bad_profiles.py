"""The bad-profile corpus (bad_profiles.yaml) as its two runners read it: the unit tier
(tests/unit/test_profile_corpus.py) and the CLI smoke cases (test_bad_profiles.py)."""

import re
from pathlib import Path

import yaml

CORPUS = yaml.safe_load((Path(__file__).parent / "bad_profiles.yaml").read_text())
ENTRIES = {
    entry["id"]: {**entry, "kind": kind}
    for kind in ("profiles", "names", "providers")
    for entry in CORPUS[kind]
}


def expand(value, values):
    """Fill in {placeholders} and {repeat <character> <count>}."""
    if isinstance(value, dict):
        return {expand(key, values): expand(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [expand(item, values) for item in value]
    if not isinstance(value, str):
        return value
    value = re.sub(r"\{repeat (.) (\d+)\}", lambda m: m.group(1) * int(m.group(2)), value)
    return values.get(value[1:-1], value) if value.startswith("{") else value
