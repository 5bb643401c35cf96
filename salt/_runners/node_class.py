"""
The operator's view of node classes: which class (and so which pillar, secrets included) each
minion gets, kept in the master's node record (salt/_utils/dockerhosts_nodes.py) for its
authenticated minion id and the key accepted for it. A node salt-cloud creates gets its class
from its profile; these commands set, change or drop it by hand.

.. code-block:: bash

    salt-run node_class.set web7 backends     # a minion whose key is accepted
    salt-run node_class.get web7
    salt-run node_class.list
    salt-run node_class.members backends
    salt-run node_class.unset web7

A class is a folder ``pillar/classes/<class>/``. A change takes effect at the minion's next
pillar refresh (``salt web7 saltutil.refresh_pillar``) or highstate. Deleting or rejecting
the minion's key (``salt-key -d``) drops its class at once; a new key for the same name starts
with none.
"""

import logging

log = logging.getLogger(__name__)

__func_alias__ = {"set_": "set", "list_": "list"}


def _nodes(function, *args, **kwargs):
    return __utils__[f"dockerhosts_nodes.{function}"](__opts__, *args, **kwargs)


def _refuse(message):
    log.warning("node_class: %s", message)
    __context__["retcode"] = 1
    return {"result": False, "comment": message, "retcode": 1}  # salt-run exits with it


def _id_problem(minion_id):
    problem = __utils__["dockerhosts_names.node_name_problem"](minion_id)
    return f"minion id: {problem}" if problem else None


def _class_problem(node_class):
    problem = __utils__["dockerhosts_names.class_name_problem"](node_class)
    problem = problem or _nodes("class_problem", node_class)
    return f"class: {problem}" if problem else None


def set_(minion_id, node_class):
    """
    Give ``minion_id`` (its key accepted) the class ``node_class``, replacing any it had.

    CLI Example: ``salt-run node_class.set web7 backends``
    """
    problem = _id_problem(minion_id) or _class_problem(node_class)
    if problem:
        return _refuse(f"node_class.set: {problem}")
    key = _nodes("key_fingerprint", minion_id)
    if key is None:
        return _refuse(f"{minion_id}: no accepted key: salt-key -a {minion_id} first")
    record = _nodes("get", minion_id)
    if record and record.get("key") == key:
        _nodes("update", minion_id, **{"class": node_class})
    else:  # a node added by hand, or a new key for an old name: a record of its own
        fields = {"class": node_class, "key": key, "source": "operator", "state": "deployed"}
        _nodes("forget", minion_id)
        _nodes("update", minion_id, **fields)
    return {minion_id: node_class}


def get(minion_id):
    """
    The class of ``minion_id`` (None when it has none, or its record is for another key).

    CLI Example: ``salt-run node_class.get web7``
    """
    problem = _id_problem(minion_id)
    return _refuse(f"node_class.get: {problem}") if problem else _nodes("class_of", minion_id)


def unset(minion_id):
    """
    Drop the class of ``minion_id``: its pillar then holds nothing of any class. Whether it
    had one.

    CLI Example: ``salt-run node_class.unset web7``
    """
    problem = _id_problem(minion_id)
    if problem:
        return _refuse(f"node_class.unset: {problem}")
    return (
        _nodes("update", minion_id, when=lambda r: bool(r and r.get("class")), **{"class": None})
        is not None
    )


def list_():
    """
    ``{minion_id: class}`` of every minion that has one.

    CLI Example: ``salt-run node_class.list``
    """
    found = {name: _nodes("class_of", name) for name in _nodes("names")}
    return {name: node_class for name, node_class in found.items() if node_class}


def members(node_class):
    """
    Sorted minion ids of the class ``node_class``.

    CLI Example: ``salt-run node_class.members backends``
    """
    problem = __utils__["dockerhosts_names.class_name_problem"](node_class)
    return (
        _refuse(f"node_class.members: class: {problem}")
        if problem
        else _nodes("members", node_class)
    )
