"""Does the embedding token's *input* vector explain a trained model's quality? Evaluates saved models
on msmarco-mini's first 20 judged queries over 300 passages, and for a name ending in ``:restored``
the same model with the token's input vector put back to the base model's (a forward hook on the
input embeddings; the output side, which decides emission, is left as trained).

    python benchmarks/token_input_probe.py runs/abl-A/final runs/abl-A/final:restored

Prints one nDCG@10 per model (the figures are recorded in benchmarks/results/token_row_ablation.json).
"""

import sys


from searchr3 import SearchR3
from searchr3.evaluation import run_evaluation

base = SearchR3.from_pretrained(None)
t = base.embed_token_id
orig = base.model.get_input_embeddings().weight[t].detach().clone()
for name in sys.argv[1:]:
    path = name.split(":")[0]
    m = SearchR3.from_pretrained(path)
    if name.endswith("restored"):
        m.pin_token_input(orig)
    rows = run_evaluation("../shared/data/msmarco-mini", "test", [(name, m, False)], batch_size=16, max_docs=300, max_queries=20)
    print(name, round(rows[0]["ndcg@10"], 4), flush=True)
