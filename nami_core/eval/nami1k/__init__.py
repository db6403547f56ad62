"""NAMI-1K: the human-preference prompt set of the NAMI paper, and the tools around it.

`prompts` (the JSONL format), `topics` (the topic taxonomy), `build` (assembling a set from
sources), `plots` (length and topic histograms), `generate` (images + manifest), `page` and
`annotate` (the self-contained annotation page), `agreement` and `score` (the Table-4 scores).
"""
