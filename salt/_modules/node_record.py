"""
The node record for pillar/top.sls, which renders on the master with the master's execution
modules (utils are not reachable from Jinja): ``salt["node_record.class_of"](opts.id)``, the
class of the minion whose pillar is being compiled (salt/_utils/dockerhosts_nodes.py). Loads
on the master only, and on a masterless minion, whose own config (``node_class:``) is its
master's.
"""


def __virtual__():
    if __opts__.get("__role") == "master" or __opts__.get("file_client") == "local":
        return "node_record"
    return (False, "the node record lives on the master")


def class_of(minion_id):
    """The class of authenticated minion ``minion_id`` (the top file's ``opts.id``), or None."""
    if __opts__.get("__role") != "master":
        return __opts__.get("node_class")
    return __utils__["dockerhosts_nodes.class_of"](__opts__, minion_id)
