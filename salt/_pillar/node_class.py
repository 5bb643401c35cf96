"""
ext_pillar ``node_class``: every minion's pillar carries ``node_class``, its class in the
master's registry (salt/_runners/node_class.py), looked up by the authenticated minion id
the master compiles the pillar for; None when the minion has no class.

Which pillar files a minion gets is decided in pillar/top.sls from the same registry entry
(before any ext_pillar runs), so nothing here decides access; this only tells states and
operators the class. A value given on the command line (``pillar='{"node_class": ...}'``)
changes only what that one run of that minion sees, never what the master hands it.

Master config::

    ext_pillar:
      - node_class: {}
"""

import os
import re

CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def ext_pillar(minion_id, pillar, **kwargs):
    entry = os.path.join(__opts__["pki_dir"], "node_classes", minion_id)
    if os.sep in minion_id or minion_id.startswith("."):
        return {"node_class": None}
    try:
        with open(entry, encoding="ascii") as handle:
            name = handle.read().rstrip("\n")
    except FileNotFoundError:
        return {"node_class": None}
    if not CLASS_NAME.fullmatch(name):
        raise ValueError(f"node class registry: the entry of {minion_id} is corrupt")
    return {"node_class": name}
