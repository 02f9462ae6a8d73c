"""``distnet sweep``: batch-size scaling experiments (Shallue et al. 2018; McCandlish et al. 2018).

A sweep is a folder: ``config.toml`` (the resolved config every point trains), ``sweep.json`` (the plan: the
settings and the points), one folder per point (a real ``distnet train`` run: ``metrics.jsonl``, ``ckpt/``,
``log.txt``), and what ``report`` writes from them: ``results.csv``, ``report.md`` and the figures.

  plan     the points (batch size x learning-rate multiplier x seed) and their ``distnet train`` arguments
  launch   running a point (mpiexec, srun in a Slurm allocation, a prefix such as flock), resuming it, and
           the Slurm job-array script
  collect  one point's metrics -> its row (steps, samples and time to the target, accuracies, noise scale)
  fit      S = S_min (1 + B_crit / B) from the points that reached the target
  report   results.csv, report.md and the figures
"""
