"""Where emission stands: the log-probability of `<|embed_token|>` right after the reasoning prompt, and greedy rollouts.

For a few queries: the model's log-probability of writing the embedding token as the first token of its reasoning turn
(after the prompt and its `reasoning_prefix`), the token's rank in the vocabulary, the top-5 next tokens, and the greedy
rollout with whether it emitted the token itself.

    python benchmarks/emission_probe.py MODEL_DIR [--out FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from searchr3 import SearchR3
from searchr3.io import atomic_write_json

QUERIES = [
    "where is the microchip placed in a dog",
    "what movies has tom hanks died in",
    "What causes Idiopathic juxtafoveal retinal telangiectasia ?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    m = SearchR3.from_pretrained(args.model)
    batch = m.collate(m.prompt_ids(QUERIES, "query", reasoning=True), left=True)
    decoder, head = m.decoder_and_head()
    with torch.no_grad(), m.autocast():
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state[:, -1]
        logp = torch.log_softmax(head(hidden).float(), -1)
    ro = m.reason(QUERIES)
    rows = []
    for i, q in enumerate(QUERIES):
        lp = logp[i, m.embed_token_id].item()
        rows.append(
            {
                "query": q,
                "embed_token_logprob": round(lp, 3),
                "embed_token_rank": int((logp[i] > logp[i, m.embed_token_id]).sum()) + 1,
                "top5": [m.tokenizer.decode([t]) for t in logp[i].topk(5).indices.tolist()],
                "greedy_text": ro.texts[i],
                "emitted": ro.emitted[i],
            }
        )
        print(rows[-1])
    if args.out:
        atomic_write_json(
            args.out, {"command": f"python benchmarks/emission_probe.py {args.model} --out {args.out}", "rows": rows}
        )


if __name__ == "__main__":
    main()
