"""What the benchmark scripts share: a table written as it grows."""

from mmunirep.utils.fileio import write_text


class Report:
    """Lines of a table, printed as they come; the file at ``path`` (if any) is rewritten whole
    with every line, so that a run cut short leaves the rows it finished and never a torn row."""

    def __init__(self, path=None):
        self.path = path
        self.lines = []
        if path:
            write_text(path, '')

    def add(self, *lines):
        for line in lines:
            print(line, flush=True)  # a benchmark script's output is its table
        self.lines += lines
        if self.path:
            write_text(self.path, '\n'.join(self.lines) + '\n')
