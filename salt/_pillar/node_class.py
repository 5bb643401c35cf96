"""
ext_pillar ``node_class``: every minion's pillar carries ``node_class``, the class of its
authenticated minion id in the master's node record (salt/_utils/dockerhosts_nodes.py), None
when it has none. Which pillar files a minion gets is decided by pillar/top.sls from the same
record (before any ext_pillar runs); this tells states and operators the class. A value
given on the command line (``pillar='{"node_class": ...}'``) changes only what that one run
of that minion sees, never what the master hands it.

Master config::

    ext_pillar:
      - node_class: {}
"""


def ext_pillar(minion_id, pillar, **kwargs):
    return {"node_class": __utils__["dockerhosts_nodes.class_of"](__opts__, minion_id)}
