"""The three streams, named once: the tables' columns, the models, the jobs' --stream choices and the
config's `tune.stream` all take their names from `STREAMS`, in this order."""

STREAMS = ("spatial", "temporal", "audio")
