"""
The master's record of each node, one per node name (= minion id), from create to destroy:
``__utils__["dockerhosts_nodes.<function>"](opts, ...)`` in salt-cloud's driver, the master's
runners and its pillar. Nothing else writes or reads the records' storage.

The records live in Salt's pluggable minion data cache (``salt.cache``, the master's ``cache``
option: ``localfs`` unless configured otherwise, so several masters can share one backend),
bank ``dockerhosts/nodes``. For ``localfs`` the cache directory is the master's ``pki_dir``:
salt-cloud's processes run with a cache directory of their own, but the same ``pki_dir`` as the
master whose keys they accept, and a node's record belongs with its key.

A record is a mapping; the fields each writer sets are documented in docs/lifecycle.md.
``class_of`` is what pillar uses: the class of an authenticated minion id, only while the key
the record was made for is still the accepted one.
"""

import copy
import hashlib
import os
import time

import salt.cache

BANK = "dockerhosts/nodes"


def _cache(opts):
    opts = dict(opts)
    if opts.get("cache", "localfs") == "localfs":
        opts["cachedir"] = opts["pki_dir"]
    return salt.cache.factory(opts)


def get(opts, name):
    """The record of node ``name``, or None."""
    return _cache(opts).fetch(BANK, name) or None


def put(opts, name, record):
    """Replace the record of node ``name``."""
    record = copy.deepcopy(record)
    record["name"] = name
    record["updated"] = time.time()
    _cache(opts).store(BANK, name, record)
    return record


def update(opts, name, **fields):
    """Merge ``fields`` into the record of node ``name`` (made when missing)."""
    record = get(opts, name) or {}
    record.update(fields)
    return put(opts, name, record)


def forget(opts, name):
    """Remove the record of node ``name``; whether there was one."""
    cache = _cache(opts)
    if not cache.contains(BANK, name):
        return False
    cache.flush(BANK, name)
    return True


def names(opts):
    """Every node name with a record."""
    return sorted(_cache(opts).list(BANK))


def records(opts, node_class=None):
    """``{name: record}`` of every node, or of one class."""
    found = {name: get(opts, name) for name in names(opts)}
    return {
        name: record
        for name, record in found.items()
        if record and (node_class is None or record.get("class") == node_class)
    }


def key_fingerprint(opts, minion_id):
    """sha256 of ``minion_id``'s accepted key (one per node incarnation: salt-cloud makes a new
    key per create), or None when no key of that id is accepted."""
    try:
        with open(os.path.join(opts["pki_dir"], "minions", minion_id), "rb") as handle:
            return hashlib.sha256(handle.read().strip()).hexdigest()
    except (FileNotFoundError, NotADirectoryError, TypeError):
        return None


def class_of(opts, minion_id):
    """The class of an authenticated minion id: its record's class, only while the key the
    record was made for is the one accepted now (a new key for an old name has no class)."""
    record = get(opts, minion_id)
    if not record or not record.get("class") or not record.get("key"):
        return None
    return record["class"] if record["key"] == key_fingerprint(opts, minion_id) else None


def members(opts, node_class):
    """Sorted minion ids whose ``class_of`` is ``node_class``."""
    return sorted(name for name in names(opts) if class_of(opts, name) == node_class)
