"""`ueo cache info|prune|clear|bound`: see the decode cache, remove its stale entries, remove it, set its bound."""

from __future__ import annotations

from ..errors import ConfigError
from ..files import default_cache_dir
from ..images import bound, upkeep
from .inputs import cache_root
from .messages import say, warn


def cmd_cache(args) -> int:

    root = cache_root(args.cache_dir) or default_cache_dir()
    if args.action == "bound":
        if args.size is None:
            limit, why = bound(root, remember=False, warn=warn)
            print(f"the decode cache {root} is bounded at {limit / 1e9:.3f} GB ({why}).")
            return 0
        size, _ = upkeep.set_bound(root, args.size)
        say(f"the decode cache {root} is now bounded at {size / 1e9:.3f} GB (kept in its settings.json).")
        return 0
    if args.size is not None:
        raise ConfigError(f"`ueo cache {args.action}` takes no size (only `ueo cache bound SIZE` does).")
    if args.action == "info":
        print(upkeep.render(upkeep.info(root, warn=warn)))
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
            + (f"; {done['building']} file(s) of builds still running were left" if done["building"] else "")
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
