"""The report (`python -m analysis.report`): the tables gathered, the claims decided, figures drawn, one self-contained HTML page."""
