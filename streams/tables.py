"""Where a worker keeps its two large tables, the ledger and the rule state.

``table_store = "memory"`` (the default) keeps them in Python dicts: fastest, and
enough for a city or a small province. ``"rocksdb"`` keeps them in RocksDB files
(through rocksdict, Faust's ``rocksdb://`` store): a province's million persons and
its month of settlements stay on disk, with a bounded cache in memory
(``bench/state_memory.py --store rocksdb`` measures it). The small tables (clocks,
counts) stay in memory either way.

The changelog topics stay the tables' source of truth. A RocksDB table written by
``streams.changelog.ChangelogWriter`` may hold a write whose changelog batch a
crash lost; Faust would trust such a file on restart (it reads the changelog
only past the offset it recorded), and the records re-read after the crash would
be judged against state that already counts them, then never sent to the
changelog again. So each process keeps its files in a directory of its own,
named after host and pid, and a starting worker removes the directories of
processes of its host that are gone: it rebuilds its tables from the changelogs,
as with memory. Several workers may share one ``data_dir``.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket

log = logging.getLogger("fundwatch.worker")

#: Faust's RocksDB defaults are sized for a dedicated machine: a 2 GB block cache
#: and three 64 MB write buffers per partition and table (8 databases with 4
#: partitions). These bound a worker's RocksDB memory to about 8 × (2 × 16 + 32) MB.
ROCKSDB_OPTIONS = {
    "driver": "rocksdict",
    "write_buffer_size": 16 * 1024 ** 2,
    "max_write_buffer_number": 2,
    "block_cache_size": 32 * 1024 ** 2,
    "bloom_filter_size": 10,  # bits per key: a miss (a new id) rarely reads a block
}

DIR_PREFIX = "tables-"


def prepare(settings, app) -> None:
    """Once per process, before the tables are declared."""
    if settings.table_store == "rocksdb":
        app.conf.tabledir = private_tabledir(str(app.conf.appdir))


def large_table_options(settings, name: str) -> dict:
    """Keyword arguments for ``app.Table`` of the ledger and the rule state."""
    if settings.table_store != "rocksdb":
        return {}
    # "rocksdb:<name>": its files are <tabledir>/<name>-<partition>.db. (A bare
    # "rocksdb://" is an empty URL, which Faust takes for "no store given".) A dict
    # of options per table: Faust's store pops keys from the one it is given.
    return {"store": f"rocksdb:{name}", "options": dict(ROCKSDB_OPTIONS)}


def private_tabledir(appdir: str, host: str | None = None, pid: int | None = None) -> str:
    """This process's table directory (relative to ``appdir``), after removing
    those of this host's processes that are gone.

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "tables-h-999999999"))   # a pid no process has
    >>> os.makedirs(os.path.join(root, f"tables-h-{os.getpid()}"))  # alive: kept
    >>> private_tabledir(root, host="h", pid=7)
    'tables-h-7'
    >>> os.listdir(root) == [f"tables-h-{os.getpid()}"]
    True
    """
    host = host or socket.gethostname()
    pid = os.getpid() if pid is None else pid
    mine = f"{DIR_PREFIX}{host}-{pid}"
    try:
        names = os.listdir(appdir)
    except FileNotFoundError:
        names = []
    for name in names:
        owner = name[len(DIR_PREFIX) + len(host) + 1:]
        if not name.startswith(f"{DIR_PREFIX}{host}-") or not owner.isdigit():
            continue
        if name == mine or not _alive(int(owner)):
            log.info("removing table files of a process that is gone: %s", name)
            shutil.rmtree(os.path.join(appdir, name), ignore_errors=True)
    return mine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
