"""The names inside the Flower messages the ServerApp and the edge ClientApp exchange.

Both sides import these constants: the ServerApp (:mod:`aggregation`) and the device's ClientApp
(:mod:`edge_client.flower_client`); a name changes here or nowhere. Plain strings, no Flower
import, so anything may import this module.

=========  =============================================  =========================================
message    server -> node                                 node -> server
=========  =============================================  =========================================
query      ``CONFIG``: SERVER_ROUND, MODEL [, VERSION]    ``CONFIG``: ELIGIBLE, REASONS (a JSON
                                                          list) or REASON, MODEL, VERSION,
                                                          PLAN_SHA256, DRIFT_PACKED or DRIFT
                                                          [, DRIFT_SCORE];
                                                          ``METRICS``: NUM_EXAMPLES
train      ``ARRAYS`` (weights by name); ``CONFIG``:      ``ARRAYS``; ``METRICS``: NUM_EXAMPLES,
           SERVER_ROUND, MODEL, VERSION, PLAN_SHA256,     TRAIN_LOSS, STEPS, EXAMPLES_TRAINED;
           SEED, EPOCHS, LR, DRIFT_SCORE [, PROXIMAL_MU,  ``CONFIG``: STATUS (STATUS_OK,
           BATCH_RULE, WEIGHTING]                         STATUS_STOPPED or STATUS_DECLINED with a
                                                          REASON), DRIFT_PACKED or DRIFT, MODEL,
                                                          VERSION, PLAN_SHA256
evaluate   ``ARRAYS``; ``CONFIG``: SERVER_ROUND, MODEL    ``METRICS``: NUM_EXAMPLES, EVAL_LOSS,
                                                          EVAL_ACC
=========  =============================================  =========================================

The node's drift summary travels as DRIFT_PACKED: ``bytes``, the fixed-layout vector of
:mod:`edgefleet.drift.packed` that the server decodes and validates for a whole round at once.
DRIFT (a :class:`~edgefleet.drift.DriftSummary` JSON text, the REST telemetry form) is still
read when a reply carries no DRIFT_PACKED.

Node config keys (``flower-supernode --node-config``): DATA_DIR and ELIGIBILITY (one of
ELIGIBILITY_DEVICE, ELIGIBILITY_ALWAYS, ELIGIBILITY_NEVER). AGG_WEIGHT is the metric the
ServerApp adds to each accepted update before Flower's strategy averages it. A train config
without EPOCHS, SEED, BATCH_RULE or WEIGHTING means DEFAULT_EPOCHS, DEFAULT_SEED,
DEFAULT_BATCH_RULE, DEFAULT_WEIGHTING; without LR, the run settings' default learning rate
(:data:`edgefleet.run_settings.DEFAULTS`).
"""

from __future__ import annotations

from typing import Final

# --- the records of a message's RecordDict -------------------------------------------------------
ARRAYS: Final = "arrays"
METRICS: Final = "metrics"
CONFIG: Final = "config"

# --- ConfigRecord keys, server -> node ------------------------------------------------------------
SERVER_ROUND: Final = "server-round"
MODEL: Final = "model"
VERSION: Final = "version"
PLAN_SHA256: Final = "plan-sha256"
SEED: Final = "seed"
EPOCHS: Final = "epochs"
LR: Final = "lr"
DRIFT_SCORE: Final = "drift-score"
PROXIMAL_MU: Final = "proximal-mu"
#: The device's training semantics (``edgefleet.runtime``: ``BATCH_RULES``, ``WEIGHTINGS``).
BATCH_RULE: Final = "batch-rule"
WEIGHTING: Final = "weighting"

DEFAULT_EPOCHS: Final = 1
DEFAULT_SEED: Final = 0
DEFAULT_BATCH_RULE: Final = "wrap"
DEFAULT_WEIGHTING: Final = "local-size"

# --- ConfigRecord keys, node -> server ------------------------------------------------------------
ELIGIBLE: Final = "eligible"
REASONS: Final = "reasons"
REASON: Final = "reason"
DRIFT: Final = "drift"  # DriftSummary JSON
DRIFT_PACKED: Final = "drift-packed"  # bytes: edgefleet.drift.packed
STATUS: Final = "status"
STATUS_OK: Final = "ok"
STATUS_STOPPED: Final = "stopped"
STATUS_DECLINED: Final = "declined"

# --- MetricRecord keys ---------------------------------------------------------------------------
NUM_EXAMPLES: Final = "num-examples"
TRAIN_LOSS: Final = "train-loss"
FIRST_EPOCH_LOSS: Final = "first-epoch-loss"  # the received model's loss on the first pass
STEPS: Final = "steps"
EXAMPLES_TRAINED: Final = "examples-trained"
EVAL_LOSS: Final = "eval-loss"
EVAL_ACC: Final = "eval-acc"
AGG_WEIGHT: Final = "agg-weight"

# --- node config ---------------------------------------------------------------------------------
DATA_DIR: Final = "data-dir"
ELIGIBILITY: Final = "eligibility"
ELIGIBILITY_DEVICE: Final = "device"
ELIGIBILITY_ALWAYS: Final = "always"
ELIGIBILITY_NEVER: Final = "never"
