"""
The master's record of each node, one per node name (= minion id), from create to destroy:
``__utils__["dockerhosts_nodes.<function>"](opts, ...)`` in salt-cloud's driver, the master's
runners and its pillar. Nothing else writes or reads the records' storage.

The records live in Salt's pluggable minion data cache (``salt.cache``, the master's ``cache``
option: ``localfs`` unless configured otherwise, so several masters can share one backend),
bank ``dockerhosts/nodes``. For ``localfs`` the cache directory is the master's ``pki_dir``:
salt-cloud's processes run with a cache directory of their own, but the same ``pki_dir`` as the
master whose keys they accept, and a node's record belongs with its key.

Locks (``locked``, ``held``): one holder per name at a time among every process of every
master sharing the store. With ``cache: redis`` (several masters, docs/multimaster.md) a lock
is a Redis key with a lease (redis-py's ``Lock``), renewed while its holder runs: a master that
dies frees its locks when the lease lapses. Otherwise an ``flock`` in the master's cachedir.

A record is a mapping; the fields each writer sets are documented in docs/lifecycle.md.
``class_of`` is what pillar uses: the class of an authenticated minion id, only while the key
the record was made for is still the accepted one.
"""

import contextlib
import copy
import fcntl
import hashlib
import logging
import os
import threading
import time

import salt.cache

try:
    import redis
except ImportError:  # only a master with ``cache: redis`` needs it
    redis = None

log = logging.getLogger(__name__)

BANK = "dockerhosts/nodes"
# Seconds a dead master's lock outlives it; its holder renews it every third of that.
LEASE = 30


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


def _redis(opts):
    """A client of the store Salt's ``redis`` cache uses (its ``cache.redis.*`` options)."""
    return redis.Redis(
        host=opts.get("cache.redis.host", "localhost"),
        port=opts.get("cache.redis.port", 6379),
        db=opts.get("cache.redis.db", "0"),
        password=opts.get("cache.redis.password") or None,
        unix_socket_path=opts.get("cache.redis.unix_socket_path"),
    )


def _lock_path(opts, name):
    directory = os.path.join(opts["cachedir"], "dockerhosts-locks")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return os.path.join(directory, name.replace("/", "-"))


def _renew(lock, done):
    while not done.wait(LEASE / 3):
        try:
            lock.reacquire()
        except Exception as error:  # the store is away: retry; the lease may lapse
            log.warning("lock %s: cannot renew its lease: %s", lock.name, error)


@contextlib.contextmanager
def locked(opts, name, wait=None):
    """Hold lock ``name`` (e.g. ``converge/db1``, ``swarm/backends``); waits up to ``wait`` s
    (None: as long as it takes), then TimeoutError."""
    if opts.get("cache") == "redis":
        lock = _redis(opts).lock(f"dockerhosts/lock/{name}", timeout=LEASE, blocking_timeout=wait)
        if not lock.acquire():
            raise TimeoutError(f"{name}: another master holds it")
        done = threading.Event()
        renewer = threading.Thread(target=_renew, args=(lock, done), daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()
            with contextlib.suppress(redis.exceptions.LockError):
                lock.release()
        return
    with open(_lock_path(opts, name), "a", encoding="utf-8") as handle:
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"{name}: another process holds it") from None
                time.sleep(0.5)
        yield


def held(opts, name):
    """Whether some process (of any master sharing the store) holds lock ``name`` now."""
    if opts.get("cache") == "redis":
        return bool(_redis(opts).exists(f"dockerhosts/lock/{name}"))
    try:
        with locked(opts, name, wait=0):
            return False
    except TimeoutError:
        return True
