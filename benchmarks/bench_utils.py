"""What the benchmark scripts share: a table written as it grows."""


class Report:
    """Lines of a table: printed and appended to ``path`` (if any) at once, flushed, so that a run
    cut short keeps the rows it finished."""

    def __init__(self, path=None):
        self.path = path
        if path:
            open(path, 'w').close()

    def add(self, *lines):
        for line in lines:
            print(line, flush=True)  # a benchmark script's output is its table
            if self.path:
                with open(self.path, 'a') as f:
                    f.write(line + '\n')
