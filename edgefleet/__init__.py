"""EdgeFleet's shared core: what two or more deployables need to agree on.

Owns
    * ``edgefleet.plan``     the model-plan manifest (what a ``.tflite`` plan is, its weights, its
                             reference statistics) and the weights file format (safetensors);
    * ``edgefleet.runtime``  the plan runtime: load a plan in whichever TFLite interpreter is
                             installed (LiteRT or tflite-runtime) and infer/train/evaluate with it;
    * ``edgefleet.drift``    the mergeable drift summary that devices report;
    * ``edgefleet.wire``     the pydantic schemas that travel over REST between devices, the server
                             and the aggregation;
    * ``edgefleet.datasets`` the data sets scikit-learn ships, with deterministic splits (used by
                             authoring, the simulation, the benchmarks and the tests);
    * ``edgefleet.errors``   ``EdgeFleetError``, the root of every EdgeFleet exception.

May import: numpy, pydantic, safetensors and, lazily, a TFLite interpreter (``runtime``) and
scikit-learn (``datasets``). It must
never import TensorFlow, FastAPI, SQLModel or scipy, nor any deployable package: every
deployable, and the edge agent in particular, depends on it. The ``edgefleet`` command itself
lives above the deployables, in ``edgefleet_cli``.
"""

__version__ = "0.1.0"
