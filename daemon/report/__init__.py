"""``quantlens report``: the analysis as one self-contained HTML page with pictures."""
