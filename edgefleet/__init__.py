"""EdgeFleet's shared core: what two or more deployables need to agree on.

Owns
    * ``edgefleet.plan``     the model-plan manifest (what a ``.tflite`` plan is, its weights, its
                             reference statistics) and the weights file format (safetensors);
    * ``edgefleet.runtime``  the plan runtime: load a plan in whichever TFLite interpreter is
                             installed (LiteRT or tflite-runtime) and infer/train/evaluate with it;
    * ``edgefleet.drift``    the mergeable drift summary that devices report;
    * ``edgefleet.wire``     the pydantic schemas that travel over REST between devices, the server
                             and the aggregation;
    * ``edgefleet.errors``   the root of this package's exceptions;
    * ``edgefleet.cli``      the ``edgefleet`` command, which only dispatches to each deployable.

May import: numpy, pydantic, safetensors and (lazily, in ``runtime``) a TFLite interpreter. It must
never import TensorFlow, FastAPI, SQLModel or scipy: the edge agent depends on it.
"""

__version__ = "0.1.0"
