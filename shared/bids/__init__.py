"""Each lab's BIDS dataset, kept as its series convert (issue 18).

`entities` names a file the BIDS way; `reproin`, `classification` and `rules` say which name
a converted series gets; `pseudonyms` gives subjects and sessions their labels; `session`
plans one study's session; `dataset` writes it beside the lab's studies.
"""
