import sys, time, logging, collections
sys.path.insert(0, "bench")
import bench_rounds_sim as b
from simulation.inprocess import federation
import aggregation.rounds as R
import aggregation.answer_book as AB
import aggregation.selection.tracking as T
import numpy as np
logging.getLogger("flwr").setLevel(logging.WARNING)
acc = collections.Counter()
def wrap(obj, name, key):
    fn = getattr(obj, name)
    def w(*a, **k):
        t = time.thread_time()
        try:
            return fn(*a, **k)
        finally:
            acc[key] += time.thread_time() - t
    setattr(obj, name, w)
for name in ("_eligibility", "_select", "_query_stale", "_train", "_exchange", "_validate", "_aggregate", "_evaluate", "_wait_for_nodes"):
    wrap(R.RoundRunner, name, name)
wrap(AB.AnswerBook, "after_train", "after_train")
wrap(R, "rescore", "rescore")
wrap(R, "_shared_contents", "_shared_contents")
fresh = "--fresh" in sys.argv
n = int(sys.argv[1])
app = b._client_app(b._reference(), fresh)
rows = []
with federation(app, n, workers=2) as grid:
    b._ours(grid, n, n, 5, rows)
print("per round cpu", [round(r["cpu"], 4) for r in rows])
for k, v in sorted(acc.items(), key=lambda kv: -kv[1]):
    print(f"{k:20s} {v/5*1e3:8.2f} ms/round")
