"""Experiments: the researchers' harness, and the whole fleet on one machine.

The harness (``edgefleet sim run EXPERIMENT.toml``, :func:`simulation.engine.run_experiment`):

* :mod:`simulation.config` — the experiment (one pydantic object, read from TOML), sweeps;
* :mod:`simulation.data`, :mod:`simulation.zoo`, :mod:`simulation.partitioners` — examples,
  zoo plans (authored in a child process, cached), client partitions (Flower Datasets);
* :mod:`simulation.scenarios`, :mod:`simulation.adversaries`, :mod:`simulation.traces` — drift,
  Byzantine clients, device availability and speed;
* :mod:`simulation.population` — the frozen inputs every worker loads;
* :mod:`simulation.client_app`, :mod:`simulation.sim_grid`, :mod:`simulation.server`,
  :mod:`simulation.engine` — the simulated devices, the simulated clock, the production round
  loop on Flower's simulation engine (Ray, local or a cluster);
* :mod:`simulation.results`, :mod:`simulation.report`, :mod:`simulation.sweep` — rows, plots,
  the HTML report, comparison tables;
* :mod:`simulation.replay`, :mod:`simulation.tff_backend` (+ the standalone
  ``simulation/tff_worker.py``) — frozen inputs and the TensorFlow Federated reference;
* :mod:`simulation.inprocess` — the same round loop on Flower's simulation runtime in this
  process (threads instead of Ray actors), the fast engine for measurements;
  :mod:`simulation.steering_eval`, :mod:`simulation.trigger_eval` — what drift steering and
  the fleet trigger do, measured (``python -m simulation.steering_eval``).

The fleet (``edgefleet sim fleet``): :mod:`simulation.partition` (Dirichlet shares and input
shifts), :mod:`simulation.fleet` (server, plan, agents, SuperNodes, a federated run;
:mod:`simulation.processes` cleans them up).

May import: ``aggregation``, ``edge_client``, the shared ``edgefleet`` core, numpy, httpx,
scikit-learn (its bundled data sets), flwr (and its simulation engine), flwr-datasets,
matplotlib, tqdm. TensorFlow only ever runs in a child process (plan authoring) or in TFF's own
virtual environment.
"""
