"""
Name rules shared by the cloud driver, the master's runners and pillar, and the formula's
modules (``__utils__["dockerhosts_names.<function>"]``; Salt's loader finds this directory
through ``module_dirs`` on the master and in salt-cloud, and ``saltutil.sync_utils`` puts it on
minions).

Each rule is the strictest of the places the name goes:

- a node name is also its minion id: a key file name on the master, an EC2 ``Name`` tag and a
  ``salt.cache`` key;
- a class name is a folder under ``pillar/classes/`` and so a part of an SLS path (a dot there
  would split it), an EC2 tag value and a swarm label;
- a Docker name is what Docker takes for a container, network or volume.

Each ``*_problem`` function returns None for a good name, else what is wrong with it, for the
caller to put after the key path it checks.
"""

import re

NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")
CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
DOCKER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")


def _problem(value, pattern, rule):
    if not isinstance(value, str):
        return f"must be a string ({rule}), not {type(value).__name__}"
    if not pattern.fullmatch(value):
        shown = value if len(value) <= 60 else f"{value[:60]}..."
        return f"{shown!r} is not {rule}"
    return None


def node_name_problem(name):
    """What is wrong with a node name / minion id, or None."""
    return _problem(
        name,
        NODE_NAME,
        "a node name (letters, digits, '.', '_', '-', starting with a letter or digit, "
        "at most 253)",
    )


def class_name_problem(name):
    """What is wrong with a class name, or None."""
    return _problem(
        name,
        CLASS_NAME,
        "a class name (letters, digits, '_', '-', starting with a letter or digit, at most 63)",
    )


def docker_name_problem(name):
    """What is wrong with a container, network or volume name, or None."""
    return _problem(name, DOCKER_NAME, "a Docker name ([a-zA-Z0-9][a-zA-Z0-9_.-]+)")
