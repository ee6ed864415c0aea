"""Offline rate-control analysis: fitting rate plans and evaluating policies on a benchmark table.

Nothing here runs on a device: the edge loads the plans this package fits
(:mod:`cfqa_edge.policies.plan`) and runs the policies it evaluates.
"""
