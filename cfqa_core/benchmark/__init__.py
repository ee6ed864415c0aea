"""The CFQA benchmark: PLCC/SROCC protocol, report with plots, seed-data ingest.

``protocol`` (pandas + scipy), ``report`` and ``plots`` (matplotlib, Agg) and
``seed_ingest`` are imported on use; nothing here is needed on the edge.
"""
