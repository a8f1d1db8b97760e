"""Model authoring: define models in TensorFlow and convert them to EdgeFleet plans.

``models``   :class:`~authoring.models.PlanModule` and the definitions built on it: an MLP for flat
             features and an image model with a frozen convolutional base and a trainable head;
``convert``  builtins-only TFLite conversion (Flex ops fail here, naming the op);
``plans``    plan directories: ``plan.tflite`` + ``manifest.json`` + ``weights.safetensors``;
``errors``   the package's exception tree (root :class:`~authoring.errors.AuthoringError`);
``cli``      the ``edgefleet model`` commands.

The only package that imports TensorFlow, and only in ``models``/``convert``/``plans``: importing
this package or its CLI does not. Nothing imports it at run time. May import: tensorflow, numpy,
scikit-learn, the shared ``edgefleet`` core (including ``edgefleet.datasets``, the data sets plans
are built for).
"""
