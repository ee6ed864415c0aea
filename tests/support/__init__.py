"""Test data and test servers for the suite and the benchmarks; not part of the installed product.

``serving``: a model to serve, real frames, certificates, a server process;
``policy_frames``: synthetic benchmark tables with known answers for the policies;
``sim_tables``: a multi-task synthetic table and a tiny scenario for the simulator.
"""
