"""Stand-ins for `experiment.train`'s model and data, for tests that stop
before anything is fitted."""


class OneBatch:
    """A training set of one batch (only its cardinality is read)."""

    def cardinality(self):
        return 1


class NoFit:
    """A model that compiles and is never fitted."""

    def __init__(self, name):
        self.name = name

    def compile(self, **kwargs):
        pass
