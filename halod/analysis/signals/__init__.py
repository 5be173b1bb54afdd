"""Failure-signal detectors: one module per signal family (see base.py for the contract)."""
