"""Experiments: partitions, drift scenarios, and the whole fleet on one machine.

* :mod:`simulation.partition` — Dirichlet label-skewed shares and input shifts (drift);
* :mod:`simulation.fleet` — ``run_fleet(config) -> FleetReport`` (``edgefleet sim fleet``): the
  server, an initial plan, real edge agents with their Flower SuperNodes, a federated run and
  its summary, all as processes on 127.0.0.1 (:mod:`simulation.processes` cleans them up).

May import: ``aggregation``, ``edge_client``, the shared ``edgefleet`` core, numpy, flwr (its
simulation engine), flwr-datasets, httpx, scikit-learn (for the data sets it ships), matplotlib,
tqdm. TensorFlow only ever runs in a child process (TensorFlow Federated in its own virtual
environment). The fleet's run settings are the core's (:mod:`edgefleet.run_settings`).
"""
