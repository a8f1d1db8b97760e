"""EdgeFleet's shared core: what two or more deployables need to agree on.

Owns
    * ``edgefleet.plan``     the model-plan manifest (what a ``.tflite`` plan is, its weights, its
                             reference statistics) and the weights file format (safetensors);
    * ``edgefleet.runtime``  the plan runtime: load a plan in whichever TFLite interpreter is
                             installed (LiteRT or tflite-runtime) and infer/train/evaluate with it;
    * ``edgefleet.drift``    the mergeable drift summary that devices report;
    * ``edgefleet.wire``     the pydantic schemas that travel over REST between devices, the server
                             and the aggregation (``edgefleet.bounds``: the bounded types they use);
    * ``edgefleet.v2``       the Open Inference Protocol (V2) codec (JSON and binary tensor
                             data, raw bodies in and out), used by the server's V2 routes and the
                             agent's local endpoint alike; its JSON schemas and datatypes in
                             ``edgefleet.v2_schema``;
    * ``edgefleet.flower_keys``  the names inside the Flower messages of the ServerApp and the
                             ClientApp;
    * ``edgefleet.run_settings`` the settings of a federated run, each knob with its one default;
    * ``edgefleet.log_level`` the log-level type every settings class accepts in any case;
    * ``edgefleet.signature`` the version statement the registry signs, and its check;
    * ``edgefleet.audit``    the audit trail's and run events' wire schemas; ``edgefleet.cards``
                             the model card's;
    * ``edgefleet.ondemand`` model-on-demand messages and stream names (broker clients lazily);
    * ``edgefleet.datasets`` the data sets scikit-learn ships, with deterministic splits (used by
                             authoring, the simulation, the benchmarks and the tests);
    * ``edgefleet.errors``   ``EdgeFleetError``, the root of every EdgeFleet exception (each
                             package's root error derives from it).

May import: numpy, pydantic, safetensors, cryptography and, lazily, a TFLite interpreter
(``runtime``), scikit-learn (``datasets``), redis and nats (``ondemand``). It must never import
TensorFlow, FastAPI, SQLModel or scipy, nor any deployable package: every deployable, and the edge
agent in particular, depends on it. The ``edgefleet`` command itself lives above the
deployables, in ``edgefleet_cli``. ``tests/test_imports.py`` checks these rules.
"""

__version__ = "0.1.0"
