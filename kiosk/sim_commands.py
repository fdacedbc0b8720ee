"""The simulator's commands (``sim.tap``, ``sim.door``, ``sim.fault``): what the web's
simulator panel and ``/sim/...`` endpoints ask a kiosk on simulated hardware to do.

Each handler takes the cabinet's simulator (``hardware.sim.simulator.Simulator``), the
command's payload (checked by :mod:`kiosk.commands` when it was submitted) and the kiosk's
compartment numbers, does it, and returns the command's result. ValueError when the kiosk
has real hardware or no such compartment.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

Handler = Callable[[Any, dict[str, Any], Collection[int]], dict[str, Any]]


def tap(sim: Any, payload: dict[str, Any], _compartments: Collection[int]) -> dict[str, Any]:
    """A card is tapped on the reader."""
    sim.tap(payload["uid"].replace(":", ""))
    return {"tapped": True}


def door(sim: Any, payload: dict[str, Any], compartments: Collection[int]) -> dict[str, Any]:
    """Someone opens or shuts a door; ``forced``: pulls it open with the lock latched."""
    number = payload["compartment"]
    if number not in compartments:
        raise ValueError(f"this kiosk has no compartment {number}")
    forced = bool(payload.get("forced")) and payload["open"]
    if forced:
        sim.force_door(number)
    elif payload["open"]:
        sim.open_door(number)
    else:
        sim.close_door(number)
    result = {"compartment": number, "open": sim.door_is_open(number)}
    if forced:
        result["forced"] = True
    return result


def fault(sim: Any, payload: dict[str, Any], _compartments: Collection[int]) -> dict[str, Any]:
    """Switch one of the simulator's faults on or off."""
    name, on = payload["fault"], payload["on"]
    if name.startswith("reader_"):
        sim.reader_fault(name.removeprefix("reader_") if on else None)
    elif name == "jam_lock":
        sim.jam_lock(payload["compartment"], on)
    elif name == "stick_door_open":
        sim.stick_door_open(payload["compartment"], on)
    return {"fault": name, "on": on}


HANDLERS: dict[str, Handler] = {"sim.tap": tap, "sim.door": door, "sim.fault": fault}


def run(
    sim: Any, kind: str, payload: dict[str, Any], compartments: Collection[int]
) -> dict[str, Any]:
    """Carry out simulator command ``kind``; its result."""
    if sim is None:
        raise ValueError("this kiosk has real hardware, not a simulator")
    return HANDLERS[kind](sim, payload, compartments)


__all__ = ["HANDLERS", "run"]
