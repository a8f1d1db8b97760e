"""Experiments: data sets and partitions, drift scenarios, device availability traces, reports.

Runs the same aggregation and ClientApp code on Flower's simulation engine. May import:
``aggregation``, ``edge_client``, the shared ``edgefleet`` core, numpy, scikit-learn (for the data
sets it ships).
"""
