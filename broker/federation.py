"""The marks a forwarded instance carries between federated sites, read on arrival.

A site that forwards an instance to a peer tags it there with its own instance id, its site
id and the number of links crossed. The receiving site records the last two as the launch's
``hops`` and ``origin``; placement's hop limit then never forwards such an instance again, so
a chain of sites cannot loop. Both sides use these names, so they live in the core.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

TAG_ORIGIN_INSTANCE: Final = "cloudbroker:origin-instance"
TAG_ORIGIN_SITE: Final = "cloudbroker:origin-site"
TAG_HOPS: Final = "cloudbroker:hops"
MAX_HOPS_TAG: Final = 64  # a larger value is a forged tag; it is read as "already forwarded"


def hops_from_tags(tags: Mapping[str, str]) -> tuple[int, str]:
    """(hops, origin site) a receiving site records for a launch carrying these tags.

    No mark: (0, ""), an instance launched here. A malformed hop count counts as forwarded
    already (1), so a broken or forged tag can never make an instance travel further.
    """
    origin = tags.get(TAG_ORIGIN_SITE, "")[:128]
    raw = tags.get(TAG_HOPS)
    if raw is None:
        return (1 if origin else 0), origin
    try:
        hops = int(raw.strip())
    except ValueError:
        return 1, origin
    if not 0 <= hops <= MAX_HOPS_TAG:
        return max(1, min(hops, MAX_HOPS_TAG)), origin
    return max(hops, 1 if origin else 0), origin
