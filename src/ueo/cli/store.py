"""`ueo cache info|prune|clear`: see the decode cache, remove its stale entries, or remove it."""

from __future__ import annotations

from pathlib import Path

from ..cache import default_cache_dir
from .common import say


def cmd_cache(args) -> int:
    from .. import upkeep

    root = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if args.action == "info":
        print(upkeep.render(upkeep.info(root)))
        return 0
    if not root.is_dir():
        say(f"decode cache: {root} is empty; nothing to remove.")
        return 0
    if args.action == "prune":
        done = upkeep.prune(root)
        say(
            f"pruned {root}: {done['removed']} shard(s) removed, {done['rewritten']} written again without their "
            f"{done['entries']} stale entrie(s), {done['bytes'] / 1e9:.3f} GB freed"
            + (f"; {done['in_use']} shard(s) in use by a running ueo were left" if done["in_use"] else "")
            + (f"; {done['busy_folders']} folder(s) being built into were left" if done["busy_folders"] else "")
            + "."
        )
        return 0
    done = upkeep.clear(root)
    say(
        f"cleared {root}: {done['removed']} shard(s) removed, {done['bytes'] / 1e9:.3f} GB freed"
        + (f"; {done['in_use']} shard(s) in use by a running ueo were left" if done["in_use"] else "")
        + "."
    )
    return 0
