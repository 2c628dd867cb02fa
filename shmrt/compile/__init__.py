"""From the IR to per-worker programs: the planner (plan.py) partitions each
layer and writes the int64 instruction rows the interpreter runs; the cost
model (cost.py) predicts each program's time from rates it measures on the
workers; autotune (tune.py) times candidate programs where asked."""
