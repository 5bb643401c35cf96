"""
The node class registry: which class (and so which pillar, secrets included) each minion
gets, keyed by its authenticated minion id, kept on the master.

One file per minion, ``<pki_dir>/node_classes/<minion_id>``, holding the class name and a
newline, written atomically (temporary file + rename) in a directory of mode 0700. Class
names match ``^[A-Za-z0-9][A-Za-z0-9_.-]*$``; minion ids must be safe file names.
pillar/top.sls reads the entry of the minion it renders for, and the ``node_class``
ext_pillar (salt/_pillar/node_class.py) puts it into that minion's pillar.

.. code-block:: bash

    salt-run node_class.set db1 dataserver
    salt-run node_class.get db1
    salt-run node_class.list
    salt-run node_class.members dataserver
    salt-run node_class.unset db1

A change takes effect at the minion's next pillar refresh
(``salt db1 saltutil.refresh_pillar``) or highstate.
"""

import os
import re
import tempfile

from salt.exceptions import SaltInvocationError

__func_alias__ = {"set_": "set", "list_": "list"}

CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# A file name on every filesystem the master may use: no separators, no dot files.
MINION_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,252}")


def set_(minion_id, node_class):
    """
    Assign ``node_class`` to ``minion_id`` (replacing any class it had).

    CLI Example: ``salt-run node_class.set db1 dataserver``
    """
    _check_id(minion_id)
    _check_class(node_class)
    directory = _registry(create=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(handle, "w", encoding="ascii") as out:
            out.write(f"{node_class}\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, os.path.join(directory, minion_id))
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return {minion_id: node_class}


def get(minion_id):
    """
    The class of ``minion_id``, or None when it has none.

    CLI Example: ``salt-run node_class.get db1``
    """
    _check_id(minion_id)
    return read(_registry(), minion_id)


def unset(minion_id):
    """
    Remove the class of ``minion_id``: its pillar then holds nothing of any class.

    CLI Example: ``salt-run node_class.unset db1``
    """
    _check_id(minion_id)
    try:
        os.unlink(os.path.join(_registry(), minion_id))
    except FileNotFoundError:
        return False
    return True


def list_():
    """
    ``{minion_id: class}`` for every registered minion.

    CLI Example: ``salt-run node_class.list``
    """
    directory = _registry()
    if not os.path.isdir(directory):
        return {}
    names = sorted(n for n in os.listdir(directory) if MINION_ID.fullmatch(n))
    return {name: read(directory, name) for name in names}


def members(node_class):
    """
    Sorted minion ids of the class ``node_class``.

    CLI Example: ``salt-run node_class.members dataserver``
    """
    _check_class(node_class)
    return sorted(minion for minion, found in list_().items() if found == node_class)


def read(directory, minion_id):
    """The class in ``directory``'s entry for ``minion_id``; None when there is none."""
    try:
        with open(os.path.join(directory, minion_id), encoding="ascii") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    name = text.rstrip("\n")
    if not CLASS_NAME.fullmatch(name):
        raise SaltInvocationError(f"node class registry: the entry of {minion_id} is corrupt")
    return name


def _registry(create=False):
    directory = os.path.join(__opts__["pki_dir"], "node_classes")
    if create:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
    return directory


def _check_id(minion_id):
    if not isinstance(minion_id, str) or not MINION_ID.fullmatch(minion_id):
        raise SaltInvocationError(
            f"{minion_id!r} is not a minion id this registry accepts (letters, digits, "
            "_ . @ -, not starting with . or -)"
        )


def _check_class(node_class):
    if not isinstance(node_class, str) or not CLASS_NAME.fullmatch(node_class):
        raise SaltInvocationError(
            f"{node_class!r} is not a class name (^[A-Za-z0-9][A-Za-z0-9_.-]*$)"
        )
