"""explain() of a bert-mini-shaped encoder at batch 1, sequence 128 (bench/results/*-bert-mini-explain.txt)."""
import shmrt

shmrt.manual_seed(0)
T, D, H, F, NL, V = 128, 256, 4, 1024, 4, 30522
ids, am, tt = (shmrt.Input((T,), name=n) for n in ("input_ids", "attention_mask", "token_type_ids"))
h = shmrt.Add()(shmrt.PositionalEmbedding(512 if False else T, D)(shmrt.Embedding(V, D)(ids)), shmrt.Embedding(2, D)(tt))
h = shmrt.LayerNorm(D, eps=1e-12)(h)
pad = shmrt.PaddingMask()(am)
y = shmrt.TransformerEncoder(shmrt.TransformerEncoderLayer(D, H, F, activation="gelu", layer_norm_eps=1e-12), NL)(h, pad)
g = shmrt.Graph([ids, am, tt], {"last_hidden_state": y, "pooler_output": shmrt.Tanh()(shmrt.Linear(D, D)(shmrt.FirstToken()(y)))})
with shmrt.Runtime(workers=2) as rt:
    for s in ("auto", "model"):
        cm = rt.compile(g, strategy=s, max_batch=1, max_seq_len=T)
        print(cm.explain())
