"""Small helpers shared by several test modules."""


class Interrupt:
    """Wraps a sampler; raises KeyboardInterrupt on call number ``at`` (1-based)."""

    def __init__(self, sample, at):
        self.sample, self.at, self.calls = sample, at, 0

    def __call__(self, b):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.sample(b)
