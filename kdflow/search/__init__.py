"""The recipe search, a tool outside the pipeline (no stage imports it): the grid (grid.py), DVC's
queue as it reads it (queue.py), supervising the queue (supervise.py), the ranking on validation
(ranking.py), what it writes (outputs.py), a search shared by several hosts through git and DVC
remotes (remote.py), and its commands (commands.py)."""
