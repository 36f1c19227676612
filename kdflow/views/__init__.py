"""The augmented views and the teacher's outputs over them: the `views` params (params.py), the
view kinds and mixes (kinds.py, mixes.py, drawn from the seed's streams: draws.py), the view table
both sides rebuild (table.py), and the teacher's cached outputs (cache.py)."""
