"""The simulator: emulated RC522 and MCP23017 chips, mock pins, and the world around them.

Chosen by configuration (``backend = "sim"``) or ``open_cabinet(spec, "sim")``; the
:class:`~hardware.sim.simulator.Simulator` is ``cabinet.sim``. This package imports gpiozero
(its mock pins) when :mod:`hardware.sim.simulator` is imported, never at ``import hardware``.
"""
