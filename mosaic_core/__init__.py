"""The ground floor: helpers every package uses (configs, atomic files, provenance, runtime, schedules, tables).

It imports nothing from the project; see docs/ARCHITECTURE.md for the layers built on it.
"""
