"""Trace-driven SimPy simulator of edge nodes sending compressed features to a cloud.

Modules: ``traces`` (capacity traces), ``link`` (processor-sharing uplink),
``node`` (edge processes), ``cloud`` (server pool), ``outcomes`` (the frame
outcome provider seam: replay from the benchmark table, live later;
policies come from ``cfqa_edge.policies``),
``table`` (the benchmark table for replay), ``scenario`` (YAML schema),
``engine`` (build and run), ``summary`` / ``report`` / ``results`` (outputs),
``sweep`` and ``commands`` (CLI).
"""
