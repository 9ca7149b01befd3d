"""Reproduction of the Dropsembles paper's three experiments (toy 2D, digits, vertebrae) with this
project's own code: accuracy, calibration and cost of single / MC dropout / deep ensemble /
Dropsembles, each with and without EWC. Run ``python -m bench.paper [--quick]``; it writes
``docs/RESULTS.md``, ``docs/results.json`` and ``docs/figures/*.png``.
"""
