"""NRI event subscription masks (containerd/nri ``pkg/api/event.go``).

Event ``e`` is bit ``e - 1`` of ``ConfigureResponse.events``. A runtime rejects a mask with bits
beyond its own ``Event.LAST`` ("invalid plugin events") and treats 0 as "everything", so the
mask is clamped to what the runtime's NRI version knows and must never end up 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from generated.nri.pkg.api.v1alpha1 import Event

# Events whose handlers take part in CPU pinning; all exist in every NRI release (bits 0-10).
DEFAULT_EVENTS: frozenset[Event] = frozenset(
    {
        Event.RUN_POD_SANDBOX,
        Event.STOP_POD_SANDBOX,
        Event.REMOVE_POD_SANDBOX,
        Event.CREATE_CONTAINER,
        Event.START_CONTAINER,
        Event.UPDATE_CONTAINER,
        Event.STOP_CONTAINER,
        Event.REMOVE_CONTAINER,
    }
)

# Events this transport can deliver to a handler. VALIDATE_CONTAINER_ADJUSTMENT would make the
# plugin a validator, which it is not.
SUBSCRIBABLE: frozenset[Event] = frozenset(
    e for e in Event if e not in (Event.UNKNOWN, Event.LAST, Event.VALIDATE_CONTAINER_ADJUSTMENT)
)

CLASSIC_VALID_MASK = 0x7FF  # NRI v0.3.0 - v0.9.x: Event.LAST == 12
MODERN_VALID_MASK = 0x3FFF  # NRI >= v0.10.0: Event.LAST == 15

_SEMVER = re.compile(r"^v?(\d+)\.(\d+)")


def mask_of(events: Iterable[Event]) -> int:
    """The ConfigureResponse bit mask for ``events``."""
    mask = 0
    for event in events:
        mask |= 1 << (int(event) - 1)
    return mask


def events_of(mask: int) -> frozenset[Event]:
    """The events whose bits are set in ``mask`` (unknown bits are ignored)."""
    return frozenset(e for e in SUBSCRIBABLE if mask & (1 << (int(e) - 1)))


def runtime_valid_mask(nri_version: str) -> int:
    """The events mask a runtime accepts, from ``ConfigureRequest.NRI_version``.

    Only NRI >= v0.12 sends its version; older runtimes (and unparsable versions) get the
    conservative classic mask, which every release accepts.
    """
    match = _SEMVER.match(nri_version.strip())
    if match is None:
        return CLASSIC_VALID_MASK
    major, minor = int(match.group(1)), int(match.group(2))
    return MODERN_VALID_MASK if (major, minor) >= (0, 10) else CLASSIC_VALID_MASK
