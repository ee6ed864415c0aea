"""Offline rate-control analysis on a benchmark table: what needs ground truth or the whole table.

``replay`` (the table as dense arrays and policy contexts over them),
``accuracy`` (accuracy and accuracy drop against ground truth), ``calibrate``
(calibration fitting, ``cfqa calibrate``), ``oracle`` (the ``oracle`` policy, a
bound; importing the module registers it), ``fit`` / ``shipped`` (rate plans),
``evaluate`` / ``report`` (``cfqa policies eval``) and ``ratecontrol_cmd``.

Nothing here runs on a device: the edge loads the plans and calibration files
this package fits (:mod:`cfqa_edge.policies.plan`,
:mod:`cfqa_edge.policies.calibration`) and runs the policies it evaluates.
"""
